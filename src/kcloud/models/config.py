"""`ModelConfig`: a model's contract, kept beside it in the repository as `config.toml`.

Like Triton's `config.pbtxt`, the contract is declarative and lives next to the model:
`<repo>/<model>/config.toml` and `<repo>/<model>/<version>/model.onnx`.

Shapes are the *public* signature, the one clients see over the Open Inference Protocol,
including the batch dimension as a leading `-1` when `batching.max_batch_size > 0`. The ONNX
graph's own inputs may differ (e.g. a text model takes BYTES and tokenises them before the
graph); the model's `processing` says how to get from one to the other.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kcloud.devices.spec import DeviceKind

#: Open Inference Protocol v2 tensor datatypes.
Datatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64", "BYTES",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a variable dimension; the first is the batch")

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"dimensions must be positive or -1, got {shape}")
        return shape


class Batching(_Strict):
    """Dynamic batching: wait up to `max_queue_delay_ms` to fill a batch.

    `max_batch_size` is the contract (the most rows one request may carry, and the most the
    graph is run with). `preferred_batch_size` is a tuning, per device kind, like Triton's
    setting of that name: the batcher closes a batch at that many rows, because the batch a
    device computes most efficiently is often smaller than the largest it accepts (a CPU's
    caches; see docs/serving.md). A single request with more rows still runs whole.
    """

    max_batch_size: int = Field(default=32, ge=0, description="0 turns batching off")
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    queue_limit: int = Field(default=1024, ge=1, description="requests waiting; beyond it: 429")
    queue_budget_ms: float = Field(
        default=500.0, ge=0,
        description="longest a request may be expected to wait in a replica's queue (the queued work "
                    "at the replica's measured speed); beyond it: 429. 0: no budget")
    preferred_batch_size: dict[DeviceKind, int] = Field(
        default_factory=dict, description="rows at which a batch closes, by device kind")

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Batching:
        for kind, rows in self.preferred_batch_size.items():
            if self.max_batch_size == 0 or not 1 <= rows <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_size.{kind} = {rows}: must be between 1 and max_batch_size "
                    f"({self.max_batch_size}), and batching must be on")
        return self

    def batch_rows(self, kind: DeviceKind) -> int:
        """Rows at which the batcher closes a batch on a device of `kind` (0: batching off)."""
        return self.preferred_batch_size.get(kind, self.max_batch_size)


class Processing(_Strict):
    """The model's own pre- and post-processing around the ONNX graph."""

    kind: Literal["none", "sentence-embedding"] = "none"
    #: Tokenizer file (HF `tokenizers` JSON), relative to the model directory.
    tokenizer: str | None = None
    max_length: int = Field(default=256, ge=1)


class AccuracyTarget(_Strict):
    """Pass mark for bench accuracy runs, as in MLPerf's "-99" variants."""

    metric: Literal["cosine", "top1"]
    reference: float = Field(description="the FP32 reference score this model reaches")
    ratio: float = Field(default=0.99, gt=0, le=1)
    dataset: str | None = Field(default=None, description="data file, relative to the model dir")

    @property
    def threshold(self) -> float:
        return self.reference * self.ratio


#: What executes a model: an ONNX graph (`model.onnx`, run in kcloud's own workers by ONNX
#: Runtime) or a Hugging Face causal-LM checkpoint (`config.json` + `model.safetensors` +
#: tokenizer, run by an LLM engine process such as vLLM; see `kcloud.runtimes.engine`).
Platform = Literal["onnxruntime", "transformers"]


class Generation(_Strict):
    """A generative model's serving contract: what placement fits and the gateway enforces.

    The engine reads the checkpoint itself; these figures are the platform's side of the deal:
    a prompt plus its completion never exceed `context_length` tokens (longer ones are refused
    with 400 before the engine sees them), and a replica reserves `kv_cache_bytes` of device
    memory for its KV cache on top of the weights (`ModelConfig.memory_bytes` counts both).
    """

    context_length: int = Field(ge=16, description="most tokens of prompt plus completion")
    kv_cache_bytes: int = Field(ge=1, description="KV-cache memory one replica reserves")
    #: Served on /v1/chat/completions (the tokenizer has a chat template); else completions only.
    chat: bool = True
    #: Weights precision the engine loads.
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    #: `max_tokens` when a request gives none.
    default_max_tokens: int = Field(default=256, ge=1)
    #: Floating-point operations per token (2 × parameters); lets emulated devices model time.
    flops_per_token: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _default_fits(self) -> Generation:
        if self.default_max_tokens >= self.context_length:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) must be below "
                             f"context_length ({self.context_length})")
        return self


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    platform: Platform = "onnxruntime"
    #: The tensor signature of an ONNX model; empty for a generative model (tokens in and out).
    inputs: list[TensorSpec] = Field(default_factory=list, validate_default=True)
    outputs: list[TensorSpec] = Field(default_factory=list, validate_default=True)
    generation: Generation | None = None

    @field_validator("inputs", "outputs")
    @classmethod
    def _tensors_for_onnx(cls, tensors: list[TensorSpec], info: ValidationInfo) -> list[TensorSpec]:
        platform = info.data.get("platform", "onnxruntime")
        if platform == "onnxruntime" and not tensors:
            raise ValueError("missing required key: an onnxruntime model declares at least one")
        if platform == "transformers" and tensors:
            raise ValueError("a transformers model has no tensor signature: tokens in, tokens out")
        return tensors
    batching: Batching = Batching()
    device_kinds: list[DeviceKind] = Field(default_factory=lambda: ["cpu", "gpu", "npu"])
    processing: Processing = Processing()
    accuracy: AccuracyTarget | None = None
    #: Floating-point operations for one sample; lets emulated devices model their time.
    flops_per_sample: float | None = None
    #: Bytes a replica holds on its device (weights and workspace); used for memory fit.
    memory_bytes: int | None = None

    @model_validator(mode="after")
    def _platform_contract(self) -> ModelConfig:
        if self.platform == "onnxruntime" and self.generation is not None:
            raise ValueError("`generation` is for transformers models; an onnxruntime model has none")
        if self.platform == "transformers" and self.generation is None:
            raise ValueError("a transformers model needs a `generation` section "
                             "(context_length, kv_cache_bytes)")
        return self

    @property
    def generative(self) -> bool:
        """Served by an LLM engine on the OpenAI chat/completions routes, not by kcloud's batcher."""
        return self.generation is not None

    def max_request_elements(self) -> int | None:
        """The most tensor elements one request can carry and still fit this model's signature
        (its batch limit times each input's row shape); None when a free dimension leaves it open.

        The gateway refuses a request over this bound before decoding it, so an absurd shape (4
        million text elements for a model that takes 64) costs a header check, not a second.
        """
        total = 0
        for spec in self.inputs:
            dims = spec.shape[1:] if self.batching.max_batch_size > 0 else spec.shape
            if any(d < 0 for d in dims):
                return None
            rows = self.batching.max_batch_size if self.batching.max_batch_size > 0 else 1
            total += rows * math.prod(dims)
        return total

    def request_limit_words(self) -> str:
        """`max_request_elements` as a user reads it: where the bound comes from."""
        if self.batching.max_batch_size > 0:
            return f"at most {self.batching.max_batch_size} rows: its max_batch_size"
        return f"one sample of shape {self.inputs[0].shape}"
