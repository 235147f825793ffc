"""The head of a kcloud cluster: a Ray head on this machine, the view of the nodes that join,
and the executor that puts replicas on them. `kcloud cluster start` builds one and hands it to
the stack (`kcloud.app`), which serves the gateway and control plane as `kcloud up` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from kcloud.cluster.executor import RayExecutor
from kcloud.cluster.membership import ClusterMembership
from kcloud.cluster.ray_node import RayNode, start_head
from kcloud.cluster.resources import node_resources
from kcloud.devices.inventory import Inventory
from kcloud.farm.service import ControlPlaneService
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.router import Router


@dataclass
class ClusterHead:
    ray_node: RayNode
    membership: ClusterMembership
    node: str

    @property
    def address(self) -> str:
        """The address nodes join (`kcloud cluster join ADDRESS`)."""
        return self.ray_node.address

    def executor(self, router: Router, inventory: Inventory, metrics: ServingMetrics | None) -> RayExecutor:
        return RayExecutor(router, emulation=inventory.emulated, metrics=metrics,
                           node_alive=self.membership.alive, head_node=self.node)

    def watch(self, service: ControlPlaneService, wake: Callable[[], None]) -> None:
        """Follow nodes joining and leaving into `service`, waking the reconciler (`wake()`) on each."""
        self.membership.on_change.append(wake)
        self.membership.start(service)

    async def close(self) -> None:
        """Stop following nodes and stop the Ray head (after the replicas were stopped)."""
        await self.membership.stop()
        await asyncio.to_thread(self.ray_node.stop)


def start_cluster_head(inventory: Inventory, *, ip: str, port: int) -> ClusterHead:
    """Start a Ray head for this machine's node, declaring its devices (and the emulated ones of
    its farm files); `kcloud.cluster.ray_node.ClusterError` when it cannot."""
    local = next((n.name for n in inventory.nodes if n.local), None)
    if local is None:
        raise ValueError("the inventory has no node for this machine")
    ray_node = start_head(ip=ip, port=port, node=local, resources=node_resources(local, inventory.devices))
    return ClusterHead(ray_node, ClusterMembership(inventory, local), local)
