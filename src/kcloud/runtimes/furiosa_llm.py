"""`furiosa-llm`: generative models on FuriosaAI RNGD cards through `furiosa-llm serve`.

FuriosaAI's engine is its own (not a vLLM plugin), with a vLLM-like API and an OpenAI server.
What `launch` builds follows FuriosaAI's developer docs, v2026.3.0 (page sources in the
furiosa-ai/furiosa-ai.github.io repository):

- furiosa_llm/furiosa-llm-serve.html: `furiosa-llm serve [ARTIFACT_PATH]`, one model per
  server; the request fields of /v1/chat/completions and /v1/completions (tables below);
  `GET /metrics` (Prometheus); `model` in a request "is ignored on the server", so no
  `--served-model-name` is passed (that option only exists from 2026.2.0).
  https://developer.furiosa.ai/v2026.3.0/en/furiosa_llm/furiosa-llm-serve.html
- get_started/furiosa_llm.html: `--host` and `--port` choose the listening address.
- furiosa_llm/reference/llm_engine.html: `--devices`, "npu:X" for a whole card; "If not
  given, all available unoccupied devices will be used", so it is always given. Release
  2025.1.0 notes: `furiosa-llm serve ./model --devices "npu:0"`.
- furiosa_llm/k8s_deployment.html: readiness and liveness probes on `GET /health`.
- furiosa_llm/structured-output.html: `structured_outputs` on both routes.

A card only runs code compiled for it ahead of time, so the checkpoint must be compiled. The
docs know two forms, and the runtime tells them apart by what is in the directory:

- a model artifact (furiosa_llm/model-preparation.html, `ArtifactBuilder(...).build(save_dir)`
  or `furiosa-llm build`): the builder writes `artifact.json` into the directory (furiosa_llm
  2025.2 `artifact/builder.py`). Served as `furiosa-llm serve <dir>`. Legacy from 2026.3.
- a Hugging Face model directory with a Furiosa Executable Bundle beside it
  (furiosa_llm/fxb.html, 2026.3+): `*.fxb`. The docs resolve the bundle from `--fxb`, then an
  `.fxb` shipped in the model's repository, then a cache consulted only for hub ids ("a local
  model path bypasses it"); kcloud passes `--fxb` so the bundle served is the one in the
  version directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kcloud.devices.device import Device
from kcloud.devices.plugins.furiosa import FuriosaPlugin
from kcloud.runtimes.engine import (
    LOOPBACK,
    EngineLaunch,
    EngineModel,
    EngineModelError,
    EngineRuntime,
    engine_url,
)
from kcloud.runtimes.plugin import UnsupportedDeviceError

DOCS = "https://developer.furiosa.ai/v2026.3.0/en/furiosa_llm/furiosa-llm-serve.html"

#: Written by `ArtifactBuilder.build(save_dir)` into a model artifact directory.
ARTIFACT_JSON = "artifact.json"
FXB_SUFFIX = ".fxb"

_SAMPLING = frozenset({
    "model", "stream", "stream_options", "n", "best_of", "temperature", "top_p", "use_beam_search",
    "top_k", "min_p", "length_penalty", "repetition_penalty", "stop_token_ids", "ignore_eos",
    "early_stopping", "skip_special_tokens", "min_tokens", "max_tokens", "return_token_ids", "logprobs",
    "structured_outputs",
})

#: The Chat API table of the furiosa-llm-serve page (2026.3.0), plus `structured_outputs`.
FURIOSA_CHAT_PARAMS: frozenset[str] = _SAMPLING | {
    "messages", "max_completion_tokens", "tools", "tool_choice", "functions", "function_call", "top_logprobs",
}

#: The Completions API table of the same page, plus `structured_outputs`.
FURIOSA_COMPLETION_PARAMS: frozenset[str] = _SAMPLING | {"prompt"}


def compiled_form(checkpoint: Path) -> list[str]:
    """The `furiosa-llm serve` arguments after the model path that select its compiled form:
    `[]` for a model artifact, `["--fxb", bundle]` for a directory with one bundle.

    `EngineModelError` for a directory that holds neither, or several bundles."""
    if (checkpoint / ARTIFACT_JSON).is_file():
        return []
    bundles = sorted(checkpoint.glob(f"*{FXB_SUFFIX}"))
    if len(bundles) == 1:
        return ["--fxb", str(bundles[0])]
    if bundles:
        raise EngineModelError(
            f"{checkpoint} holds {len(bundles)} FXB bundles ({', '.join(b.name for b in bundles)}); "
            "keep the one to serve")
    raise EngineModelError(
        f"{checkpoint} is not compiled for RNGD: furiosa-llm serves a model artifact ({ARTIFACT_JSON}, "
        f"from `furiosa-llm build` / ArtifactBuilder) or a model directory with its {FXB_SUFFIX} bundle "
        "(`fxb build`); see developer.furiosa.ai furiosa_llm/model-preparation.html and fxb.html")


def furiosa_llm_command() -> str:
    """The `furiosa-llm` script of this interpreter's environment when there is one, so the
    engine runs from the same virtual environment as kcloud; else found on PATH."""
    script = Path(sys.executable).with_name("furiosa-llm")
    return str(script) if script.is_file() else "furiosa-llm"


class FuriosaLlmRuntime(EngineRuntime):
    """Generative models on real FuriosaAI RNGD cards, one card per replica."""

    name = "furiosa-llm"
    package = "furiosa_llm"
    chat_params = FURIOSA_CHAT_PARAMS
    completion_params = FURIOSA_COMPLETION_PARAMS

    def refusal(self, device: Device) -> str | None:
        if device.vendor.lower() != "furiosa":
            return "runs on FuriosaAI RNGD NPUs only"
        if device.emulated:
            return "runs on real RNGD cards only, not emulated devices (vLLM's CPU engine serves those)"
        if device.spec.chip.upper() != "RNGD":
            return f"runs on RNGD only, not {device.spec.chip}"
        if not self.installed():
            return "needs furiosa-llm (pip install furiosa-llm); it is not installed"
        return None

    def launch(
        self, model: EngineModel, device: Device, *, port: int, threads: int | None = None,
        host: str = LOOPBACK,
    ) -> EngineLaunch:
        """`threads` is not used: furiosa-llm sizes its host threads itself."""
        self.require_served(device)
        env = self.visibility_env(device)
        try:
            devices = FuriosaPlugin.visible_device_id(device)
        except ValueError as exc:  # without --devices it would take every free card
            raise UnsupportedDeviceError(str(exc)) from None
        argv = [
            furiosa_llm_command(), "serve", str(model.checkpoint), *compiled_form(model.checkpoint),
            "--host", host,
            "--port", str(port),
            "--devices", devices,
        ]
        return EngineLaunch(argv=argv, env=env, base_url=engine_url(host, port), health_path="/health",
                            metrics_path="/metrics")
