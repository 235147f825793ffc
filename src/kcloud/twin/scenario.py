"""A twin run's input: a farm file, its deployments with their loads, and failures to inject.

A scenario is a TOML file:

    [twin]
    farm = "k-cloud-phase1.toml"    # farm file(s), relative to this file
    duration_s = 60
    seed = 1
    # overhead_ms, gateway_ms, pauses = { every_s = 5, mean_ms = 20 }: the gateway (docs/twin.md)

    [[deployments]]
    name = "minilm"
    model = "all-minilm-l6-v2"      # a model of the repository (its config: batching, FLOPs, memory)
    replicas = 8
    vendor = "furiosa"              # placement constraints, as `kcloud deploy create` takes them
    load = { kind = "poisson", rate = 2000 }

    [[failures]]
    device = "naver-private-1/rngd0"
    at_s = 30

Placement is kcloud's own (`kcloud.farm.placement`), over the farm's devices with their measured
profiles where bench left one (`kcloud.farm.profiles`) and modelled ones otherwise, so the twin
puts replicas where `kcloud deploy create` would. A failure removes the device at `at_s`; its
replicas are placed again on the rest of the farm, as the control plane's failover does, and
serve `restart_s` later.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kcloud.devices.device import Device
from kcloud.devices.inventory import FarmFileError, Inventory
from kcloud.farm.placement import FarmView, PlacementEngine, PlacementRequest
from kcloud.farm.profiles import PRECISIONS, DeviceProfile, ProfileBook
from kcloud.farm.verdicts import EXCLUDED, UNHEALTHY
from kcloud.models.config import Batching as ModelBatching
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.twin.load import Load
from kcloud.twin.sim import Batching, ReplicaTimes

#: The gateway's pipeline depth per replica (`serving/replica.py`).
PIPELINE_DEPTH = 2


class ScenarioError(ValueError):
    """A scenario was refused: the message names the file and what is wrong."""


class GatewayPauses(BaseModel):
    """Stalls of the gateway's host (`kcloud.twin.sim.Pauses`): how often, and for how long."""

    model_config = ConfigDict(extra="forbid")

    every_s: float = Field(gt=0, description="mean time between stalls (exponential gaps)")
    mean_ms: float = Field(gt=0, description="mean length of a stall (exponential)")


class TwinSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    farm: list[Path] = Field(default_factory=list, description="farm files, relative to the scenario")
    duration_s: float = Field(default=60.0, gt=0)
    seed: int = 1
    include_local: bool = Field(default=False, description="add this machine's own devices (node `host`)")
    overhead_ms: float = Field(default=0.0, ge=0, description="fixed delay per request that occupies nothing")
    gateway_ms: float = Field(
        default=0.0, ge=0, description="the gateway's CPU per request, spent serially (one event loop)"
    )
    pauses: GatewayPauses | None = Field(
        default=None, description="stalls of the gateway's host (none by default)"
    )
    most_open_per_client: int | None = Field(
        default=None,
        ge=1,
        description="kcloud's per-client connection cap (`kcloud up --max-connections-per-client`): "
        "requests over it get 503 at once; the load counts as one client (none by default)",
    )
    bin_s: float = Field(default=1.0, gt=0, description="resolution of the timelines, utilisation, energy")

    @model_validator(mode="before")
    @classmethod
    def _one_farm(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("farm"), str):
            data = {**data, "farm": [data["farm"]]}
        return data


class DeploymentSpec(BaseModel):
    """One deployment as the twin takes it: `kcloud deploy create`'s fields, plus its load."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    replicas: int = Field(default=1, ge=1)
    vendor: str | None = None
    chip: str | None = None
    precision: str | None = None
    node: str | None = None
    policy: Literal["spread", "pack"] = "spread"
    deadline_ms: float | None = Field(default=None, gt=0, description="each request's deadline (504 past it)")
    batching: dict[str, object] = Field(default_factory=dict, description="overrides of the model's batching")
    load: Load

    @model_validator(mode="after")
    def _precision(self) -> DeploymentSpec:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(min_length=1, description="device uid, node/id")
    at_s: float = Field(ge=0)
    restart_s: float = Field(default=30.0, ge=0, description="until a replacement replica serves")


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    twin: TwinSettings = Field(default_factory=TwinSettings)
    deployments: list[DeploymentSpec] = Field(min_length=1)
    failures: list[Failure] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ScenarioFile:
        names = [d.name for d in self.deployments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"deployment names must be unique; twice: {', '.join(twice)}")
        return self


def load_scenario(path: Path) -> ScenarioFile:
    """Read and check a scenario file; farm and trace paths become absolute (relative to it)."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        scenario = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ScenarioError(f"{path}: {problems}") from None
    base = path.resolve().parent
    scenario.twin.farm = [p if p.is_absolute() else base / p for p in scenario.twin.farm]
    for deployment in scenario.deployments:
        trace = deployment.load.trace
        if trace is not None and not trace.is_absolute():
            deployment.load.trace = base / trace
    return scenario


