"""Compile targets: what `kcloud models compile --target T` can build, and for what it runs.

A target names a runtime, a precision and a file format. Which target a device runs for a
precision is the runtime's answer (`SessionRuntime.artifact_target`); this table says what each
target is. It imports nothing heavy, so placement and the CLI read it freely.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcloud.models.errors import ModelFileError


class UnknownTargetError(ModelFileError):
    """A compile target kcloud does not know; the message lists those it does."""


@dataclass(frozen=True)
class Target:
    name: str
    precision: str
    #: What runs the artifact.
    runs_on: str
    #: The artifact's file name in its directory.
    file_name: str
    #: The distribution (pip) or program that builds it.
    tool: str
    description: str
    #: True when the artifact can run here, so the accuracy gate is measured at build time;
    #: vendor NPU artifacts need their hardware and record their accuracy as not measured.
    runs_on_host: bool = True


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "cpu-fp32",
            "fp32",
            "ONNX Runtime, CPU provider",
            "model.onnx",
            "onnxruntime",
            "the source graph with ONNX Runtime's portable fusions applied offline",
        ),
        Target(
            "cpu-fp16",
            "fp16",
            "ONNX Runtime, CPU provider",
            "model.onnx",
            "onnxruntime",
            "FP16 weights and arithmetic, FP32 inputs and outputs (half the memory; on a CPU "
            "without FP16 arithmetic it is slower than FP32)",
        ),
        Target(
            "cpu-int8",
            "int8",
            "ONNX Runtime, CPU provider",
            "model.onnx",
            "onnxruntime",
            "INT8 weights per channel with smoothing and FP32 kept where measurement says; gated on accuracy",
        ),
        Target(
            "cuda-fp16",
            "fp16",
            "ONNX Runtime, CUDA provider (NVIDIA GPUs)",
            "model.onnx",
            "onnxruntime",
            "FP16 graph for NVIDIA GPUs (FP32 inputs and outputs); the gate runs it on the CUDA "
            "provider where one is installed, else on the CPU provider, and says which",
        ),
        Target(
            "furiosa",
            "int8",
            "FuriosaAI Warboy (furiosa-compiler)",
            "model.enf",
            "furiosa-compiler",
            "ENF binary from FuriosaAI's compiler, after INT8 quantization with furiosa-quantizer",
            runs_on_host=False,
        ),
    )
}


#: Targets a user may expect that kcloud does not build, and why.
NOT_OFFERED = {
    "rbln": "Rebellions documents compiling PyTorch and TensorFlow models (rebel.compile_from_torch), "
    "not ONNX graphs; RBLN serves LLMs compiled by optimum-rbln through the vllm-rbln engine",
    "rngd": "FuriosaAI's RNGD compiles Hugging Face models with `furiosa-llm build`, not ONNX graphs; "
    "kcloud serves them through the furiosa-llm engine",
}


def get_target(name: str) -> Target:
    if name in NOT_OFFERED:
        raise UnknownTargetError(f"no compile target {name!r}: {NOT_OFFERED[name]}")
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(
            f"unknown compile target {name!r}; known targets: {', '.join(TARGETS)}"
        ) from None
