"""Assembly: the control plane on a running gateway. `kcloud up` calls `attach` once.

`attach` opens the database (migrating it, or failing with one clear line), records the
inventory, makes the bundled models' deployments match this start, adds the admin API to the app,
restores every deployment from the database (its replicas restart on the devices they were placed
on, or are placed again), and then keeps reconciling in the background until `close()`. It is
the only owner of replicas: every replica the gateway routes to was placed and started here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fastapi import FastAPI

from kcloud.devices.device import Device, Telemetry
from kcloud.devices.inventory import Inventory
from kcloud.farm.api import Caller, build_api
from kcloud.farm.autoscaler import Autoscaler
from kcloud.farm.executor import Executor, LocalExecutor
from kcloud.farm.ledger import DEFAULT_AUTOSCALE_INTERVAL_S
from kcloud.farm.profiles import ProfileBook
from kcloud.farm.reconciler import DEFAULT_HEALTH_INTERVAL_S, DEFAULT_INTERVAL_S, PassReport, Reconciler
from kcloud.farm.service import AdmissionCheck, BundledModel, ControlPlaneService
from kcloud.models.repository import ModelRepository
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import Isolation, Replica
from kcloud.serving.router import Router
from kcloud.store.db import Database, open_database

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    db: Database
    service: ControlPlaneService
    executor: Executor
    reconciler: Reconciler
    autoscaler: Autoscaler
    #: Bundled models that are not served, with why (they could not be deployed or started).
    not_served: dict[str, str] = field(default_factory=dict)

    async def close(self) -> None:
        """Stop autoscaling and reconciling and close the database. Replicas keep running: the
        router stops them."""
        await self.autoscaler.stop()
        await self.reconciler.stop()
        self.db.close()


async def attach(
    app: FastAPI,
    router: Router,
    inventory: Inventory,
    db: Database | str | None = None,
    *,
    repository: ModelRepository | None = None,
    metrics: ServingMetrics | None = None,
    isolation: Isolation = "process",
    executor: Executor | None = None,
    sample: Callable[[Device], Telemetry] | None = None,
    admission: Iterable[AdmissionCheck] = (),
    caller: Callable[[], Caller | None] = lambda: None,
    audit: Callable[..., None] = lambda action, target, **detail: None,
    bundled: Sequence[BundledModel] = (),
    admin_api: bool = True,
    profiles: ProfileBook | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S,
    restore_timeout_s: float = 120.0,
    autoscale_interval_s: float = DEFAULT_AUTOSCALE_INTERVAL_S,
    on_pass: Callable[[PassReport], None] | None = None,
) -> ControlPlane:
    """Put the control plane on `app` (running on this event loop), restore the deployments and
    start the bundled ones; the database (a `Database`, or a URL to open) is closed by `close()`.

    `admission` (tenancy's quota check), `caller` (who is asking, for the admin API's name
    spaces) and `audit` (the audit log) come from the layer above, which knows tenants.
    `executor` and `sample` replace the local executor and the inventory's telemetry where
    replicas run elsewhere (a Ray cluster: `kcloud.cluster.head`).
    `admin_api=False` keeps the API off the app: the control plane then only owns the replicas
    (a gateway without `/api/v1`).
    Raises `kcloud.store.db.DatabaseError` (one line: unreachable, schema mismatch) before
    anything is added to the app.
    """
    if not isinstance(db, Database):
        db = await asyncio.to_thread(open_database, db)
    try:
        service = ControlPlaneService(
            db, repository or router.repository, inventory.devices, profiles=profiles, admission=admission
        )
        service.autoscale_interval_s = autoscale_interval_s
        await asyncio.to_thread(service.sync_inventory)
        not_served = await asyncio.to_thread(service.serve_bundled, bundled)
        executor = executor or LocalExecutor(
            router, emulation=inventory.emulated, metrics=metrics, isolation=isolation
        )
        reconciler = Reconciler(
            service,
            executor,
            sample=sample or inventory.sample,
            interval_s=interval_s,
            health_interval_s=health_interval_s,
        )

        def on_death(replica: Replica) -> None:
            reconciler.wake()

        router.on_replica_died.append(on_death)
        autoscaler = Autoscaler(service, router, reconciler.wake, interval_s=autoscale_interval_s)
        if admin_api:
            app.include_router(build_api(service, reconciler.wake, caller=caller, audit=audit,
                                         routing=router.routing))
        await reconciler.settle(restore_timeout_s, on_pass=on_pass)
        not_served |= await asyncio.to_thread(_drop_unstarted, service, router, bundled)
        reconciler.start()
        autoscaler.start()
    except BaseException:
        db.close()
        raise
    control_plane = ControlPlane(db, service, executor, reconciler, autoscaler, not_served)
    app.state.control_plane = control_plane
    return control_plane


def _drop_unstarted(
    service: ControlPlaneService, router: Router, bundled: Sequence[BundledModel]
) -> dict[str, str]:
    """Delete the bundled deployments none of whose replicas started, with the reason: a model that
    cannot run here (a broken file a user added) is left out rather than retried for ever."""
    dropped: dict[str, str] = {}
    deployments = {d.name: d for d in service.list_deployments()}
    for model in bundled:
        if router.replicas(model.name) or model.name not in deployments:
            continue
        failures = [e.message for e in service.events(deployment=model.name) if e.kind == "replica.failed"]
        why = failures[-1] if failures else deployments[model.name].reason
        dropped[model.name] = why or "no replica started"
        service.delete(model.name)
    return dropped
