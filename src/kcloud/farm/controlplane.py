"""Assembly: the control plane on a running gateway. `kcloud up` calls `attach` once.

`attach` opens the database (migrating it, or failing with one clear line), records the
inventory, adds the admin API to the app, restores every deployment from the database (its
replicas restart on the devices they were placed on, or are placed again), and then keeps
reconciling in the background until `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import FastAPI

from kcloud.devices.inventory import Inventory
from kcloud.farm.api import build_api
from kcloud.farm.executor import Executor, LocalExecutor
from kcloud.farm.profiles import ProfileBook
from kcloud.farm.reconciler import DEFAULT_HEALTH_INTERVAL_S, DEFAULT_INTERVAL_S, Reconciler
from kcloud.farm.service import AdmissionCheck, ControlPlaneService
from kcloud.models.repository import ModelRepository
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import Isolation, Replica
from kcloud.serving.router import Router
from kcloud.store.db import Database, open_database

log = logging.getLogger(__name__)


def default_admission() -> list[AdmissionCheck]:
    """Tenancy's quota check (it passes deployments that belong to no tenant)."""
    try:
        from kcloud.tenancy.holdings import enforce_deployment_quota
    except ImportError:  # pragma: no cover - tenancy ships with kcloud
        return []
    return [enforce_deployment_quota]


@dataclass
class ControlPlane:
    db: Database
    service: ControlPlaneService
    executor: Executor
    reconciler: Reconciler

    async def close(self) -> None:
        """Stop reconciling and close the database. Replicas keep running: the router stops them."""
        await self.reconciler.stop()
        self.db.close()


async def attach(
    app: FastAPI,
    router: Router,
    inventory: Inventory,
    db_url: str | None = None,
    *,
    repository: ModelRepository | None = None,
    metrics: ServingMetrics | None = None,
    isolation: Isolation = "process",
    executor: Executor | None = None,
    admission: Iterable[AdmissionCheck] | None = None,
    profiles: ProfileBook | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S,
    restore_timeout_s: float = 120.0,
) -> ControlPlane:
    """Put the control plane on `app` (running on this event loop) and restore the deployments.

    Raises `kcloud.store.db.DatabaseError` (one line: unreachable, schema mismatch) before
    anything is added to the app.
    """
    db = await asyncio.to_thread(open_database, db_url)
    try:
        service = ControlPlaneService(
            db,
            repository or router.repository,
            inventory.devices,
            profiles=profiles,
            admission=default_admission() if admission is None else admission,
            # What the router serves before any deployment is restored: the bundled models.
            reserved_names={replica.entry.name for replica in router.replicas()},
        )
        await asyncio.to_thread(service.sync_inventory)
        executor = executor or LocalExecutor(
            router, emulation=inventory.emulated, metrics=metrics, isolation=isolation
        )
        reconciler = Reconciler(
            service,
            executor,
            sample=inventory.sample,
            interval_s=interval_s,
            health_interval_s=health_interval_s,
        )

        def on_death(replica: Replica) -> None:
            reconciler.wake()

        router.on_replica_died.append(on_death)
        app.include_router(build_api(service, reconciler.wake))
        await reconciler.settle(restore_timeout_s)
        reconciler.start()
    except BaseException:
        db.close()
        raise
    control_plane = ControlPlane(db, service, executor, reconciler)
    app.state.control_plane = control_plane
    return control_plane
