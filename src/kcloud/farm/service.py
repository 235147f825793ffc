"""The control plane's decisions: deployments, placements, drains and deaths, each one transaction.

Every change of desired or decided state goes through this class, in one database transaction
that either writes all of it (the deployment row, its replicas on their devices, the placement
with every candidate's reason, the events) or nothing: a refused request leaves no trace. One
process-wide lock serialises the decisions, so two requests can never place onto the same free
memory. (Several control-plane processes on one PostgreSQL would need row locks instead; kcloud
runs one.)

What the service does *not* do is start or stop anything: it writes replica rows in states
(`placed`, `evicting`, `stopping`) that the reconciler acts on through an executor, and the
reconciler reports back (`mark_running`, `replica_died`, `start_failed`, `replica_stopped`).
"""

from __future__ import annotations

from kcloud.farm.decisions import BundledModel, DeploymentDecisions
from kcloud.farm.device_state import DeviceState
from kcloud.farm.errors import (
    BadNameError,
    ConflictError,
    ControlPlaneError,
    InvalidSpecError,
    NotFoundError,
    UnknownModelError,
)
from kcloud.farm.ledger import ACTIVE_STATES, PLACEMENTS_KEPT, START_FAILURE_BACKOFF_S, AdmissionCheck
from kcloud.farm.lifecycle import ReplicaLifecycle, ReplicaWork
from kcloud.farm.reservations import Reservations
from kcloud.farm.views import ReadViews

__all__ = [
    "ACTIVE_STATES",
    "PLACEMENTS_KEPT",
    "START_FAILURE_BACKOFF_S",
    "AdmissionCheck",
    "BadNameError",
    "BundledModel",
    "ConflictError",
    "ControlPlaneError",
    "ControlPlaneService",
    "InvalidSpecError",
    "NotFoundError",
    "ReplicaWork",
    "UnknownModelError",
]


class ControlPlaneService(DeploymentDecisions, ReplicaLifecycle, DeviceState, Reservations, ReadViews):
    """The control plane's decisions and reads, by capability: `decisions.py` (deployments and
    placement), `lifecycle.py` (the reconciler's replica rows), `device_state.py` (inventory,
    health, drain), `reservations.py` (devices set aside for a tenant) and `views.py` (what the
    API shows), over one `ledger.Ledger`."""
