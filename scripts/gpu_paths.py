"""Run kcloud's NVIDIA paths for real, on a machine with an NVIDIA GPU, and write what ran as JSON.

CI has no GPU, so these paths are otherwise tested only against recorded outputs. On a GPU
machine this runs, each part independently (one that cannot run says why and the rest go on):

1. **telemetry**: the NVIDIA device plugin discovers the GPUs through NVML and samples each
   (utilisation, power, energy counter, memory, temperature);
2. **cuda-ep**: the bundled digits CNN in an ONNX Runtime session on the GPU through kcloud's
   `onnxruntime-cuda` runtime (CUDA execution provider), compared with the CPU session's outputs;
3. **vllm-cuda**: the bundled chat model (SmolLM2-135M-Instruct) on the GPU through kcloud's
   `vllm` runtime: the engine process kcloud would start (its argv, its CUDA_VISIBLE_DEVICES),
   health, one chat completion, and its time to start.

    python scripts/gpu_paths.py [--out results.json]

Exit status 0 when every part that could run passed; 1 when a part failed; a part skipped for
want of hardware or packages is not a failure (its reason is in the JSON). tests/test_gpu_paths.py
runs this on a GPU machine and skips without one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Part = dict[str, Any]


def _gpus() -> list[Any]:
    from kcloud.devices.plugins.nvidia import NvidiaPlugin

    plugin = NvidiaPlugin()
    try:
        return plugin.discover("local")
    finally:
        plugin.close()


def telemetry() -> Part:
    from kcloud.devices.plugins.nvidia import NvidiaPlugin

    plugin = NvidiaPlugin()
    try:
        devices = plugin.discover("local")
        if not devices:
            return {"skipped": "NVML found no NVIDIA GPU (or the driver is absent)"}
        readings = []
        for device in devices:
            sample = plugin.sample(device)
            readings.append({
                "device": device.uid, "chip": device.spec.chip, "name": device.name,
                "utilization": sample.utilization, "power_watts": sample.power_watts,
                "energy_joules": sample.energy_joules, "memory_used_bytes": sample.memory_used_bytes,
                "temperature_celsius": sample.temperature_celsius, "healthy": sample.healthy,
                "reasons": sample.reasons,
            })
        ok = all(r["power_watts"] is not None and r["memory_used_bytes"] is not None for r in readings)
        return {"passed": ok, "devices": readings}
    finally:
        plugin.close()


def cuda_execution_provider(repository: Any) -> Part:
    import onnxruntime as ort

    from kcloud.models.builtin import DIGITS
    from kcloud.runtimes.session import create_session, plan_for

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: "
                           "install onnxruntime-gpu"}
    gpus = _gpus()
    if not gpus:
        return {"skipped": "no NVIDIA GPU"}
    from kcloud.models.builtin import ensure_builtin_models

    [entry] = ensure_builtin_models(repository, include=[DIGITS], progress=False)
    gpu = gpus[0]
    plan = plan_for(gpu)
    session = create_session(entry.weights_path, gpu, threads=1)
    cpu_session = ort.InferenceSession(str(entry.weights_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    batch = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    started = time.perf_counter()
    on_gpu = session.run(None, {name: batch})[0]
    seconds = time.perf_counter() - started
    on_cpu = cpu_session.run(None, {name: batch})[0]
    difference = float(np.max(np.abs(on_gpu - on_cpu)))
    return {"passed": "CUDAExecutionProvider" in session.get_providers() and difference < 1e-3,
            "device": gpu.uid, "plan": plan.reason, "providers": session.get_providers(),
            "max_abs_difference_vs_cpu": difference, "first_batch_seconds": seconds}


def vllm_cuda(repository: Any) -> Part:
    from kcloud.models.builtin import SMOLLM, ensure_builtin_models
    from kcloud.runtimes.vllm import VllmRuntime
    from kcloud.serving.engine import EngineReplica

    gpus = _gpus()
    if not gpus:
        return {"skipped": "no NVIDIA GPU"}
    runtime = VllmRuntime()
    refusal = runtime.refusal(gpus[0])
    if refusal is not None:
        return {"skipped": f"vllm runtime: {refusal}"}
    [entry] = ensure_builtin_models(repository, include=[SMOLLM], progress=False)

    async def run() -> Part:
        replica = EngineReplica("gpu-check", entry, gpus[0], runtime)
        await replica.start()
        try:
            assert replica.launch is not None
            answer = await replica.client.post("/v1/chat/completions", json={
                "model": entry.name, "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            body = answer.json()
            return {"passed": answer.status_code == 200 and bool(body["choices"][0]["message"]["content"]),
                    "device": gpus[0].uid, "argv": replica.launch.argv,
                    "env": replica.launch.env, "start_seconds": replica.start_seconds,
                    "answer": body["choices"][0]["message"]["content"], "usage": body.get("usage")}
        finally:
            await replica.stop()

    return asyncio.run(run())


def _guarded(part: Callable[[], Part]) -> Part:
    try:
        return part()
    except Exception as exc:  # a part's failure is reported, and the next part runs
        return {"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def run_all() -> dict[str, Part]:
    from kcloud.models.repository import ModelRepository, default_repository_path

    repository = ModelRepository(default_repository_path())
    return {
        "telemetry": _guarded(telemetry),
        "cuda-ep": _guarded(lambda: cuda_execution_provider(repository)),
        "vllm-cuda": _guarded(lambda: vllm_cuda(repository)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ["OUT"]) / "gpu_paths.json" if os.environ.get("OUT") else \
        Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu_paths.json"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    parts = run_all()
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0],
              "parts": parts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    for name, part in parts.items():
        verdict = "skipped: " + part["skipped"] if "skipped" in part else ("passed" if part.get("passed") else
                                                                            "FAILED " + part.get("error", ""))
        print(f"{name:10s} {verdict}")
    print(f"wrote {args.out}")
    return 1 if any(p.get("passed") is False for p in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
