"""Helpers for tests that run `kcloud up` as a user does: a real subprocess on a loopback port."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll `/v2/health/ready` until the gateway answers 200; fail the test (with the server's
    output) if it exits first or takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"kcloud up exited with {process.returncode}:\n{out}\n{err or ''}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a starting subprocess: it has no event to wait on
    process.kill()
    pytest.fail(f"kcloud up was not ready within {timeout_s} s")
