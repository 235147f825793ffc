"""Runtime plugins for discovery tests, loaded through `importlib.metadata.EntryPoint`s that
point here (this directory is on `sys.path` while the tests under it run)."""

from __future__ import annotations

from pathlib import Path

from kcloud.devices.device import Device
from kcloud.runtimes.plugin import ExecutionPlan, Runtime, Session, SessionRuntime


class NpuRuntime(SessionRuntime):
    """Serves Rebellions NPUs for a made-up platform, as an out-of-tree vendor runtime would."""

    name = "rbln-fake"
    platforms = ("rbln-fake",)

    def refusal(self, device: Device) -> str | None:
        if device.vendor == "rebellions" and not device.emulated:
            return None
        return "runs on Rebellions NPUs only"

    def plan(self, device: Device, *, confined: bool = False) -> ExecutionPlan:
        return ExecutionPlan("rbln", 0 if confined else 1, False, "fake", self.name)

    def create_session(
        self, model_path: Path, device: Device, plan: ExecutionPlan, *, threads: int
    ) -> Session:
        raise NotImplementedError("discovery tests never build a session")


class SameNameAsCpu(NpuRuntime):
    name = "onnxruntime-cpu"


class NotARuntime:
    """Loads and instantiates fine, but is no `Runtime`."""


def broken_factory() -> Runtime:
    raise RuntimeError("vendor SDK missing")
