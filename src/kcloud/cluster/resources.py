"""Ray resource names for kcloud's nouns: one definition, used by the executor, the nodes that
join and the KubeRay manifests.

Ray's own accelerator resources (`GPU`, `RBLN`, `FURIOSA`: `DevicePlugin.ray_resource`) say
how many of a chip a node has, not which one: Ray hands out any free one. Placement has
already chosen a device, so every kcloud node also declares one custom resource per device it
holds (`kcloud-device:<uid>`, amount 1) and one for itself (`kcloud-node:<name>`). A replica's
actor asks for a share of its device's resource, which only that node has: Ray puts it there.
"""

from __future__ import annotations

from collections.abc import Iterable

from kcloud.devices.device import Device
from kcloud.devices.plugin import plugin_class

NODE_PREFIX = "kcloud-node:"
DEVICE_PREFIX = "kcloud-device:"
#: The share of a node resource a node's own agent actor takes (leaves room for nothing else
#: to need it: replicas pin by device, not node).
AGENT_SHARE = 0.001


def node_resource(node: str) -> str:
    return NODE_PREFIX + node


def device_resource(device: Device) -> str:
    return DEVICE_PREFIX + device.uid


def node_of(resources: Iterable[str]) -> str | None:
    """The kcloud node a Ray node stands for, from its resource names; None for a plain Ray node."""
    for name in resources:
        if name.startswith(NODE_PREFIX):
            return name[len(NODE_PREFIX):]
    return None


def accelerator_resource(device: Device) -> str | None:
    """Ray's own resource for a real accelerator (`GPU`, `RBLN`, `FURIOSA`); None for CPUs,
    emulated devices and chips Ray has no manager for."""
    if device.emulated or device.spec.kind == "cpu":
        return None
    plugin = plugin_class(device.plugin)
    return plugin.ray_resource if plugin is not None else None


def node_resources(node: str, devices: Iterable[Device]) -> dict[str, float]:
    """The custom resources a Ray node started for kcloud node `node` declares: itself, and each
    device whose replicas it hosts (its own; on the head also the emulated devices its farm
    files declare on other nodes, which compute on the head's host). Ray detects its own
    accelerator counts."""
    resources = {node_resource(node): 1.0}
    resources.update((device_resource(device), 1.0) for device in devices)
    return resources


#: The share of its device's resource (and of Ray's accelerator unit) a replica's actor asks
#: for. Small: it pins the actor to the device's node without limiting how many replicas
#: share a device, which placement has already decided from memory and load.
REPLICA_SHARE = 0.01


def actor_resources(device: Device) -> dict[str, float]:
    """What a replica's actor asks Ray for: its device, and Ray's accelerator (`RBLN`, `FURIOSA`)
    where there is one; `GPU` goes as `num_gpus` (`actor_gpus`)."""
    resources = {device_resource(device): REPLICA_SHARE}
    accelerator = accelerator_resource(device)
    if accelerator is not None and accelerator != "GPU":
        resources[accelerator] = REPLICA_SHARE
    return resources


def actor_gpus(device: Device) -> float:
    return REPLICA_SHARE if accelerator_resource(device) == "GPU" else 0.0
