"""Ctrl-C during a run: a real `kcloud bench run` subprocess gets SIGINT while LoadGen runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from bench_helpers import KCLOUD


def _wait_for(predicate, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, _ = process.communicate()
            pytest.fail(f"kcloud bench run ended early ({process.returncode}):\n{out}")
        if predicate():
            return
        time.sleep(0.05)  # watching another process's files: nothing to wait on but a poll
    process.kill()
    pytest.fail("the run never got to LoadGen")


@pytest.mark.slow
def test_sigint_mid_run_leaves_an_incomplete_result_never_valid(bench_models, tmp_path: Path):
    out = tmp_path / "runs"
    process = subprocess.Popen(
        [
            KCLOUD,
            "bench",
            "run",
            "--model",
            "digits-cnn",
            "--scenario",
            "Server",
            "--quick",
            "--min-duration-s",
            "300",
            "--max-duration-s",
            "0",
            "--no-progress",
            "--out",
            str(out),
            "--system",
            "ctrl-c",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    run_dir = out / "ctrl-c" / "digits-cnn" / "Server" / "performance"
    detail = run_dir / "mlperf_log_detail.txt"
    # LoadGen logs this line once it has started issuing queries
    _wait_for(
        lambda: detail.exists() and "Starting performance mode" in detail.read_text(errors="replace"), process
    )
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    result = json.loads((run_dir / "result.json").read_text())
    assert result["complete"] is False
    assert result["status"] == "interrupted"
    assert result["loadgen"]["validity"] is None
    assert "VALID" not in json.dumps(result["loadgen"])
    assert result["metric"] is None
    summary = run_dir / "mlperf_log_summary.txt"
    assert not summary.exists() or "Result is" not in summary.read_text()
