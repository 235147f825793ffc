"""`EngineRuntime`: a runtime that serves a generative model through an LLM engine's own server.

kcloud is not an LLM engine. For generative models (`ModelConfig.platform == "transformers"`) a
replica is an engine process (vLLM's OpenAI server, `furiosa-llm serve`, ...) that kcloud starts
on a loopback port, confined to its device, and supervises (`kcloud.serving.engine`); the
gateway passes OpenAI requests through to it. An `EngineRuntime` says how: the command line
and environment that start the engine for one model on one device (`launch`), the route that
says it is ready, and which OpenAI request fields it understands, so that a field it would
ignore is refused with a 400 naming it rather than dropped.

Runtimes sit below `kcloud.models` in the layers, so the model reaches them as an `EngineModel`
(plain fields), not as a repository entry. Shipped: `vllm` (`kcloud.runtimes.vllm`) and
`furiosa-llm` (`kcloud.runtimes.furiosa_llm`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from kcloud.devices.device import Device
from kcloud.runtimes.plugin import Runtime, UnsupportedDeviceError

#: Model platform (`ModelConfig.platform`) of Hugging Face causal-LM checkpoints.
TRANSFORMERS = "transformers"

#: The only address an engine listens on: the gateway is its one client.
LOOPBACK = "127.0.0.1"


class EngineModelError(ValueError):
    """The checkpoint is not in the form the engine serves on that device (e.g. an NPU engine
    given a plain Hugging Face checkpoint instead of its compiled artifact)."""


@dataclass(frozen=True)
class EngineModel:
    """What an engine is asked to serve: a checkpoint directory and its serving contract."""

    #: The version directory: `config.json`, `*.safetensors`, tokenizer files, chat template;
    #: for an NPU engine, the vendor's compiled artifact in that directory.
    checkpoint: Path
    #: The name the engine answers to (kcloud rewrites `model` in requests to it).
    served_name: str
    context_length: int
    #: KV-cache memory the engine reserves. Engines whose compiled artifact fixes the cache
    #: (vllm-rbln, furiosa-llm) ignore it.
    kv_cache_bytes: int
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one engine process: argv and the environment added to the parent's."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: Loopback address the engine listens on, e.g. "http://127.0.0.1:41234".
    base_url: str = ""
    #: GET this under `base_url`; 200 means the engine serves.
    health_path: str = "/health"
    #: The engine's Prometheus route, re-exported under kcloud_ names; None when it has none.
    metrics_path: str | None = "/metrics"


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In an engine process, before exec: its own process group (so it can be stopped as a whole),
    and SIGTERM when the process that started it dies (kcloud, or a cluster node's actor)."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def engine_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


class EngineRuntime(Runtime):
    """A runtime whose replicas are engine processes speaking OpenAI's HTTP API."""

    platforms: ClassVar[tuple[str, ...]] = (TRANSFORMERS,)
    #: The Python package the engine needs (refusals name it when it is missing).
    package: ClassVar[str]
    #: Every request field the engine takes on /v1/chat/completions (`messages` and `model`
    #: included). Complete, not a delta over some common set: engines differ even on basic
    #: OpenAI fields (furiosa-llm documents no `stop`, `seed` or penalties).
    chat_params: ClassVar[frozenset[str]] = frozenset()
    #: Every request field the engine takes on /v1/completions (`prompt` and `model` included).
    completion_params: ClassVar[frozenset[str]] = frozenset()

    def installed(self) -> bool:
        """Whether the engine's package can be imported here (without importing it)."""
        return importlib.util.find_spec(self.package) is not None

    def accepted_params(self, route: str) -> frozenset[str]:
        """Request fields the engine takes on `route` ("chat" or "completions")."""
        if route == "chat":
            return self.chat_params
        if route == "completions":
            return self.completion_params
        raise ValueError(f"route must be 'chat' or 'completions', got {route!r}")

    def require_served(self, device: Device) -> None:
        """`UnsupportedDeviceError` naming the runtime and its reason when it refuses `device`:
        `launch` must never start an engine on a device placement would have rejected."""
        reason = self.refusal(device)
        if reason is not None:
            raise UnsupportedDeviceError(f"{self.name} does not serve device {device.uid}: {reason}")

    @abstractmethod
    def launch(
        self, model: EngineModel, device: Device, *, port: int, threads: int | None = None,
        host: str = LOOPBACK,
    ) -> EngineLaunch:
        """The engine process for `model` on `device`, listening on `host`:`port` (loopback, but
        for an engine on a cluster node: that node's address, which the gateway reaches); its env
        includes `visibility_env(device)`. `threads`: CPU threads it may use (None: its default).

        `UnsupportedDeviceError` for a device it does not serve, `EngineModelError` for a
        checkpoint it cannot serve there. Builds argv and env only: starts nothing, touches
        no hardware."""