@dataclass
class PlacedReplica:
    """One simulated replica: the device it runs on, its profile, and when it serves."""

    device: Device
    profile: DeviceProfile
    times: ReplicaTimes


@dataclass
class PlacedDeployment:
    spec: DeploymentSpec
    entry: ModelEntry
    batching: Batching
    replicas: list[PlacedReplica]
    reason: str  # placement's own words
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlacedFarm:
    """The scenario with every replica placed: what `kcloud.twin.run` simulates."""

    scenario: ScenarioFile
    devices: list[Device]
    deployments: list[PlacedDeployment]
    farm_name: str
    events: list[str] = field(default_factory=list)  # placements and failovers, in order


def build_devices(settings: TwinSettings) -> tuple[list[Device], str]:
    if not settings.farm and not settings.include_local:
        raise ScenarioError(
            "the scenario names no farm file and leaves out this machine: no device to place on"
        )
    try:
        inventory = Inventory.build(settings.farm, node="host", include_local=settings.include_local)
    except FarmFileError as exc:
        raise ScenarioError(str(exc)) from None
    names = [p.stem for p in settings.farm] or ["this machine"]
    return list(inventory.devices), " + ".join(names)


def place(scenario: ScenarioFile, repository: ModelRepository, profiles: ProfileBook) -> PlacedFarm:
    """Place every deployment as the control plane would, then apply the failures."""
    devices, farm_name = build_devices(scenario.twin)
    view = FarmView(devices, profiles=profiles)
    engine = PlacementEngine(view)
    placed: list[PlacedDeployment] = []
    events: list[str] = []
    for spec in scenario.deployments:
        entry = _model(repository, spec)
        unknown = unknown_speed(view, entry, spec.precision)
        result = engine.place(placement_request(spec, entry, spec.replicas, unknown))
        events.append(f"{spec.name}: {result.reason}")
        # the devices it would have used but for their unknown speed (the others failed a constraint)
        left_out = {uid: why for uid, why in unknown.items() if result.verdict[view.index[uid]] == EXCLUDED}
        if result.placed < spec.replicas:
            if left_out and not result.placed:  # placement's own words would name the exclusion only
                raise ScenarioError(f"deployment {spec.name}: no device fits: {_left_out(left_out, entry)}")
            said = f"; {_left_out(left_out, entry)}" if left_out else ""
            raise ScenarioError(f"deployment {spec.name}: {result.reason}{said}")
        batching = _batching(spec, entry)
        deployment = PlacedDeployment(spec, entry, sim_batching(batching), [], result.reason)
        if left_out:
            deployment.warnings.append(f"{spec.name}: {_left_out(left_out, entry)}")
        for i in result.chosen:
            deployment.replicas.append(_replica(view, i, spec, entry, batching, up_at=0.0))
        placed.append(deployment)
    farm = PlacedFarm(scenario, devices, placed, farm_name, events)
    for failure in sorted(scenario.failures, key=lambda f: f.at_s):
        if failure.at_s >= scenario.twin.duration_s:  # e.g. a shorter --duration than the scenario's
            events.append(f"{failure.at_s:g} s: {failure.device}'s failure is not simulated: the run "
                          f"ends at {scenario.twin.duration_s:g} s")
            continue
        _fail(farm, view, engine, failure)
    for deployment in placed:
        modelled = sorted({r.device.spec.key for r in deployment.replicas if r.profile.modelled})
        if modelled:
            deployment.warnings.append(
                f"{deployment.spec.name}: no measured profile of {deployment.entry.name} on "
                f"{', '.join(modelled)}; service times modelled from the catalog (run `kcloud bench` "
                "on the device to measure one)"
            )
    return farm


def _model(repository: ModelRepository, spec: DeploymentSpec) -> ModelEntry:
    try:
        return repository.get(spec.model)
    except (LookupError, ValueError) as exc:
        raise ScenarioError(f"deployment {spec.name}: {exc}") from None


def unknown_speed(view: FarmView, entry: ModelEntry, precision: str | None) -> dict[str, str]:
    """Devices whose speed for the model is unknown (no measurement, no catalog figure), with why.

    The twin cannot simulate them, so placement leaves them out (as `exclude`), and says so.
    """
    found: dict[str, str] = {}
    by_class: dict[int, str | None] = {}
    measured = set(view.measured_devices)
    for i, device in enumerate(view.devices):
        c = int(view.class_code[i])
        if i in measured or c not in by_class:
            profile = view.profile(i, entry.name, entry.config.flops_per_sample, precision,
                                   weight_bytes=entry.config.memory_bytes)
            why = None if profile.latency_s(1) else (profile.unknown_reason or "no service time")
            if i in measured:
                if why:
                    found[device.uid] = why
                continue
            by_class[c] = why
        reason = by_class[c]
        if reason:
            found[device.uid] = reason
    return found


def _left_out(unknown: dict[str, str], entry: ModelEntry) -> str:
    uids = sorted(unknown)
    reasons = "; ".join(sorted(set(unknown.values())))
    shown = ", ".join(uids[:5]) + (f" and {len(uids) - 5} more" if len(uids) > 5 else "")
    return (
        f"{len(unknown)} device(s) left out because the speed of {entry.name} on them is unknown "
        f"({reasons}): {shown}"
    )


