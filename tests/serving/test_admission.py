"""Admission that knows time, on the real server: overload is shed with 429, and what is admitted
waits no longer than the model's queue-time budget (issue 13 item 9).

Before, the only bound was a count (1,024 queued requests): 256 clients on MiniLM got no 429 at
all and a p99 of 1.6 s. The figures are the benchmark's (`benchmarks/overload.py`); this test
checks the behaviour with a wide margin for a noisy machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from up_support import wait_until_ready

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
MINILM = "all-MiniLM-L6-v2"
CLIENTS = 128
SECONDS = 6.0
BUDGET_MS = 150
WARMUP_S = 2.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url(builtin_repository, tmp_path_factory) -> Iterator[str]:
    """`kcloud up` in its own process (a load generator in the server's process would share its GIL
    and queue requests in the client, not in the replica), one replica per model."""
    home = tmp_path_factory.mktemp("admission-home")
    (home / "models").mkdir()
    for entry in builtin_repository.list():
        if entry.name != MINILM:
            (home / "models" / entry.name).symlink_to(entry.model_dir.resolve(), target_is_directory=True)
            continue
        # MiniLM as built, with a short queue-time budget so that this machine's speed cannot decide
        # whether 128 clients are too many
        mine = home / "models" / MINILM
        shutil.copytree(entry.model_dir, mine)  # a model's files must lie inside its directory
        config = (mine / "config.toml").read_text()
        assert "[batching]\n" in config
        # a fresh build writes every batching field, an older one may not hold this one yet
        config = re.sub(r"(?m)^queue_budget_ms = .*\n", "", config)
        (mine / "config.toml").write_text(
            config.replace("[batching]\n", f"[batching]\nqueue_budget_ms = {BUDGET_MS}\n"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [KCLOUD, "up", "--port", str(port), "--replicas", "1", "--insecure-no-auth", "--model", MINILM],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KCLOUD_HOME": str(home)},
    )
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


@dataclass
class Refusal:
    status: int
    retry_after: str | None
    error: str


async def _closed_loop(url: str) -> tuple[list[float], list[Refusal]]:
    """`CLIENTS` clients that send back to back and honour Retry-After; the latencies of requests
    admitted after `WARMUP_S` (until the replica has measured how fast its queue drains, it admits
    everything), and every refusal. aiohttp, not httpx: 128 httpx connections take a whole core
    here, and the test would measure its own client."""
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                        "data": ["K-Cloud sheds load it cannot serve in time"]}]}
    admitted: list[float] = []
    refused: list[Refusal] = []
    begun = time.monotonic()
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(30)) as client:
        async def one_client() -> None:
            while time.monotonic() < begun + SECONDS:
                started = time.monotonic()
                async with client.post(f"/v2/models/{MINILM}/infer", json=body) as answer:
                    text = await answer.text()
                if answer.status == 200:
                    if started > begun + WARMUP_S:
                        admitted.append(time.monotonic() - started)
                else:
                    retry = answer.headers.get("retry-after")
                    refused.append(Refusal(answer.status, retry, text))
                    await asyncio.sleep(float(retry or 1))

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return admitted, refused


def test_overload_is_shed_and_admitted_requests_keep_the_budget(server_url):
    budget_s = BUDGET_MS / 1000
    admitted, refused = asyncio.run(_closed_loop(server_url))
    assert admitted, "nothing was admitted"
    assert refused, f"{CLIENTS} clients on one replica were never shed"
    assert {r.status for r in refused} == {429}
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in refused)
    assert "ms a request may wait" in refused[0].error
    admitted.sort()
    p99 = admitted[int(0.99 * (len(admitted) - 1))]
    # the budget bounds the wait in the queue; compute, the gateway and this client come on top
    assert p99 < budget_s + 1.5, f"admitted p99 {p99:.2f} s with a {budget_s:.2f} s queue budget"
