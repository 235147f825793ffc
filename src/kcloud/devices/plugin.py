"""`DevicePlugin`: the narrow interface every vendor implements, found through entry points.

Like Ray's `_private/accelerators/`, each vendor is one small class, and detection degrades to
"no devices here" without raising: a missing SDK or driver is the normal case, not an error.
Out-of-tree vendors register a class under the `kcloud.devices` entry-point group.

The plugin is also where a vendor's names live: its Ray and Kubernetes resource names and the
environment variable that restricts a process to some of its devices. A runtime
(`kcloud.runtimes`) asks the device's plugin for that variable (`visibility_env`) instead of
knowing vendors itself: detecting hardware and running on it are two seams.
"""

from __future__ import annotations

import functools
import logging
import re
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import ClassVar

from kcloud.devices.device import Device, Telemetry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kcloud.devices"
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def device_ordinal(device: Device) -> int:
    """The device's number on its node: `attributes["index"]`, else the digits ending its id.

    It is the number vendor tools and visibility variables use (NVML's index, `rbln0` → 0,
    `npu1` → 1). `ValueError` when neither gives one.
    """
    index = device.attributes.get("index")
    if index is not None and str(index).isdigit():
        return int(index)
    match = _TRAILING_DIGITS.search(device.id)
    if match is None:
        raise ValueError(f"device {device.uid}: cannot tell its index on the node from id {device.id!r}")
    return int(match.group(1))


class DevicePlugin(ABC):
    """Discovers and meters one vendor's devices on this node."""

    name: ClassVar[str]
    vendor: ClassVar[str]
    #: Ray resource name (Ray's own where it has one: GPU, RBLN, FURIOSA).
    ray_resource: ClassVar[str | None] = None
    #: Kubernetes extended resource name of the vendor's device plugin.
    k8s_resource: ClassVar[str | None] = None
    #: Environment variable that restricts a process to some devices (None: nothing to restrict).
    visible_devices_env: ClassVar[str | None] = None
    #: The vendor's own runtimes for these devices, as the plugin declares them; shown in
    #: listings. Whether kcloud can serve a model on a device is decided by the installed
    #: `kcloud.runtimes` plugins alone, never by this list.
    runtimes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def discover(self, node: str) -> list[Device]:
        """Devices present on this node; `[]` when the SDK or driver is absent. Never raises."""

    @abstractmethod
    def sample(self, device: Device) -> Telemetry:
        """One telemetry reading; unreadable figures are `None` with a reason."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release vendor handles (e.g. NVML shutdown)."""

    @classmethod
    def visible_device_id(cls, device: Device) -> str:
        """How `visible_devices_env` names `device`: its index on the node, unless a vendor
        writes it otherwise (Furiosa: `npu:<index>`)."""
        return str(device_ordinal(device))

    @classmethod
    def visibility_env(cls, device: Device) -> dict[str, str]:
        """The environment that lets a process see `device` and no other device of this vendor.

        Empty when the vendor has no such variable (CPUs) and for emulated devices, which exist
        only in a farm file: there is nothing on the node to hide. `ValueError` when the
        device's index cannot be told (a process that could see every device must not start).
        """
        if cls.visible_devices_env is None or device.emulated:
            return {}
        return {cls.visible_devices_env: cls.visible_device_id(device)}


def load_plugins() -> list[DevicePlugin]:
    """Instantiate every installed plugin; a plugin that fails to import is logged and skipped."""
    plugins: list[DevicePlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            plugins.append(ep.load()())
        except Exception as exc:  # a broken vendor package must not take the node down
            log.warning("device plugin %s failed to load: %s", ep.name, exc)
    return plugins


@functools.cache
def plugin_classes() -> dict[str, type[DevicePlugin]]:
    """Installed plugin classes by `DevicePlugin.name`, without instantiating them (no vendor
    library is opened). Cached: entry points do not change while a process runs. Never raises."""
    classes: dict[str, type[DevicePlugin]] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as exc:
            log.warning("device plugin %s failed to load: %s", ep.name, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, DevicePlugin):
            classes.setdefault(cls.name, cls)
    return classes


def plugin_class(name: str) -> type[DevicePlugin] | None:
    """The installed plugin class called `name` (a `Device.plugin`), or None."""
    return plugin_classes().get(name)
