"""Flooding: a tenant over its rate limit gets 429 with Retry-After, and while it floods, another
tenant's p99 latency stays within 2x its value without the flood (both measured here, in one run).

The flooder is its own process (no shared GIL with the test's measuring client), sends a bounded
number of requests with a bounded number in flight, and ignores every 429. What keeps the victim's
latency flat is what is under test: the flooder's token bucket and concurrency cap refuse its excess
before a body is read or a queue place taken.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tenancy_support import HERE, infer_body

pytestmark = pytest.mark.slow

#: Quiet and flooded phases alternate (the flooder is paused with SIGSTOP in quiet ones), so both
#: see the same background load of a shared machine; each gets ROUNDS x PER_PHASE requests.
ROUNDS = 10
PER_PHASE = 60
FLOOD_MAX = 50_000
FLOODER_LIMITS = {"requests_per_second": 20, "burst": 10, "max_concurrency": 2}


def _latencies(client, model: str, count: int) -> np.ndarray:
    body = infer_body(1)
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(f"/v2/models/{model}/infer", json=body)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return np.array(seconds)


def _p99(samples: np.ndarray) -> float:
    return float(np.percentile(samples, 99))


def _flood_and_measure(gateway, victim, flooder_key: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Victim latencies in alternating quiet and flooded phases, and the flooder's tally (with
    `seconds`, how long it ran at most)."""
    began = time.monotonic()
    flooder = subprocess.Popen(
        [sys.executable, str(HERE / "flood_proc.py"), gateway.url, flooder_key, "beta-model",
         "--concurrency", "8", "--max", str(FLOOD_MAX)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    killer = threading.Timer(120, flooder.kill)
    killer.start()
    quiet: list[np.ndarray] = []
    flooded: list[np.ndarray] = []
    try:
        assert flooder.stdout is not None and flooder.stdin is not None
        assert flooder.stdout.readline().strip() == "FLOODING"
        for _ in range(ROUNDS):
            os.kill(flooder.pid, signal.SIGSTOP)
            _latencies(victim, "alpha-model", 3)  # the paused flooder's last requests drain
            quiet.append(_latencies(victim, "alpha-model", PER_PHASE))
            os.kill(flooder.pid, signal.SIGCONT)
            flooded.append(_latencies(victim, "alpha-model", PER_PHASE))
        flooder.stdin.close()  # stop flooding
        result = json.loads(flooder.stdout.readline())
        result["seconds"] = time.monotonic() - began
        flooder.wait(timeout=30)
    finally:
        killer.cancel()
        if flooder.poll() is None:
            os.kill(flooder.pid, signal.SIGCONT)
            flooder.kill()
    return np.concatenate(quiet), np.concatenate(flooded), result


@pytest.fixture
def beta_limited(gateway, keys):
    """beta (the flooder) with a rate limit and a concurrency cap, for this test only."""
    with gateway.client(keys["admin"]) as admin:
        assert admin.put("/api/v1/tenants/beta/quota", json=FLOODER_LIMITS).status_code == 200
        try:
            yield
        finally:
            assert admin.put("/api/v1/tenants/beta/quota", json={}).status_code == 200


def test_flood_is_refused_with_retry_after_and_spares_another_tenant(gateway, keys, beta_limited):
    victim_key, flooder_key = keys["alpha"], keys["beta"]
    ratios = []
    with gateway.client(victim_key) as victim:
        _latencies(victim, "alpha-model", 30)  # warm up connections, caches, the replica
        # A shared 2-core machine stalls a process for 10+ ms now and then, at random; with a few
        # hundred samples such a stall decides a p99. One fresh re-measurement keeps a random stall
        # from failing the test, while a real loss of isolation fails both.
        for _attempt in range(2):
            quiet, flooded, result = _flood_and_measure(gateway, victim, flooder_key)
            statuses = {int(k): v for k, v in result["statuses"].items()}
            refused, served = statuses.get(429, 0), statuses.get(200, 0)
            assert set(statuses) <= {200, 429}, statuses
            # Over its limit, the flooder is refused, and admitted no faster than its limit allows.
            # (Its refusals are held longer the more it ignores Retry-After, so they are few: its
            # 8 connections get about 8 a second, not as many as the gateway could write.)
            assert served > 0 and refused > 0, statuses
            limit = FLOODER_LIMITS["requests_per_second"] * result["seconds"] + FLOODER_LIMITS["burst"]
            assert served <= limit, (statuses, result["seconds"])
            assert sum(result["retry_after"].values()) == refused  # every 429 says when to come back
            assert all(int(seconds) >= 1 for seconds in result["retry_after"])
            assert result["sent"] < FLOOD_MAX  # the flood lasted through every flooded phase
            quiet_p99, flooded_p99 = _p99(quiet), _p99(flooded)
            ratios.append(flooded_p99 / quiet_p99)
            print(f"victim p50 {np.median(quiet) * 1e3:.2f} ms quiet, "
                  f"{np.median(flooded) * 1e3:.2f} ms flooded; p99 {quiet_p99 * 1e3:.2f} ms quiet, "
                  f"{flooded_p99 * 1e3:.2f} ms flooded; flooder: {statuses}")
            if ratios[-1] <= 2:
                break
    assert min(ratios) <= 2, f"victim p99 during the flood / without it: {ratios}"
