"""A real gateway with tenancy attached, run as its own process by the tests.

Its own process so that a flooding client in the test process shares no GIL with the server, as
in production. It builds the stack as `kcloud up` does (`kcloud.app.stack`): socket, router,
`create_app`, the control plane that starts the models' replicas (real onnxruntime sessions, as
bundled deployments), and `kcloud.tenancy.attach`, with test knobs `kcloud up` does not have:
one thread per replica, some models on an emulated device, a short usage interval.

    python gateway_proc.py --db URL --repo DIR --models a,b [--insecure] [--farm F --emulated b]

prints `ANNOUNCE <line>` for what tenancy announces, then `LISTENING <port>` once it serves.
Without `--control-plane` the control plane keeps its state in memory and serves no admin API
(tenancy still uses `--db`).
"""

from __future__ import annotations

import argparse
import logging

from prometheus_client import CollectorRegistry

from kcloud.app.serve import serve_stack
from kcloud.app.stack import Stack, local_cpu
from kcloud.devices.inventory import Inventory
from kcloud.farm.controlplane import attach as attach_control_plane
from kcloud.farm.service import BundledModel
from kcloud.models.repository import ModelRepository
from kcloud.serving.gateway import create_app
from kcloud.serving.http_server import bind_socket, run_on_uvloop
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.router import Router
from kcloud.store.db import MEMORY_URL
from kcloud.tenancy import attach
from kcloud.tenancy.context import audit_current, current_principal
from kcloud.tenancy.holdings import enforce_deployment_quota


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
        assert emulated is not None or not on_emulated, "--emulated needs a farm file with an emulated device"
        names = [name for name in args.models.split(",") if name]
        bundled = [BundledModel(name, 1, node=(emulated if name in on_emulated else device).node,
                                chip=(emulated if name in on_emulated else device).spec.key, threads=1)
                   for name in names]
        app = create_app(router, inventory=inventory, registry=metrics.registry, metrics=metrics)
        control_plane = await attach_control_plane(
            app, router, inventory, args.db if args.control_plane else MEMORY_URL, repository=repository,
            metrics=metrics, isolation="thread", admission=[enforce_deployment_quota],
            caller=current_principal, audit=audit_current, bundled=bundled,
            admin_api=args.control_plane)
        assert not control_plane.not_served, control_plane.not_served
        stack = Stack(router, app, inventory, metrics, device, repository, control_plane,
                      entries=[repository.get(name) for name in names])
        if not args.no_tenancy:
            db = control_plane.db if args.control_plane else args.db
            stack.tenancy = attach(app, db, inventory=inventory, insecure=args.insecure, announce=announce,
                                   interval_s=args.interval)
        port = sock.getsockname()[1]
        await serve_stack(stack, sock, on_listening=lambda: print(f"LISTENING {port}", flush=True))

    run_on_uvloop(serve)


if __name__ == "__main__":
    main()
