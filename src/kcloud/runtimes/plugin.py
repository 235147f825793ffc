"""`Runtime`: what executes a model on a device, found through the `kcloud.runtimes` entry points.

One question, "can this device run this model, and how?", has one answer: the installed
runtimes. Placement asks them whether a device is eligible, replicas ask them how to run the
model, and worker processes get the environment they give. Nothing else matches vendor strings.

A runtime is a small class registered under the `kcloud.runtimes` entry-point group (as device
plugins are under `kcloud.devices`). Discovery never raises: a plugin that fails to import, or
that is not a `Runtime`, is logged and skipped, so a broken package cannot take a node down.

Every runtime answers the same narrow questions:

    name, platforms                      who it is; the model platforms (`ModelConfig.platform`) it runs
    artifact_targets                     precision asked -> the compiled artifact it runs for it
    refusal(device) -> str | None        None when it serves the device, else why not (a phrase)
    visibility_env(device) -> dict       the environment that confines a worker process to the device

and then runs models in one of two ways:

- `SessionRuntime`: the model runs in a session kcloud's own worker holds (ONNX Runtime:
  `onnxruntime-cpu`, `onnxruntime-cuda` in `kcloud.runtimes.ort`), through
  `plan(device, confined=...)` and `create_session(path, device, plan, threads=...)`.
- `EngineRuntime` (`kcloud.runtimes.engine`): the model runs in an LLM engine's own server
  process (`vllm`, `furiosa-llm`), which kcloud starts and supervises; no session, no plan.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kcloud.devices.device import Device
from kcloud.devices.plugin import plugin_class

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kcloud.runtimes"

#: `Device.attributes` key where a runtime fallback is written down for listings to show.
RUNTIME_NOTE = "runtime_note"


class UnsupportedDeviceError(RuntimeError):
    """No installed runtime serves the model's platform on the device."""


@dataclass(frozen=True)
class ExecutionPlan:
    """Where a session computes: the provider wanted, and why (for logs and listings).

    `device_id` is the ordinal the runtime's library uses *in the process that builds the
    session*: inside a worker confined by `visibility_env` the one visible device is 0.
    """

    provider: str
    device_id: int | None
    on_host: bool
    reason: str
    runtime: str


