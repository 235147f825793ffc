"""The control plane's request and answer shapes, in one place (API, service and CLI share them).

A deployment is served under its own name: `name` defaults to the model's, and two deployments
of one model (two tenants, or a canary) are two endpoints. Constraints are exact matches on the
catalog's vocabulary (vendor, chip key, precision) and on node names; a constraint the catalog
cannot satisfy by definition (an unknown chip, a chip of another vendor) is refused (422), one
that no device satisfies *right now* leaves the deployment pending with the reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kcloud.farm.bounds import INTEGER_MAX, StorableBody
from kcloud.farm.names import NAME_PATTERN, TENANT_PART
from kcloud.farm.profiles import PRECISIONS

Policy = Literal["spread", "binpack"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
assert set(PRECISIONS) == {"fp32", "fp16", "bf16", "int8", "fp8"}


class _Strict(BaseModel):
    # No infinite or NaN number (JSON's 1e400 parses as one): no column or audit detail can hold it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Constraints(_Strict):
    # Lengths: those of the deployments table's columns (see `kcloud.farm.bounds`).
    vendor: str | None = Field(
        default=None, max_length=64, description="vendor as the catalog names it, e.g. furiosa"
    )
    chip: str | None = Field(default=None, max_length=128, description="catalog key, e.g. furiosa-rngd")
    precision: Precision | None = None
    node: str | None = Field(default=None, max_length=255, description="node name")


class Slo(_Strict):
    p99_latency_ms: float | None = Field(default=None, gt=0)
    throughput_rps: float | None = Field(default=None, gt=0)


Metric = Literal["ongoing", "rps", "p99", "tokens"]
#: Longest window or delay a policy may ask for (an hour): longer ones only hide the load.
WINDOW_MAX_S = 3600.0


class Autoscale(_Strict):
    """How many replicas a deployment runs, decided from its load (`kcloud.farm.autoscaling`).

    The autoscaler keeps `metric` per replica near `target`: `ongoing` requests in flight (queued
    or computing), `rps` requests arriving per second, `tokens` in flight (prompt plus maximum new
    tokens; chat models), or `p99` latency in ms over the stable window (default target: the
    deployment's SLO). It averages over `stable_window_s`; when the `panic_window_s` average is
    `panic_threshold` times what the replicas are meant to carry, it scales out at once and does
    not scale in until a stable window has passed calm. A scale-out waits `upscale_delay_s` and a scale-in
    `downscale_delay_s` of the wish persisting; at `min_replicas: 0` an idle deployment stops all
    its replicas and the next request starts one (and waits for it, within its deadline).
    """

    min_replicas: int = Field(default=1, ge=0, le=10_000)
    max_replicas: int = Field(default=4, ge=1, le=10_000)
    metric: Metric = "ongoing"
    target: float | None = Field(
        default=None, gt=0, le=1e9,
        description="per replica: requests in flight (ongoing), requests/s (rps), tokens in flight "
                    "(tokens), or p99 latency in ms (p99). Default: the model's max batch size for "
                    "ongoing; the SLO's p99 for p99; required for rps and tokens")
    stable_window_s: float = Field(default=60.0, gt=0, le=WINDOW_MAX_S)
    panic_window_s: float = Field(default=6.0, gt=0, le=WINDOW_MAX_S)
    panic_threshold: float = Field(default=2.0, ge=1.0, le=100.0)
    upscale_delay_s: float = Field(default=0.0, ge=0, le=WINDOW_MAX_S)
    downscale_delay_s: float = Field(default=30.0, ge=0, le=WINDOW_MAX_S)

    @model_validator(mode="after")
    def _consistent(self) -> Autoscale:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        if self.panic_window_s > self.stable_window_s:
            raise ValueError(
                f"panic_window_s ({self.panic_window_s:g}) is longer than stable_window_s "
                f"({self.stable_window_s:g}): the panic window is the short one")
        if self.target is None and self.metric in ("rps", "tokens"):
            raise ValueError(f"metric {self.metric} needs a target per replica")
        return self


class AutoscalerState(BaseModel):
    """What the autoscaler sees and last decided for one deployment (live, not stored)."""

    metric: str
    target: float = Field(description="per replica, in the metric's unit")
    value: float | None = Field(description="the metric over the stable window (p99: ms); null: no data")
    panic_value: float | None = Field(description="the metric over the panic window")
    panic: bool
    desired: int = Field(description="what the metric asks for, within min and max")
    replicas: int
    last_decision: str | None
    last_decision_at: datetime | None
    last_cold_start_s: float | None = Field(description="seconds the latest request at zero waited")
    shed_total: int = Field(description="requests refused for load (429) while this autoscaler ran")


class DeploymentCreate(_Strict, StorableBody):
    model: str = Field(min_length=1, max_length=255, description="model name in the repository")
    version: int | None = Field(
        default=None, ge=1, le=INTEGER_MAX, description="model version; default: the latest"
    )
    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="served name; default: the model's. A tenant's deployment is served as TENANT:NAME",
    )
    replicas: int = Field(default=1, ge=0, le=10_000)
    constraints: Constraints = Constraints()
    slo: Slo = Slo()
    policy: Policy = "spread"
    tenant: str | None = Field(
        default=None, max_length=255, description="owner; set by tenancy for tenant keys"
    )
    autoscale: Autoscale | None = Field(
        default=None,
        description="scale between min and max replicas on load; `replicas` is then the start "
                    "(default: min_replicas)")
    stages: int | None = Field(
        default=None, ge=1, le=16,
        description="pipeline stages each replica's graph is split into, one device each; default: "
                    "1 when the model fits a device, else the fewest whose parts fit")


class DeploymentUpdate(_Strict, StorableBody):
    """Only the fields given change. A new version, constraints, policy or SLO replace replicas."""

    version: int | None = Field(default=None, ge=1, le=INTEGER_MAX)
    replicas: int | None = Field(default=None, ge=0, le=10_000)
    constraints: Constraints | None = None
    slo: Slo | None = None
    policy: Policy | None = None
    autoscale: Autoscale | None = Field(
        default=None, description="a new policy; `null` turns autoscaling off (replicas stay as they are)")


class ScaleRequest(_Strict):
    replicas: int = Field(ge=0, le=10_000)


class DrainRequest(_Strict, StorableBody):
    reason: str | None = Field(default=None, max_length=500)


class ReplicaView(BaseModel):
    id: str
    device: str
    node: str
    state: str
    emulated: bool | None
    pid: int | None
    generation: int
    started_at: datetime | None
    last_error: str | None
    #: What the replica serves and why: the source graph, or the compiled artifact its
    #: deployment's precision needs on its device (target, key, gate).
    serves: str | None = None
    artifact: dict[str, Any] | None = None
    #: A pipeline replica's devices in stage order (its first is `device`); None on one device.
    stage_devices: list[str] | None = None


class StageView(BaseModel):
    index: int
    memory_bytes: int | None = Field(description="modelled: the model's memory split by weight share")
    cost_share: float = Field(description="share of the graph's cost (measured profile or weight bytes)")


class PipelineView(BaseModel):
    """A deployment served as a pipeline: its graph cut into stages on different devices."""

    stages: list[StageView]
    balance: float = Field(description="costliest stage against the mean stage; 1.0 is perfect")
    cost_basis: str
    asked: int | None = Field(description="stages asked for; null: decided by memory")


class DeploymentView(BaseModel):
    name: str
    model: str
    version: int
    version_pinned: bool
    tenant: str | None
    replicas: int = Field(description="desired")
    running: int
    constraints: Constraints
    slo: Slo
    policy: Policy
    autoscale: Autoscale | None = None
    autoscaler: AutoscalerState | None = Field(default=None, description="live; autoscaled deployments")
    pipeline: PipelineView | None = Field(default=None, description="how each replica is split; "
                                          "null when it runs whole on one device")
    status: str = Field(description="pending | progressing | ready | degraded")
    reason: str | None
    generation: int
    replica_list: list[ReplicaView]
    created_at: datetime
    updated_at: datetime


class CandidateView(BaseModel):
    device: str
    chosen: int
    eligible: bool
    reason: str
    score: float | None
    perf_per_watt: float | None = Field(description="samples per joule; null when unknown")
    perf_modelled: bool | None = Field(description="true: modelled from the catalog; false: measured")


class PlacementView(BaseModel):
    id: int
    at: datetime
    trigger: str
    policy: str
    requested: int
    placed: int
    outcome: str
    reason: str
    candidates: list[CandidateView]


class RoutingView(BaseModel):
    """How a generative deployment's requests are spread over its engine replicas."""

    policy: str = Field(description="the gateway's token routing policy (prefix, least-tokens, round-robin)")
    routed: dict[str, dict[str, int]] = Field(
        description="replica id -> requests sent to it, by the policy that chose it "
                    "(prefix: it had seen the prompt's prefix; least-tokens: the least loaded)")


class ExplainView(BaseModel):
    deployment: str
    status: str
    reason: str | None
    replicas: list[ReplicaView]
    pipeline: PipelineView | None = Field(default=None, description="its stages; null: one device each")
    placements: list[PlacementView] = Field(description="newest first")
    routing: RoutingView | None = Field(default=None, description="generative deployments only")


class DeviceView(BaseModel):
    uid: str
    node: str
    name: str
    chip: str
    vendor: str
    kind: str
    emulated: bool
    present: bool
    healthy: bool
    health_reason: str | None
    drained: bool
    drain_reason: str | None
    memory_bytes: int | None
    memory_placed_bytes: int
    replicas: int


class EventView(BaseModel):
    id: int
    at: datetime
    kind: str
    deployment: str | None
    device: str | None
    replica: str | None
    message: str
    data: dict[str, Any] | None = Field(
        default=None, description="the figures behind it, e.g. an autoscaling decision's inputs")


#: Most devices or nodes one reservation names (a node stands for all of its devices).
RESERVATION_TARGETS_MAX = 10_000


class ReservationCreate(_Strict, StorableBody):
    """Devices and/or whole nodes to set aside for one tenant (at least one of either)."""

    tenant: str = Field(pattern=rf"^{TENANT_PART}$", description="the tenant they are set aside for")
    devices: list[str] = Field(
        default_factory=list, max_length=RESERVATION_TARGETS_MAX, description="device uids (NODE/ID)"
    )
    nodes: list[str] = Field(
        default_factory=list,
        max_length=RESERVATION_TARGETS_MAX,
        description="node names: every device on the node, those that join later too",
    )
    note: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _names_something(self) -> ReservationCreate:
        if not self.devices and not self.nodes:
            raise ValueError("a reservation needs at least one device or node")
        for value in (*self.devices, *self.nodes):
            if not 1 <= len(value) <= 255:
                raise ValueError(f"{value[:40]!r}: a device uid or node name has 1 to 255 characters")
        return self


class ReservationView(BaseModel):
    id: int
    tenant: str
    devices: list[str] = Field(description="the devices it names")
    nodes: list[str] = Field(description="the nodes it names (each with every device on it)")
    covers: list[str] = Field(
        description="every device it sets aside now: those named and those on its nodes"
    )
    note: str | None
    created_at: datetime
    created_by: str


class ReservationCreated(ReservationView):
    moving: list[str] = Field(
        description="replicas of other tenants (or the operator's) that were on these devices: each is "
                    "placed elsewhere first, then stopped"
    )
