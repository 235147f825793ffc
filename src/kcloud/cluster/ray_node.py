"""Starting this machine's Ray node: the head (`kcloud cluster start`) or a node joining one
(`kcloud cluster join`), with kcloud's node and device resources declared.

The node is started the way `ray start` starts it (`ray._private.node.Node` with `RayParams`),
in this process, so it lives and dies with the kcloud command that started it, and with one
difference: `ray start` and `ray.init` replace a loopback address by the machine's external
one (`services.resolve_ip_for_localhost`), while here 127.0.0.1 stays 127.0.0.1. For that,
a node on loopback sets Ray's own switch for one-machine clusters
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: Ray then takes 127.0.0.1 as this machine's address;
its only other effect is in the `ray start` CLI, which kcloud does not use) in this process
and the Ray processes it starts. Several nodes on one machine (tests, benchmarks, the quick
start) keep all of Ray's traffic on loopback that way. On real servers pass each server's
address; nothing is switched.

Before a node joins it checks that the head answers and runs the same Ray and Python versions
(Ray refuses a mismatch too, but only after starting processes, with a long message).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The Ray head's GCS port when none is given (Ray's own default is 6379).
DEFAULT_RAY_PORT = 6379
#: How long a node check waits for the head to answer.
REACH_TIMEOUT_S = 5.0
#: Node failure detection: the head's GCS asks every node this often and declares it dead after
#: this many missed answers (Ray's defaults, 3 s x 5, take 15 s to notice a dead node).
HEALTH_CHECK_PERIOD_MS = 1000
HEALTH_CHECK_FAILURE_THRESHOLD = 3
#: Each node's object store: kcloud sends no request data through it, only actor arguments.
OBJECT_STORE_BYTES = 128 * 1024 * 1024
NAMESPACE = "kcloud"
#: `GcsNodeInfo.state` of a live node (Ray's protobuf enum: ALIVE = 0, DEAD = 1).
ALIVE = 0


class ClusterError(RuntimeError):
    """A node cannot start or join (head unreachable, versions differ, name taken, ...)."""


@dataclass
class RayNode:
    """A Ray node this process started; `stop()` ends its processes."""

    node: Any  # ray._private.node.Node
    address: str  # the head's GCS address, host:port
    ip: str

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        with contextlib.suppress(Exception):
            self.node.kill_all_processes(check_alive=False, allow_graceful=True)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (port defaulting to 6379) -> (host, port); ClusterError when malformed."""
    host, colon, port = address.rpartition(":")
    if not colon:
        host, port = address, str(DEFAULT_RAY_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"not a head address: {address!r} (expected HOST:PORT, e.g. 127.0.0.1:6379)")
    return host, int(port)


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """The head's GCS accepts a TCP connection; ClusterError naming the address otherwise."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"no Ray head answers at {host}:{port} ({exc.strerror or exc}); start one with "
            "`kcloud cluster start` and pass the address it prints") from None


def check_versions(cluster: Mapping[str, Any]) -> None:
    """This process runs the Ray and Python (major.minor) the head runs; ClusterError otherwise.

    `cluster` is the head's cluster metadata (`ray_version`, `python_version`).
    """
    import ray

    ours = (ray.__version__, ".".join(map(str, sys.version_info[:2])))
    python = str(cluster.get("python_version", ""))
    theirs = (str(cluster.get("ray_version")), ".".join(python.split(".")[:2]))
    if ours != theirs:
        raise ClusterError(
            f"version mismatch: the head runs Ray {theirs[0]} on Python {theirs[1]}, this node Ray "
            f"{ours[0]} on Python {ours[1]}; install the same versions on every node")


def head_metadata(address: str) -> dict[str, Any]:
    """The head's cluster metadata (versions), read from its GCS."""
    from ray._common.usage.usage_lib import get_cluster_metadata
    from ray._raylet import GcsClient

    try:
        metadata = get_cluster_metadata(GcsClient(address=address))
    except Exception as exc:
        raise ClusterError(f"the Ray head at {address} did not answer as a Ray head: {exc}") from None
    if not metadata:
        raise ClusterError(f"the Ray head at {address} has no cluster metadata yet; try again")
    return metadata


def _keep_loopback(ip: str) -> None:
    """On loopback, make Ray take 127.0.0.1 as this machine's address (module docstring)."""
    import ipaddress

    if not ipaddress.ip_address(ip).is_loopback:
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray was imported before: its constant was read already
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]