class Session(Protocol):
    """What a replica's worker drives: the slice of `onnxruntime.InferenceSession` it uses."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...

    def get_outputs(self) -> Sequence[Any]: ...

    def get_providers(self) -> list[str]: ...


class Runtime(ABC):
    """Executes models of some platforms on some devices.

    `refusal` must depend only on a device's class (plugin, vendor, chip, `emulated`) and on
    what is installed in this process, never on the device's id or attributes: placement asks
    once per class of device and applies the answer to thousands of devices. It must be cheap
    and never touch the device (placement may run on another node than the model).
    """

    #: Unique name, e.g. "onnxruntime-cuda".
    name: ClassVar[str]
    #: Model platforms it runs (`ModelConfig.platform`, e.g. "onnxruntime").
    platforms: ClassVar[tuple[str, ...]]
    #: Precision a deployment may ask for -> the compile target whose artifact this runtime runs
    #: for it (`kcloud models compile --target`); None: the source graph as it is. A precision
    #: not listed is one it cannot run. Empty: the runtime's models carry their own precision
    #: (an LLM engine loads the checkpoint's dtype), and the chip's catalog figures decide.
    artifact_targets: ClassVar[dict[str, str | None]] = {}

    @abstractmethod
    def refusal(self, device: Device) -> str | None:
        """None when this runtime serves `device`; else a short phrase saying why not
        ("runs on NVIDIA GPUs only"), which placement and errors quote."""

    def serves(self, device: Device) -> bool:
        return self.refusal(device) is None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def visibility_env(self, device: Device) -> dict[str, str]:
        """The environment that confines a worker process to `device`.

        By default the device plugin's own variable (`DevicePlugin.visibility_env`), so vendor
        names live in one place; empty for CPUs and emulated devices. A runtime whose library
        needs more (or less) overrides it. `UnsupportedDeviceError` when the device's plugin
        has a variable but the device's index cannot be told.
        """
        if device.emulated:
            return {}
        cls = plugin_class(device.plugin)
        if cls is None:
            log.warning("device %s: no installed device plugin %r, so no variable confines a worker to it",
                        device.uid, device.plugin)
            return {}
        try:
            return cls.visibility_env(device)
        except ValueError as exc:
            raise UnsupportedDeviceError(str(exc)) from None


class SessionRuntime(Runtime):
    """A runtime whose models run in a session that kcloud's own worker holds (ONNX Runtime).

    The worker (a thread, a child process or a Ray actor) asks for a `plan`, builds the
    session once and feeds it batches; an engine runtime has neither, which is why these two
    methods live here and not on `Runtime`.
    """

    @abstractmethod
    def plan(self, device: Device, *, confined: bool = False) -> ExecutionPlan:
        """How a session on `device` runs. `confined`: the calling process was started with
        `visibility_env(device)`, so the device is the only one its library sees."""

    @abstractmethod
    def create_session(
        self, model_path: Path, device: Device, plan: ExecutionPlan, *, threads: int
    ) -> Session:
        """A session for the model file at `model_path`, laid out as `plan` says."""


def load_runtimes() -> list[Runtime]:
    """Instantiate every installed runtime, in entry-point name order. Never raises: one that
    fails to load, is not a `Runtime`, or repeats a name is logged and skipped."""
    runtimes: list[Runtime] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            runtime = ep.load()()
        except Exception as exc:  # a broken package must not take the node down
            log.warning("runtime plugin %s failed to load: %s", ep.name, exc)
            continue
        if not isinstance(runtime, Runtime):
            log.warning("runtime plugin %s is a %s, not a kcloud.runtimes.Runtime: skipped",
                        ep.name, type(runtime).__name__)
            continue
        if any(r.name == runtime.name for r in runtimes):
            log.warning("runtime plugin %s repeats the name %r: skipped", ep.name, runtime.name)
            continue
        runtimes.append(runtime)
    return runtimes


@functools.cache
def installed_runtimes() -> tuple[Runtime, ...]:
    """`load_runtimes()`, once per process: entry points do not change while it runs."""
    return tuple(load_runtimes())


def refusals(device: Device, platform: str, runtimes: Iterable[Runtime]) -> list[tuple[str, str]] | None:
    """None when one of `runtimes` serves `platform` models on `device`; else each runtime's
    name and why it does not (a runtime of another platform says which platforms it runs, which
    tells the reader, say, that the RNGD's runtime runs generative models only)."""
    why: list[tuple[str, str]] = []
    for runtime in runtimes:
        if platform not in runtime.platforms:
            why.append((runtime.name, f"runs {', '.join(runtime.platforms)} models, not {platform}"))
            continue
        reason = runtime.refusal(device)
        if reason is None:
            return None
        why.append((runtime.name, reason))
    return why


def installed_text(why: Sequence[tuple[str, str]]) -> str:
    """`installed: a (why), b (why)`, the tail of every "no runtime serves it" sentence."""
    if not why:
        return f"installed: none (no package registers a {ENTRY_POINT_GROUP} entry point)"
    return "installed: " + ", ".join(f"{name} ({reason})" for name, reason in why)


def runtime_for(device: Device, platform: str, runtimes: Iterable[Runtime] | None = None) -> Runtime:
    """The first runtime (in name order) that serves `platform` models on `device`.

    `UnsupportedDeviceError` naming the device and what each installed runtime said otherwise.
    """
    candidates = installed_runtimes() if runtimes is None else tuple(runtimes)
    for runtime in candidates:
        if platform in runtime.platforms and runtime.serves(device):
            return runtime
    why = refusals(device, platform, candidates) or []
    raise UnsupportedDeviceError(
        f"device {device.uid} ({device.vendor} {device.spec.chip}, kind {device.spec.kind}) has no runtime "
        f"that serves {platform} models on it; {installed_text(why)}"
    )
