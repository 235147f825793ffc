"""A real gateway with tenancy attached, run as its own process by the tests.

Its own process so that a flooding client in the test process shares no GIL with the server, as
in production. It builds the same stack `kcloud up` does (`kcloud.serving.server` steps: socket,
router, replicas of real onnxruntime models, `create_app`) and calls `kcloud.tenancy.attach`.

    python gateway_proc.py --db URL --repo DIR --models a,b [--insecure] [--farm F --emulated b]

prints `ANNOUNCE <line>` for what tenancy announces, then `LISTENING <port>` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from prometheus_client import CollectorRegistry

from kcloud.devices.inventory import Inventory
from kcloud.models.repository import ModelRepository
from kcloud.serving.gateway import create_app
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import create_replica
from kcloud.serving.router import Router
from kcloud.serving.server import Stack, bind_socket, local_cpu, run_on_uvloop, serve_stack
from kcloud.store.db import open_database
from kcloud.tenancy import attach


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--farm", help="farm file with emulated devices")
    parser.add_argument("--emulated", default="", help="models to serve on the first emulated device")
    parser.add_argument("--no-tenancy", action="store_true", help="serve without tenancy (measures its cost)")
    parser.add_argument("--control-plane", action="store_true",
                        help="attach the control plane (deployments API, reconciler) as `kcloud up` does")
    args = parser.parse_args()
    # as `kcloud` configures logging
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    sock = bind_socket("127.0.0.1", 0)
    inventory = Inventory.build([args.farm] if args.farm else [], include_local=True)
    repository = ModelRepository(args.repo)

    def announce(text: str) -> None:
        for line in text.splitlines():
            print(f"ANNOUNCE {line}", flush=True)

    async def serve() -> None:
        metrics = ServingMetrics(CollectorRegistry())
        router = Router(repository)
        device = local_cpu(inventory)
        emulated = next((d for d in inventory if d.emulated), None)
        on_emulated = set(filter(None, args.emulated.split(",")))
        entries = [repository.get(name) for name in args.models.split(",") if name]
        for entry in entries:
            if entry.name in on_emulated:
                assert emulated is not None, "--emulated needs a farm file with an emulated device"
                replica = create_replica(entry, emulated, isolation="thread", threads=1, metrics=metrics,
                                         emulation=inventory.emulated)
            else:
                replica = create_replica(entry, device, isolation="thread", threads=1, metrics=metrics)
            await replica.start()
            router.add_replica(replica)
        app = create_app(router, inventory=inventory, registry=metrics.registry, metrics=metrics)
        control_plane = None
        if args.control_plane:
            from kcloud.farm.controlplane import attach as attach_control_plane

            control_plane = await attach_control_plane(app, router, inventory, args.db, repository=repository,
                                                       metrics=metrics, isolation="thread")
            db = control_plane.db
        else:
            db = open_database(args.db)
        tenancy = None if args.no_tenancy else attach(app, db, inventory=inventory, insecure=args.insecure,
                                                      announce=announce, interval_s=args.interval)
        stack = Stack(router, app, inventory, metrics, device, repository, entries)
        port = sock.getsockname()[1]
        try:
            await serve_stack(stack, sock, on_listening=lambda: print(f"LISTENING {port}", flush=True))
        finally:
            if tenancy is not None:
                await asyncio.to_thread(tenancy.close)
            if control_plane is not None:
                await control_plane.close()

    run_on_uvloop(serve)


if __name__ == "__main__":
    main()
