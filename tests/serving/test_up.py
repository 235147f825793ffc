"""`kcloud up` as a user runs it: a real subprocess on a loopback port."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
FARM = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"kcloud up exited with {process.returncode}:\n{out}\n{err}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a starting subprocess: it has no event to wait on
    process.kill()
    pytest.fail(f"kcloud up was not ready within {timeout_s} s")


@pytest.mark.slow
def test_up_serves_the_bundled_models_and_stops_cleanly(builtin_repository, free_port):
    url = f"http://127.0.0.1:{free_port}"
    process = subprocess.Popen(
        [KCLOUD, "up", "--port", str(free_port), "--replicas", "1", "--farm", str(FARM)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        _wait_ready(url, process)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) >= 3  # one worker process per bundled model
        models = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models == {"all-MiniLM-L6-v2", "digits-cnn", "noop"}
        metrics = httpx.get(f"{url}/metrics").text
        assert 'emulated="true"' in metrics  # the farm file's devices are metered
        assert 'emulated="false"' in metrics  # and this machine's CPU
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    for path in ("/v2", "/v1", "/metrics", "/docs"):
        assert f"{url}{path}" in out
    assert "kcloud stopped." in out
    _, alive = psutil.wait_procs(workers, timeout=10)  # the workers end with the server, not later
    assert not alive, [p.cmdline() for p in alive]
    # the printed curl example is a real, working request
    example = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
    assert "/infer" in example


def test_printed_curl_example_works(start_gateway):
    from kcloud.serving.server import curl_example

    gateway = start_gateway(models=["all-MiniLM-L6-v2"])
    example = curl_example(gateway.url, gateway.stack.entries)
    assert example is not None
    done = subprocess.run(shlex.split(example), capture_output=True, text=True, timeout=60, check=True)
    assert '"name":"embedding"' in done.stdout and '"shape":[1,384]' in done.stdout


def test_port_in_use_is_one_clear_line_and_exit_2(builtin_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([KCLOUD, "up", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0] and "already in use" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--farm", "/nonexistent/farm.toml"], "not found"),
        (["--replicas", "0"], "--replicas"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
    ],
)
def test_bad_options_are_refused_without_a_traceback(free_port, args, words):
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