def placement_request(
    spec: DeploymentSpec, entry: ModelEntry, count: int, exclude: dict[str, str] | None = None
) -> PlacementRequest:
    config = entry.config
    return PlacementRequest(
        deployment=spec.name,
        model=entry.name,
        count=count,
        total=spec.replicas,
        memory_bytes=config.memory_bytes,
        flops_per_sample=config.flops_per_sample,
        max_batch=largest_batch(_batching(spec, entry)),
        device_kinds=tuple(config.device_kinds),
        platform=config.platform,
        vendor=spec.vendor,
        chip=spec.chip,
        precision=spec.precision,
        node=spec.node,
        policy=spec.policy,
        exclude=exclude or {},
    )


def _batching(spec: DeploymentSpec, entry: ModelEntry) -> ModelBatching:
    if not spec.batching:
        return entry.config.batching
    try:
        return ModelBatching.model_validate({**entry.config.batching.model_dump(), **spec.batching})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"deployment {spec.name}: batching: {problems}") from None


def largest_batch(batching: ModelBatching) -> int:
    """Rows of the largest batch a replica forms: how far its service times (and a modelled
    profile's roofline points) must go."""
    return max(1, batching.max_batch_size)  # a preferred batch is never above the maximum


def sim_batching(batching: ModelBatching) -> Batching:
    """The model's batcher settings as a replica uses them, for the simulation."""
    return Batching(
        max_queue_delay_s=batching.max_queue_delay_ms / 1000,
        queue_limit=batching.queue_limit,
        queue_budget_s=batching.queue_budget_ms / 1000,
        pipeline_depth=PIPELINE_DEPTH,
    )


def service_table(profile: DeviceProfile, largest: int) -> np.ndarray | None:
    """`ReplicaTimes.service_s` from a profile: the time of a batch of 1 to `largest` rows (index 0
    unused); None when the profile lacks one (the chip's speed for the model is unknown)."""
    service = [profile.latency_s(b) for b in range(1, largest + 1)]
    if any(s is None or not math.isfinite(s) or s <= 0 for s in service):
        return None
    return np.array([0.0, *service], np.float64)


def _replica(
    view: FarmView, i: int, spec: DeploymentSpec, entry: ModelEntry, batching: ModelBatching, *, up_at: float
) -> PlacedReplica:
    device = view.devices[i]
    rows = batching.batch_rows(device.spec.kind)
    largest = largest_batch(batching)
    profile = view.profile(i, entry.name, entry.config.flops_per_sample, spec.precision,
                           weight_bytes=entry.config.memory_bytes, max_batch=largest)
    table = service_table(profile, largest)
    if table is None:
        why = profile.unknown_reason or "its profile has no service time"
        raise ScenarioError(
            f"deployment {spec.name}: placement chose {device.uid} ({device.spec.key}), whose speed for "
            f"{entry.name} is unknown: {why}. Measure it with `kcloud bench`, or constrain the "
            "deployment (vendor, chip) to devices with known figures"
        )
    times = ReplicaTimes(
        service_s=table,
        batch_rows=rows,
        up_at=up_at,
        device=device.uid,
        lanes=profile.replicas,
        service_sigma=profile.service_sigma,
    )
    return PlacedReplica(device, profile, times)


def _fail(farm: PlacedFarm, view: FarmView, engine: PlacementEngine, failure: Failure) -> None:
    i = view.index.get(failure.device)
    if i is None:
        raise ScenarioError(
            f"failure at {failure.at_s:g} s: no device {failure.device!r} in the farm "
            f"(devices are named node/id, e.g. {view.uids[0] if view.uids else '-'})"
        )
    view.unavailable[i] = UNHEALTHY
    for deployment in farm.deployments:
        spec, entry = deployment.spec, deployment.entry
        hit = [
            r
            for r in deployment.replicas
            if r.device.uid == failure.device and r.times.down_at == np.inf and r.times.up_at <= failure.at_s
        ]
        for replica in hit:
            replica.times = dataclasses.replace(replica.times, down_at=failure.at_s)
            view.remove_replica(spec.name, failure.device, entry.config.memory_bytes, None)
            result = engine.place(
                placement_request(spec, entry, 1, unknown_speed(view, entry, spec.precision))
            )
            if result.placed:
                new = _replica(
                    view,
                    result.chosen[0],
                    spec,
                    entry,
                    _batching(spec, entry),
                    up_at=failure.at_s + failure.restart_s,
                )
                deployment.replicas.append(new)
                farm.events.append(
                    f"{failure.at_s:g} s: {failure.device} failed; {spec.name}'s replica "
                    f"moves to {new.device.uid}, serving from {new.times.up_at:g} s"
                )
            else:
                farm.events.append(
                    f"{failure.at_s:g} s: {failure.device} failed; {spec.name}'s replica "
                    f"cannot move: {result.reason}"
                )
