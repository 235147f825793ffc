"""`kcloud cluster`: join a node to a kcloud cluster, and write its KubeRay manifests.

`kcloud cluster start` (the head: Ray head, control plane and gateway) is added to this group
by `kcloud.app`, which builds the gateway.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import threading
from pathlib import Path

import typer
from rich.console import Console

from kcloud.admin_client import DEFAULT_URL, KEY_ENV, URL_ENV, call_admin_api
from kcloud.cli_errors import fail
from kcloud.cluster import kuberay_commands

cluster_app = typer.Typer(
    name="cluster",
    help="A farm of many nodes on Ray: start a head, join nodes, write KubeRay manifests.",
    no_args_is_help=True,
)


def default_node_ip(head_address: str) -> str:
    """This node's address for Ray: loopback when the head is on loopback (several nodes on one
    machine), else the address this machine reaches the head from."""
    from kcloud.cluster.ray_node import split_address

    host, _ = split_address(head_address)
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    except ValueError:
        pass
    from ray._private.services import node_ip_address_from_perspective

    return str(node_ip_address_from_perspective(head_address))


def join(
    address: str = typer.Argument(
        ..., help="The head's Ray address, HOST:PORT (`kcloud cluster start` prints it)."),
    node: str | None = typer.Option(
        None, "--node", "-n", help="This node's name in the farm (default: the hostname)."),
    farm: list[Path] = typer.Option(
        [], "--farm", "-f", dir_okay=False,
        help="Farm file declaring this node's emulated devices (devices of other nodes in it are "
             "ignored); repeatable."),
    node_ip_address: str | None = typer.Option(
        None, "--node-ip-address",
        help="The address other nodes reach this one at (default: 127.0.0.1 for a head on loopback, "
             "else the address this machine reaches the head from)."),
) -> None:
    """Join this machine to a kcloud cluster as a node with its devices; Ctrl-C leaves."""
    import socket

    from kcloud.cluster.host import NodeAgent, node_inventory
    from kcloud.cluster.membership import agent_name
    from kcloud.cluster.ray_node import NAMESPACE, ClusterError, check_reachable, join_cluster, split_address
    from kcloud.cluster.resources import AGENT_SHARE, node_resource, node_resources
    from kcloud.devices.inventory import FarmFileError

    console = Console()
    name = node or socket.gethostname() or "localhost"
    try:
        split_address(address)
        inventory = node_inventory([str(path) for path in farm], name)
        check_reachable(address)
    except (ClusterError, FarmFileError) as exc:
        raise fail(str(exc), 2) from None
    ip = node_ip_address or default_node_ip(address)
    try:
        ray_node = join_cluster(address, ip=ip, node=name, resources=node_resources(name, inventory.devices))
    except ClusterError as exc:
        raise fail(str(exc), 2) from None
    import ray

    try:
        agent = ray.remote(NodeAgent).options(
            name=agent_name(name), namespace=NAMESPACE, num_cpus=0,
            resources={node_resource(name): AGENT_SHARE}, max_restarts=0,
        ).remote([str(path) for path in farm], name)
        devices = ray.get(agent.devices.remote(), timeout=120)
    except Exception as exc:
        ray_node.stop()
        raise fail(f"node {name} joined Ray but its agent did not start: {exc}", 1) from None
    console.print(f"[bold green]node {name} joined[/bold green] the cluster at {address} "
                  f"(Ray node on {ip}) with {len(devices)} device(s):")
    for device in devices:
        console.print(f"  {device.uid}  {device.name}{'  (emulated)' if device.emulated else ''}")
    console.print("Press Ctrl-C to leave.")
    _wait_for_stop()
    ray_node.stop()
    console.print(f"node {name} left the cluster.")


def nodes(
    url: str = typer.Option(DEFAULT_URL, "--url", envvar=URL_ENV, help="The head's gateway."),
    api_key: str | None = typer.Option(None, "--api-key", envvar=KEY_ENV, help="API key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The cluster's nodes and their devices as the head sees them: healthy or why not, replicas."""
    from rich.table import Table

    rows = call_admin_api(url, api_key, "GET", "/api/v1/devices")
    by_node: dict[str, list[dict]] = {}
    for row in rows:
        by_node.setdefault(row["node"], []).append(row)
    if as_json:
        typer.echo(json.dumps({node: devices for node, devices in sorted(by_node.items())}, indent=2))
        return
    table = Table(title="kcloud cluster nodes")
    for column in ("node", "device", "chip", "emulated", "state", "replicas"):
        table.add_column(column, justify="right" if column == "replicas" else "left")
    for node, devices in sorted(by_node.items()):
        for index, row in enumerate(devices):
            state = ("absent" if not row["present"] else "drained" if row["drained"] else
                     "healthy" if row["healthy"] else f"unhealthy: {row['health_reason']}")
            emulated = "yes" if row["emulated"] else "no"
            first = node if index == 0 else ""
            table.add_row(first, row["uid"], row["chip"], emulated, state, str(row["replicas"]))
    Console().print(table)


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (a Kubernetes pod is stopped with SIGTERM)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def register(app: typer.Typer) -> None:
    """Add `kcloud cluster` (join, manifests) to the `kcloud` app; `kcloud.app` adds `start`."""
    cluster_app.command("join")(join)
    cluster_app.command("nodes")(nodes)
    kuberay_commands.register(cluster_app)
    app.add_typer(cluster_app, name="cluster")