def _params(ip: str, resources: Mapping[str, float], num_cpus: int | None, **extra: Any) -> Any:
    from ray._private.parameter import RayParams

    # Each node's own socket files: nodes started at the same moment on one machine would
    # otherwise pick the same free name in the shared session directory.
    sockets = tempfile.mkdtemp(prefix="kcloud-ray-")
    return RayParams(
        plasma_store_socket_name=os.path.join(sockets, "plasma_store"),
        raylet_socket_name=os.path.join(sockets, "raylet"),
        node_ip_address=ip,
        node_name=extra.pop("node_name", None) or ip,
        num_cpus=num_cpus,
        num_gpus=None,
        resources=dict(resources),
        object_store_memory=OBJECT_STORE_BYTES,
        include_dashboard=False,
        min_worker_port=0,
        max_worker_port=0,
        **extra,
    )


@contextlib.contextmanager
def _quiet_ray_start() -> Iterator[None]:
    """Ray logs each process it starts at INFO; a node start should print only kcloud's lines."""
    ray_log = logging.getLogger("ray")
    level = ray_log.level
    ray_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        ray_log.setLevel(level)


def start_head(*, ip: str, port: int, node: str, resources: Mapping[str, float],
               num_cpus: int | None = None) -> RayNode:
    """Start a Ray head on `ip:port` declaring `resources`, and connect this process to it."""
    _keep_loopback(ip)
    from ray._private.node import Node

    system_config = {"health_check_period_ms": HEALTH_CHECK_PERIOD_MS,
                     "health_check_failure_threshold": HEALTH_CHECK_FAILURE_THRESHOLD}
    params = _params(ip, resources, num_cpus, node_name=node, _system_config=system_config)
    params.gcs_server_port = port
    try:
        with _quiet_ray_start():
            ray_node = Node(params, head=True, shutdown_at_exit=True, spawn_reaper=True)
    except Exception as exc:
        raise ClusterError(f"cannot start the Ray head on {ip}:{port}: {exc}") from None
    address = ray_node.gcs_address
    _connect(address, ip)
    log.info("Ray head %s started at %s", node, address)
    return RayNode(ray_node, address, ip)


def join_cluster(address: str, *, ip: str, node: str, resources: Mapping[str, float],
                 num_cpus: int | None = None) -> RayNode:
    """Start a Ray node for kcloud node `node` that joins the head at `address`; connect to it.

    Checks first, before starting anything: the head answers, its versions are ours, no live
    node of the cluster already declares this node or one of its devices.
    """
    _keep_loopback(ip)
    from ray._private.node import Node

    check_reachable(address)
    check_versions(head_metadata(address))
    _check_not_taken(address, resources)
    params = _params(ip, resources, num_cpus, node_name=node, gcs_address=address,
                     include_log_monitor=True, node_manager_port=0)
    try:
        with _quiet_ray_start():
            ray_node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    except Exception as exc:
        raise ClusterError(f"cannot start a Ray node joining {address}: {exc}") from None
    try:
        _connect(address, ip)
    except BaseException:
        RayNode(ray_node, address, ip).stop()
        raise
    log.info("node %s joined the Ray cluster at %s", node, address)
    return RayNode(ray_node, address, ip)


def _connect(address: str, ip: str) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, _node_ip_address=ip, namespace=NAMESPACE, logging_level=logging.WARNING,
             log_to_driver=False, configure_logging=False)


def _check_not_taken(address: str, resources: Mapping[str, float]) -> None:
    """No live node of the cluster declares one of our kcloud resources (same node name, or a
    device already there); read from the head's GCS before anything starts."""
    from ray._raylet import GcsClient

    from kcloud.cluster.resources import DEVICE_PREFIX, NODE_PREFIX

    ours = {name for name in resources if name.startswith((NODE_PREFIX, DEVICE_PREFIX))}
    for info in GcsClient(address=address).get_all_node_info().values():
        if info.state != ALIVE:
            continue
        clash = sorted(ours & set(info.resources_total))
        if clash:
            what = ", ".join(name.split(":", 1)[1] for name in clash)
            raise ClusterError(
                f"already in the cluster (Ray node {info.node_name or info.node_manager_address}): "
                f"{what}; give this node another --node name, or its devices other ids")
