"""The NVIDIA paths for real (scripts/gpu_paths.py): NVML telemetry, the CUDA execution provider,
vLLM on CUDA. They run only where an NVIDIA GPU is; CI has none, so there this skips."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_paths.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_paths", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_paths"] = module
    spec.loader.exec_module(module)
    return module


def test_the_script_skips_every_part_cleanly_without_a_gpu(builtin_repository) -> None:
    gpu_paths = _load()
    if gpu_paths._gpus():
        pytest.skip("this machine has an NVIDIA GPU: the next test runs the parts for real")
    parts = gpu_paths.run_all()
    assert set(parts) == {"telemetry", "cuda-ep", "vllm-cuda"}
    assert all("skipped" in part for part in parts.values()), parts


@pytest.mark.slow
def test_every_nvidia_path_that_can_run_here_passes(builtin_repository) -> None:
    gpu_paths = _load()
    if not gpu_paths._gpus():
        pytest.skip("no NVIDIA GPU on this machine (NVML found none)")
    parts = gpu_paths.run_all()
    failed = {name: part for name, part in parts.items() if part.get("passed") is False}
    assert not failed, failed
    assert parts["telemetry"].get("passed"), parts["telemetry"]
