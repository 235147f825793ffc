"""What every capability of the control-plane service shares: the database, one lock, the events.

A decision runs under the process-wide lock in one database transaction (`transaction()`), and
says what it did with `_event`. The capabilities (`decisions`, `lifecycle`, `device_state`,
`views`) are mixed into `ControlPlaneService` over this one `Ledger`, so they share its state
and call each other through `self`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcloud.devices.device import Device
from kcloud.farm.errors import NotFoundError
from kcloud.farm.profiles import ProfileBook
from kcloud.farm.schema import (
    Deployment,
    EventRow,
)
from kcloud.farm.spec import AutoscalerState
from kcloud.models.repository import ModelRepository
from kcloud.store.db import Database

log = logging.getLogger(__name__)

#: States whose replica counts toward the deployment's desired count.
ACTIVE_STATES = ("placed", "starting", "running")
#: A device where a replica failed to start is avoided by that deployment for this long.
START_FAILURE_BACKOFF_S = 60.0
#: Placements kept per deployment (older ones are deleted with their candidates).
PLACEMENTS_KEPT = 20
#: Seconds between the autoscaler's readings of the load (`attach(autoscale_interval_s=...)`).
DEFAULT_AUTOSCALE_INTERVAL_S = 1.0


#: Called inside the transaction of a create, scale or update, after placement and before
#: commit; raising refuses the change (tenancy's quota check). Keyword arguments: session,
#: tenant, deployment, replicas (desired after the change), device_uids (one per replica).
AdmissionCheck = Callable[..., None]


class Ledger:
    """The service's shared state, and the helpers for transaction, lock and events."""

    def __init__(
        self,
        db: Database,
        repository: ModelRepository,
        devices: Sequence[Device],
        *,
        profiles: ProfileBook | None = None,
        admission: Iterable[AdmissionCheck] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.repository = repository
        self.devices = list(devices)
        self.profiles = profiles if profiles is not None else ProfileBook.load()
        self.admission = list(admission)
        self._clock = clock
        self._lock = threading.RLock()
        #: (deployment, device uid) -> (until, why): devices to avoid after a failed start.
        self._exclusions: dict[tuple[str, str], tuple[float, str]] = {}
        #: Bumped whenever capacity may have changed; a pending deployment is retried only then.
        self._epoch = 0
        self._tried: dict[int, int] = {}
        #: deployment id -> what the next placement is for (failover, drain, restore, ...)
        self._triggers: dict[int, str] = {}
        #: How often the autoscaler reads the load: no autoscale window may be shorter.
        self.autoscale_interval_s = DEFAULT_AUTOSCALE_INTERVAL_S
        #: The autoscaler's live state of a deployment, for its view (set by `kcloud.farm.autoscaler`).
        self.autoscaler_state: Callable[[str], AutoscalerState | None] = lambda name: None

    def _changed(self) -> None:
        self._epoch += 1

    @staticmethod
    def _event(
        session: Session,
        kind: str,
        message: str,
        *,
        deployment: str | None = None,
        device: str | None = None,
        replica: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            EventRow(
                kind=kind,
                message=message,
                deployment=deployment,
                device_uid=device,
                replica_id=replica,
                data=data,
            )
        )
        log.info("%s: %s", kind, message)

    def _deployment(self, session: Session, name: str, *, lock: bool = False) -> Deployment:
        query = select(Deployment).where(Deployment.name == name)
        if lock:
            query = query.with_for_update(of=Deployment)
        row = session.scalar(query)
        if row is None:
            raise NotFoundError(f"deployment {name!r} not found")
        return row

    def _exclude(self, deployment: str) -> dict[str, str]:
        now = self._clock()
        out = {}
        for (dep, uid), (until, why) in list(self._exclusions.items()):
            if until <= now:
                del self._exclusions[(dep, uid)]
            elif dep == deployment:
                out[uid] = why
        return out

    def _forget_failures_on(self, uid: str) -> None:
        """A device that came back (healthy again, or its node rejoined) is not the one a replica
        failed to start on: its deployments may try it at once, not after the backoff."""
        for key in [key for key in self._exclusions if key[1] == uid]:
            del self._exclusions[key]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One decision: under the lock, in one transaction that commits all of it or nothing."""
        with self._lock, self.db.transaction() as session:
            yield session
