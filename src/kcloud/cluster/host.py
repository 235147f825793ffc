"""What runs on a cluster node: the Ray actors kcloud places there.

- `ReplicaHost`: one per replica, pinned to its device's node by the device's Ray resource. It
  builds the replica's session in its own process (the actor's), with the device's visibility
  environment, and serves the gateway's batches over one TCP connection
  (`kcloud.serving.worker.SocketWorker`): requests never pass through Ray's object store.
- `NodeAgent`: one per joined node, created by `kcloud cluster join`; it tells the head which
  devices the node has, and reads their telemetry there (sensors are local to a node).

This module imports only what a node needs (devices, runtimes), so an actor's process stays
small.
"""

from __future__ import annotations

import os
import socket
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from kcloud.cluster.shipping import local_weights
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.inventory import Inventory
from kcloud.runtimes.child import serve_session

#: How long a host waits for the gateway to connect after `open` returned its address.
ACCEPT_TIMEOUT_S = 60.0


class ReplicaHost:
    """A replica's session on this node, behind a listening socket (see the module docstring)."""

    def open(self, weights_path: str, device: Device, threads: int, env: dict[str, str],
             authkey: bytes, sha256: str, shipped: list[Any]) -> tuple[str, int, int]:
        """Listen on this node's address (as its Ray node has it) and serve the session to the
        first client that proves it knows `authkey`; returns (address, port, pid). The session
        is built once the gateway is connected, and its ready message goes to it, as for a
        local worker. The model file is the head's path where this node has it (same content,
        `sha256`), else the copy shipped in `shipped[0]` (an object ref, in a list so that Ray
        fetches the bytes only when this node needs them; `kcloud.cluster.shipping`)."""
        import ray

        weights_path = local_weights(weights_path, sha256, lambda: ray.get(shipped[0]), node=device.node)
        listener = socket.create_server((ray.util.get_node_ip_address(), 0))
        listener.settimeout(ACCEPT_TIMEOUT_S)  # nobody came: give the port back
        host, port = listener.getsockname()[:2]
        threading.Thread(target=_serve, args=(listener, authkey, weights_path, device, threads, env),
                         daemon=True, name=f"replica-host-{device.id}").start()
        return host, port, os.getpid()


def _serve(listener: socket.socket, authkey: bytes, weights_path: str, device: Device, threads: int,
           env: dict[str, str]) -> None:
    """Accept the gateway (what `multiprocessing.connection.Listener` does, with a timeout it
    lacks), then run the session until the gateway closes the connection."""
    try:
        sock, _ = listener.accept()
    except OSError:
        return
    finally:
        listener.close()
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Connection(sock.detach())
    try:
        deliver_challenge(conn, authkey)
        answer_challenge(conn, authkey)
    except (OSError, EOFError, AuthenticationError):
        conn.close()
        return
    # The actor's parent is its node's raylet: when the node goes, the session ends with it.
    serve_session(conn, weights_path, device, threads, os.getppid(), env)


def node_inventory(farm_files: list[str], node: str) -> Inventory:
    """Node `node`'s devices: those found on this machine, and those the farm files declare
    on that node (devices of other nodes in the files are not this node's)."""
    return Inventory.build(farm_files, node=node, include_local=True).only_node(node)


class NodeAgent:
    """A joined node's devices and their telemetry, for the head."""

    def __init__(self, farm_files: list[str], node: str) -> None:
        self.inventory = node_inventory(farm_files, node)

    def devices(self) -> list[Device]:
        return list(self.inventory.devices)

    def sample(self) -> list[Telemetry]:
        return [self.inventory.sample(device) for device in self.inventory.devices]
