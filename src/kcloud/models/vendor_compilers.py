"""Vendor NPU compilers, driven through their documented interfaces.

**FuriosaAI Warboy** (`--target furiosa`), as furiosa-sdk 0.10's docs give it
(docs/en/source/software/compiler.rst and examples/quantizers/quantize.py in furiosa-ai/furiosa-sdk):

1. quantize to INT8 with the SDK's own quantizer (Warboy runs INT8 only):
   `optimize_model(onnx.load(...))`, `Calibrator(model, CalibrationMethod.MIN_MAX_ASYM)`,
   `calibrator.collect_data([[input, ...], ...])`, `quantize(model, calibrator.compute_range())`
   → DFG bytes;
2. compile the DFG: `furiosa-compiler model.dfg -o model.enf --target-npu warboy-2pe
   --batch-size N` (an APT package, `apt install furiosa-compiler`).

The ENF runs on a Warboy only, so its accuracy is recorded as not measured here. FuriosaAI's
RNGD compiles Hugging Face models through `furiosa-llm build` (an engine's artifact, served by
`kcloud.runtimes.furiosa_llm`), and Rebellions documents compiling PyTorch and TensorFlow
models (`rebel.compile_from_torch`), not ONNX graphs: neither is an ONNX target here.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kcloud.models.errors import ModelFileError
from kcloud.models.repository import ModelEntry
from kcloud.models.targets import Target

FURIOSA_COMPILER = "furiosa-compiler"
#: Warboy with both processing elements fused, the compiler's default target NPU.
WARBOY_NPU = "warboy-2pe"
COMPILE_TIMEOUT_S = 3600


class ToolMissingError(ModelFileError):
    """A target's vendor tool is not installed; the message names the package and how to get it."""


class VendorCompileError(ModelFileError):
    """The vendor's compiler ran and failed; the message carries the end of what it said."""


def furiosa_command(source: Path, out: Path, batch_size: int) -> list[str]:
    """The documented `furiosa-compiler` call for an INT8 DFG (or ONNX) `source`."""
    return [
        FURIOSA_COMPILER,
        str(source),
        "-o",
        str(out),
        "--target-npu",
        WARBOY_NPU,
        "--batch-size",
        str(batch_size),
    ]


def _furiosa_quantizer() -> Any:
    try:
        optimizer = importlib.import_module("furiosa.optimizer")
        quantizer = importlib.import_module("furiosa.quantizer")
    except ImportError:
        raise ToolMissingError(
            "target furiosa needs FuriosaAI's quantizer: pip install 'furiosa-sdk[quantizer]' "
            "(furiosa-quantizer, furiosa-optimizer); it is not installed here"
        ) from None
    return optimizer, quantizer


def compile_furiosa(
    entry: ModelEntry, out: Path, calibration: list[dict[str, np.ndarray]], batch_size: int = 1
) -> dict[str, Any]:
    """INT8-quantize `entry` with FuriosaAI's quantizer and compile it to a Warboy ENF at `out`."""
    tool = shutil.which(FURIOSA_COMPILER)
    if tool is None:
        raise ToolMissingError(
            f"target furiosa needs FuriosaAI's compiler: `{FURIOSA_COMPILER}` is not on PATH "
            "(apt install furiosa-compiler, from FuriosaAI's APT repository; developer.furiosa.ai)"
        )
    optimizer, quantizer = _furiosa_quantizer()
    model = optimizer.optimize_model(onnx.load(str(entry.weights_path)))
    calibrator = quantizer.Calibrator(model, quantizer.CalibrationMethod.MIN_MAX_ASYM)
    names = [i.name for i in model.graph.input]
    for feed in calibration:
        calibrator.collect_data([[feed[name] for name in names]])
    dfg = out.with_suffix(".dfg")
    dfg.write_bytes(bytes(quantizer.quantize(model, calibrator.compute_range())))
    command = furiosa_command(dfg, out, batch_size)
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    dfg.unlink(missing_ok=True)
    if done.returncode != 0 or not out.is_file():
        said = (done.stderr or done.stdout).strip()[-2000:]
        raise VendorCompileError(f"{FURIOSA_COMPILER} failed (exit {done.returncode}): {said or 'no output'}")
    version = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60, check=False)
    return {
        "command": [FURIOSA_COMPILER, *command[1:]],
        "target_npu": WARBOY_NPU,
        "batch_size": batch_size,
        "quantizer": "furiosa.quantizer MIN_MAX_ASYM",
        "compiler_version": version.stdout.strip() or None,
    }


def compile_for_vendor(
    entry: ModelEntry, target: Target, out: Path, calibration: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    if target.name == "furiosa":
        return compile_furiosa(entry, out, calibration)
    raise ModelFileError(f"target {target.name} has no vendor compiler in kcloud")
