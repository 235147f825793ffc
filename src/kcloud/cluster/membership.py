"""Which nodes are in the cluster, on the head: Ray's node table is the truth.

Every second the head reads `ray.nodes()` (one call to its own GCS). A live Ray node that
declares a kcloud node resource (`kcloud-node:<name>`) and is new, or came back, is asked by
its `NodeAgent` for its devices, which join the control plane's inventory (events
`device.added` / `device.returned`); emulated ones are declared to the head's emulated plugin,
which models their utilisation and power from the work the head's replicas give them. A node
that Ray declares dead has its devices marked unhealthy ("node n2 left the cluster"), which
moves their replicas (the reconciler places them again on the nodes that remain); when it
rejoins they are healthy again.

The joined devices also enter the head's `Inventory` (the metering of energy and `/devices`
read it), the real ones with `_remote_sample` as their reader: their node's agent. The
reconciler's health check reads devices through `sample`: a device of a dead node is unhealthy
there too, so a later health pass cannot undo what the node table says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kcloud.cluster.ray_node import NAMESPACE
from kcloud.cluster.resources import node_of
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.inventory import Inventory
from kcloud.devices.plugins.emulated import DeclaredDevice
from kcloud.farm.service import ControlPlaneService

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
#: How long the head waits for a node agent's answer (devices, telemetry).
AGENT_TIMEOUT_S = 10.0


def agent_name(node: str) -> str:
    return f"node:{node}"


def _left(device: Device) -> Telemetry:
    return Telemetry(device.uid, healthy=False, modelled=device.emulated,
                     reasons={"node": f"node {device.node} left the cluster"})


@dataclass
class Member:
    """A kcloud node of the cluster, as the head last saw it."""

    name: str
    ray_node_id: str
    alive: bool
    devices: list[Device] = field(default_factory=list)


class ClusterMembership:
    """The head's view of the nodes that joined (see the module docstring)."""

    def __init__(self, inventory: Inventory, head_node: str, *, interval_s: float = POLL_INTERVAL_S) -> None:
        self.inventory = inventory
        self.head_node = head_node
        self.interval_s = interval_s
        self.members: dict[str, Member] = {}
        self.service: ControlPlaneService | None = None
        self.on_change: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    # -- reading ------------------------------------------------------------------------------
    def alive(self, node: str) -> bool:
        """Whether kcloud node `node` is up: the head's own node, or a live member."""
        if node == self.head_node:
            return True
        member = self.members.get(node)
        return member is not None and member.alive

    def sample(self, device: Device) -> Telemetry:
        """A device's telemetry for the reconciler's health check; unhealthy when its node left."""
        if not self.alive(device.node):
            return _left(device)
        return self.inventory.sample(device)  # a local sensor, the emulation model, or the agent

    def _remote_sample(self, device: Device) -> Telemetry:
        """A joined node's real device, read by its agent there (the head's inventory asks here)."""
        import ray

        if not self.alive(device.node):
            return _left(device)
        try:
            agent = ray.get_actor(agent_name(device.node), namespace=NAMESPACE)
            readings = ray.get(agent.sample.remote(), timeout=AGENT_TIMEOUT_S)
        except Exception as exc:
            return Telemetry(device.uid, healthy=False, reasons={"node": f"agent of {device.node}: {exc}"})
        for reading in readings:
            if reading.device_uid == device.uid:
                return reading
        return Telemetry(device.uid, healthy=False, reasons={"node": f"{device.node} no longer reports it"})

    # -- polling ------------------------------------------------------------------------------
    def start(self, service: ControlPlaneService) -> None:
        self.service = service
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kcloud-membership")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:
                log.exception("reading the cluster's nodes failed")
            await asyncio.sleep(self.interval_s)

    def poll_once(self) -> bool:
        """One look at Ray's node table; True when a node joined, came back or left."""
        import ray

        changed = False
        seen: dict[str, str] = {}
        for ray_node in ray.nodes():
            name = node_of(ray_node.get("Resources", {}) or {})
            if name is None or name == self.head_node or not ray_node.get("Alive"):
                continue
            seen[name] = ray_node["NodeID"]
        for name, node_id in seen.items():
            member = self.members.get(name)
            if member is None or not member.alive or member.ray_node_id != node_id:
                changed |= self._joined(name, node_id)
        for member in self.members.values():
            if member.alive and member.name not in seen:
                self._left(member)
                changed = True
        if changed:
            for hook in self.on_change:
                hook()
        return changed

    def _joined(self, name: str, node_id: str) -> bool:
        import ray

        try:
            agent = ray.get_actor(agent_name(name), namespace=NAMESPACE)
            devices: list[Device] = ray.get(agent.devices.remote(), timeout=AGENT_TIMEOUT_S)
        except Exception as exc:  # the agent is not up yet (the node is still joining): next poll
            log.debug("node %s has no agent yet: %s", name, exc)
            return False
        self._declare_emulated(devices)
        self.inventory.add([d for d in devices if d.emulated])  # modelled here
        self.inventory.add([d for d in devices if not d.emulated], sampler=self._remote_sample)
        self.members[name] = Member(name, node_id, True, devices)
        if self.service is not None:
            self.service.add_devices(devices)
            self.service.update_health({d.uid: (True, None) for d in devices})
        log.warning("node %s joined the cluster with %d device(s)", name, len(devices))
        return True

    def _left(self, member: Member) -> None:
        member.alive = False
        why = f"node {member.name} left the cluster"
        if self.service is not None:
            self.service.update_health({d.uid: (False, why) for d in member.devices})
        log.warning("%s; its replicas are placed again", why)

    def _declare_emulated(self, devices: list[Device]) -> None:
        known = {d.uid for d in self.inventory.emulated.devices}
        self.inventory.emulated.declare(
            DeclaredDevice(node=d.node, id=d.id, chip=d.spec.key, attributes=dict(d.attributes))
            for d in devices if d.emulated and d.uid not in known)

