"""`DevicePlugin`: the narrow interface every vendor implements, found through entry points.

Like Ray's `_private/accelerators/`, each vendor is one small class, and detection degrades to
"no devices here" without raising: a missing SDK or driver is the normal case, not an error.
Out-of-tree vendors register a class under the `kcloud.devices` entry-point group.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import ClassVar

from kcloud.devices.device import Device, Telemetry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kcloud.devices"


class DevicePlugin(ABC):
    """Discovers and meters one vendor's devices on this node."""

    name: ClassVar[str]
    vendor: ClassVar[str]
    #: Ray resource name (Ray's own where it has one: GPU, RBLN, FURIOSA).
    ray_resource: ClassVar[str | None] = None
    #: Kubernetes extended resource name of the vendor's device plugin.
    k8s_resource: ClassVar[str | None] = None
    #: Environment variable that restricts a process to some devices.
    visible_devices_env: ClassVar[str | None] = None
    #: Runtimes (see `kcloud.runtimes`) that can execute on this vendor's devices.
    runtimes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def discover(self, node: str) -> list[Device]:
        """Devices present on this node; `[]` when the SDK or driver is absent. Never raises."""

    @abstractmethod
    def sample(self, device: Device) -> Telemetry:
        """One telemetry reading; unreadable figures are `None` with a reason."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release vendor handles (e.g. NVML shutdown)."""


def load_plugins() -> list[DevicePlugin]:
    """Instantiate every installed plugin; a plugin that fails to import is logged and skipped."""
    plugins: list[DevicePlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            plugins.append(ep.load()())
        except Exception as exc:  # a broken vendor package must not take the node down
            log.warning("device plugin %s failed to load: %s", ep.name, exc)
    return plugins
