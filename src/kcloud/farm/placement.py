"""The placement engine: which devices host a deployment's replicas, and why. Filter, then score.

**Filter.** A device is a candidate only if every check passes, in this order (the first that
fails is its reason): present in the inventory, healthy, not drained, not reserved for another
tenant (`Reserved`; an operator's deployment takes no reserved device) and, for a tenant that
holds reservations, one of its own reserved devices, a device kind the model runs on, an
installed runtime (`kcloud.runtimes`) that serves the model's platform on the
device (the runtimes are asked, once per device class), the deployment's vendor / chip /
node / precision constraints, not recently failed for this deployment, its memory known and
enough of it free (device memory minus what placed replicas hold), its modelled or measured
batch-1 latency within the SLO's p99, and enough of its throughput left for this replica's
share of the SLO's requests per second.

**Score.** Performance per watt (samples per joule, from `DeviceProfile`: measured by bench
where it has a profile, else modelled from the catalog) normalised to the best candidate, so
the primary goal is the one the mission names: serve the load on the fewest watts. The policy
then shapes the rest:
- `spread` (default) first keeps a deployment's replicas on different devices (so one device
  failing takes down one replica), then perf/watt, then prefers emptier devices;
- `binpack` is perf/watt first, then prefers the fullest device that still fits, which keeps
  whole devices free for big models. Its weight (`POLICY_WEIGHT`) lets it decide only between
  devices within ~1 % perf/watt of each other, which on a real farm are the many identical
  devices of one chip.
A device whose perf/watt is unknown scores 0 for it: it is used only when no device with a
known figure fits, and every reason says "unknown", never a number.

**Speed.** Everything per device is a numpy array over the farm (codes for vendors, chips,
nodes, kinds; memory and load already placed). Per chip, profiles are computed once per
(model, precision) and gathered. Placing n replicas is one vectorised filter and score, then n
steps of argmax, each updating only the chosen device. 10,000 replicas on a 10,000-device farm
take well under the 2 s target (benchmarks/placement_scale.py).

The engine holds no database: `FarmView` is built from the inventory and the database's rows by
the caller, and results are plain data the caller records (`PlacementResult.candidates()`).
The verdict codes are `kcloud.farm.verdicts`; their words are `kcloud.farm.placement_reasons`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kcloud.devices.device import Device
from kcloud.devices.spec import ChipSpec
from kcloud.farm.placement_reasons import device_reason, summary
from kcloud.farm.profiles import FP32_KINDS, PRECISIONS, DeviceProfile, ProfileBook
from kcloud.farm.verdicts import (
    ABSENT,
    CHIP,
    DRAINED,
    ELIGIBLE,
    EXCLUDED,
    KIND,
    LATENCY,
    MEMORY,
    MEMORY_UNKNOWN,
    N_CODES,
    NODE,
    PRECISION,
    RESERVED,
    RUNTIME,
    THROUGHPUT,
    UNHEALTHY,
    UNRESERVED,
    VENDOR,
)
from kcloud.runtimes.modelled import PRECISION_FIGURES
from kcloud.runtimes.plugin import (
    Runtime,
    UnsupportedDeviceError,
    installed_runtimes,
    installed_text,
    refusals,
    runtime_for,
)

Policy = Literal["spread", "binpack"]
POLICIES: tuple[str, ...] = ("spread", "binpack")
KINDS: tuple[str, ...] = ("cpu", "gpu", "npu", "pim")
#: Weight of the policy's memory term next to normalised perf/watt (which is in [0, 1]).
POLICY_WEIGHT = 0.01
#: Weight of one co-located replica of the same deployment under `spread` (dominates perf/watt).
SPREAD_WEIGHT = 10.0



@dataclass(frozen=True)
class DeviceStatus:
    """What the database knows about a device beyond what the inventory says."""

    present: bool = True
    healthy: bool = True
    drained: bool = False
    reason: str | None = None  # why unhealthy or drained


@dataclass(frozen=True)
class Reserved:
    """A reservation as placement sees it: devices, and whole nodes (every device on them, those
    that join later too), set aside for one tenant (`kcloud.farm.reservations`)."""

    id: int
    tenant: str
    devices: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlacementRequest:
    """Place `count` replicas of a deployment (of `total` it wants in all)."""

    deployment: str
    model: str
    count: int
    total: int | None = None
    memory_bytes: int | None = None
    flops_per_sample: float | None = None
    #: Rows of the model's largest batch: how far a modelled latency curve goes (None: 32).
    max_batch: int | None = None
    device_kinds: tuple[str, ...] = ("cpu", "gpu", "npu")
    platform: str = "onnxruntime"
    vendor: str | None = None
    chip: str | None = None
    precision: str | None = None
    node: str | None = None
    policy: Policy = "spread"
    slo_p99_ms: float | None = None
    slo_throughput_rps: float | None = None
    #: The deployment's tenant (None: the operator's), for reservations.
    tenant: str | None = None
    #: device uid -> why it is excluded (e.g. a replica failed to start there a moment ago).
    exclude: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def rps_per_replica(self) -> float | None:
        total = self.total if self.total is not None else self.count
        if self.slo_throughput_rps is None or total <= 0:
            return None
        return self.slo_throughput_rps / total


@dataclass(frozen=True)
class Candidate:
    """One device's part in one placement: chosen (how many replicas) or rejected, and why."""

    device_uid: str
    chosen: int
    eligible: bool
    reason: str
    score: float | None
    perf_per_watt: float | None
    perf_modelled: bool | None


class _Vocab:
    """Strings to small integer codes, for vectorised equality tests."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        return self.codes.setdefault(value, len(self.codes))

    def get(self, value: str) -> int:
        return self.codes.get(value, -1)


@dataclass
class _ClassFigures:
    """Per device class, for one (model, FLOPs, precision): figures from its `DeviceProfile`."""

    ppw: np.ndarray  # samples per joule; nan unknown
    sps: np.ndarray  # samples per second; nan unknown
    latency_ms: np.ndarray  # batch-1; nan unknown
    modelled: np.ndarray  # bool
    profiles: list[DeviceProfile]


@dataclass(frozen=True)
class _SpecDevice:
    """Stands in for a device when looking up a chip-level profile."""

    spec: ChipSpec
    uid: str = "\0chip"


class FarmView:
    """The farm as arrays: static facts per device, plus the memory and load already placed.

    Devices fall into *classes* (same chip, vendor, plugin and `emulated`): most checks and
    all profile figures are the same within a class, so they are worked out per class and
    gathered. That includes the runtimes' answer, which by `Runtime`'s contract depends only
    on those fields: it is asked once per class and platform, and kept.
    Build the view from the inventory's devices, the database's device status and reservations,
    and the replicas already placed (`add_replica`). The engine updates it as it places, so one
    view serves a sequence of decisions. `runtimes` defaults to the installed ones.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        status: Mapping[str, DeviceStatus] | None = None,
        profiles: ProfileBook | None = None,
        runtimes: Sequence[Runtime] | None = None,
        reservations: Sequence[Reserved] = (),
    ) -> None:
        status = status or {}
        self.devices = list(devices)
        self.uids = [d.uid for d in self.devices]
        self.index = {uid: i for i, uid in enumerate(self.uids)}
        if len(self.index) != len(self.uids):
            raise ValueError("duplicate device uids in the farm view")
        self.profiles = profiles or ProfileBook()
        n = len(self.devices)
        self.nodes = _Vocab()
        self.runtimes = tuple(installed_runtimes() if runtimes is None else runtimes)
        #: (class, platform) -> why no runtime serves it (None: one does).
        self._unserved: dict[tuple[int, str], str | None] = {}
        self._precision: dict[tuple[int, str, str], tuple[bool, str | None]] = {}
        classes: dict[tuple[str, str, str, bool], int] = {}
        #: One representative device per class.
        self.class_devices: list[Device] = []
        self.class_code = np.empty(n, np.int32)
        self.node_code = np.empty(n, np.int32)
        self.memory_total = np.full(n, np.nan)
        self.memory_used = np.zeros(n)
        self.load_used = np.zeros(n)
        self.replica_count = np.zeros(n, np.int32)
        self.unavailable = np.zeros(n, np.int8)  # 0, ABSENT, UNHEALTHY or DRAINED
        self.unavailable_reason: dict[int, str] = {}
        #: deployment -> {device index: replicas}
        self.placed: dict[str, Counter[int]] = {}
        for i, device in enumerate(self.devices):
            key = (device.spec.key, device.vendor, device.plugin, device.emulated)
            if key not in classes:
                classes[key] = len(self.class_devices)
                self.class_devices.append(device)
            self.class_code[i] = classes[key]
            self.node_code[i] = self.nodes.code(device.node)
            if device.memory_bytes is not None:
                self.memory_total[i] = float(device.memory_bytes)
            st = status.get(device.uid)
            if st is not None and not st.present:
                self.unavailable[i] = ABSENT
            elif not device.healthy or (st is not None and not st.healthy):
                self.unavailable[i] = UNHEALTHY
            elif st is not None and st.drained:
                self.unavailable[i] = DRAINED
            if self.unavailable[i] and st is not None and st.reason:
                self.unavailable_reason[i] = st.reason
        self.memory_known = ~np.isnan(self.memory_total)
        with np.errstate(divide="ignore"):
            self.inv_memory = np.where(self.memory_total > 0, 1.0 / self.memory_total, 0.0)
        self._figures: dict[tuple[str, float | None, str | None, int | None, int | None], _ClassFigures] = {}
        #: Devices with their own measured profile (they override their class's figures).
        self.measured_devices = sorted(
            self.index[p.device_uid] for p in self.profiles.measured if p.device_uid in self.index
        )
        #: tenant -> its reservations; per device, the code of the tenant it is reserved for (-1:
        #: none) and the reservation that covers it.
        self.reservations: dict[str, list[Reserved]] = {}
        self.tenants = _Vocab()
        self.reserved_for = np.full(n, -1, np.int32)
        self.reserved_by: dict[int, Reserved] = {}
        if reservations:
            self._reserve(reservations)

    def _reserve(self, reservations: Sequence[Reserved]) -> None:
        by_device = {uid: r for r in reservations for uid in r.devices}
        by_node = {node: r for r in reservations for node in r.nodes}
        for r in reservations:
            self.reservations.setdefault(r.tenant, []).append(r)
            self.tenants.code(r.tenant)
        for i, device in enumerate(self.devices):
            r = by_device.get(device.uid) or by_node.get(device.node)
            if r is not None:
                self.reserved_for[i] = self.tenants.get(r.tenant)
                self.reserved_by[i] = r

    def __len__(self) -> int:
        return len(self.devices)

    def add_replica(
        self, deployment: str, device_uid: str, memory_bytes: int | None, load_share: float | None
    ) -> None:
        """Account for a replica already placed (from the database)."""
        i = self.index.get(device_uid)
        if i is not None:  # a replica on a device that left the inventory holds nothing here
            self.commit(deployment, i, memory_bytes, load_share)

    def remove_replica(
        self, deployment: str, device_uid: str, memory_bytes: int | None, load_share: float | None
    ) -> None:
        i = self.index.get(device_uid)
        if i is None:
            return
        if memory_bytes:
            self.memory_used[i] = max(0.0, self.memory_used[i] - memory_bytes)
        if load_share is not None and math.isfinite(load_share):
            self.load_used[i] = max(0.0, self.load_used[i] - load_share)
        self.replica_count[i] = max(0, self.replica_count[i] - 1)
        counts = self.placed.get(deployment)
        if counts and counts[i] > 0:
            counts[i] -= 1
            if counts[i] == 0:
                del counts[i]

    def commit(self, deployment: str, i: int, memory_bytes: int | None, load_share: float | None) -> None:
        if memory_bytes:
            self.memory_used[i] += memory_bytes
        if load_share is not None and math.isfinite(load_share):
            self.load_used[i] += load_share
        self.replica_count[i] += 1
        self.placed.setdefault(deployment, Counter())[i] += 1

    def unserved(self, c: int, platform: str) -> str | None:
        """Why no runtime serves `platform` models on class `c` (None: one does); asked once."""
        key = (c, platform)
        if key not in self._unserved:
            why = refusals(self.class_devices[c], platform, self.runtimes)
            self._unserved[key] = None if why is None else installed_text(why)
        return self._unserved[key]

    def precision_answer(self, c: int, platform: str, precision: str) -> tuple[bool, str | None]:
        """Whether class `c` runs `platform` models at `precision`, and in words what it runs
        (the artifact target) or why not when its runtime is the obstacle; asked once per class.

        The chip decides first (its catalog figures; a CPU runs what its runtime compiles for
        it); then, where the runtime compiles artifacts per precision, the runtime too
        (onnxruntime-cuda has no INT8 target)."""
        key = (c, platform, precision)
        if key not in self._precision:
            answer: tuple[bool, str | None] = (_supports(self.class_devices[c].spec, precision), None)
            if answer[0]:
                try:
                    runtime = runtime_for(self.class_devices[c], platform, self.runtimes)
                except UnsupportedDeviceError:
                    runtime = None
                if runtime is not None and runtime.artifact_targets:
                    target = runtime.artifact_targets.get(precision, "")
                    if target == "":
                        answer = (False, f"{runtime.name} has no {precision} target "
                                          f"(it runs {', '.join(runtime.artifact_targets)})")
                    elif target is not None:
                        answer = (True, f"serves the {target} artifact "
                                        f"({runtime.name} runs {precision} as {target})")
            self._precision[key] = answer
        return self._precision[key]

    def figures(
        self,
        model: str,
        flops: float | None,
        precision: str | None,
        *,
        weight_bytes: int | None = None,
        max_batch: int | None = None,
    ) -> _ClassFigures:
        """Per-class profile figures for a model, computed once per (model, FLOPs, precision,
        weights, largest batch): the last two shape a modelled profile's roofline."""
        key = (model, flops, precision, weight_bytes, max_batch)
        figures = self._figures.get(key)
        if figures is None:
            profiles = [
                self.profiles.for_device(
                    _SpecDevice(d.spec),  # type: ignore[arg-type]
                    model, flops, precision, weight_bytes=weight_bytes, max_batch=max_batch,
                )
                for d in self.class_devices
            ]
            figures = _ClassFigures(
                ppw=_floats(p.perf_per_watt for p in profiles),
                sps=_floats(p.samples_per_second for p in profiles),
                latency_ms=_floats(None if (t := p.latency_s(1)) is None else t * 1000 for p in profiles),
                modelled=np.array([p.modelled for p in profiles], bool),
                profiles=profiles,
            )
            self._figures[key] = figures
        return figures

    def profile(
        self,
        i: int,
        model: str,
        flops: float | None,
        precision: str | None,
        *,
        weight_bytes: int | None = None,
        max_batch: int | None = None,
    ) -> DeviceProfile:
        """Device `i`'s profile: its own measurement, else its class's."""
        return self.profiles.for_device(self.devices[i], model, flops, precision, weight_bytes=weight_bytes,
                                        max_batch=max_batch)


def _supports(spec: ChipSpec, precision: str) -> bool:
    if precision == "fp32":
        return spec.kind in FP32_KINDS
    if spec.kind == "cpu":  # the catalog has no per-precision peaks for CPUs; their runtime decides
        return True
    return getattr(spec, PRECISION_FIGURES[precision]).known


def _floats(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], float)


def _class_verdict(view: FarmView, c: int, request: PlacementRequest, latency_ms: float) -> int:
    """The first class-level check a device of class `c` fails (ELIGIBLE if none)."""
    device = view.class_devices[c]
    spec = device.spec
    if spec.kind not in request.device_kinds:
        return KIND
    if view.unserved(c, request.platform) is not None:
        return RUNTIME
    if request.vendor is not None and device.vendor != request.vendor:
        return VENDOR
    if request.chip is not None and spec.key != request.chip:
        return CHIP
    if request.precision is not None and not view.precision_answer(c, request.platform, request.precision)[0]:
        return PRECISION
    if request.slo_p99_ms is not None and latency_ms > request.slo_p99_ms:  # nan (unknown) passes
        return LATENCY
    return ELIGIBLE


def _reservation_verdicts(view: FarmView, request: PlacementRequest, verdict: np.ndarray) -> None:
    """Right after availability: a device reserved for a tenant takes only that tenant's replicas,
    and a tenant that holds reservations is placed only on them."""
    own = view.tenants.get(request.tenant) if request.tenant is not None else -1
    available = view.unavailable == 0
    verdict[available & (view.reserved_for >= 0) & (view.reserved_for != own)] = RESERVED
    if own >= 0:
        verdict[available & (view.reserved_for < 0)] = UNRESERVED


@dataclass
class PlacementResult:
    """The decision for one request: a device index per replica placed, and every device's verdict."""

    request: PlacementRequest
    view: FarmView
    chosen: list[int]
    verdict: np.ndarray
    score: np.ndarray  # -inf where not eligible
    free_before: np.ndarray
    load_before: np.ndarray
    figures: _ClassFigures
    #: device index -> (ppw, sps, latency_ms, modelled) for devices with their own measurement
    overrides: dict[int, tuple[float, float, float, bool]]
    rejected: np.ndarray  # count per verdict code

    @property
    def placed(self) -> int:
        return len(self.chosen)

    @property
    def outcome(self) -> str:
        if self.placed == self.request.count:
            return "placed"
        return "partial" if self.placed else "pending"

    @property
    def device_uids(self) -> list[str]:
        return [self.view.uids[i] for i in self.chosen]

    def figures_of(self, i: int) -> tuple[float, float, float, bool]:
        hit = self.overrides.get(i)
        if hit is not None:
            return hit
        c = self.view.class_code[i]
        f = self.figures
        return float(f.ppw[c]), float(f.sps[c]), float(f.latency_ms[c]), bool(f.modelled[c])

    def load_share_of(self, i: int) -> float | None:
        """Share of device `i`'s throughput one replica's SLO traffic takes; `None` if unknown."""
        rps = self.request.rps_per_replica
        sps = self.figures_of(i)[1]
        if rps is None or math.isnan(sps) or sps <= 0:
            return None
        return rps / sps

    @property
    def reason(self) -> str:
        """One line: where the replicas went, or why (some) did not fit (`placement_reasons`)."""
        return summary(self)

    def candidates(self) -> list[Candidate]:
        """Every device with its verdict and reason: chosen first, then eligible by score."""
        counts = Counter(self.chosen)
        out = [self._candidate(i, counts.get(i, 0)) for i in range(len(self.view))]
        out.sort(key=lambda c: (-c.chosen, not c.eligible, -(c.score if c.score is not None else -math.inf)))
        return out

    def _candidate(self, i: int, chosen: int) -> Candidate:
        code = int(self.verdict[i])
        ppw, _, _, modelled = self.figures_of(i)
        known = not math.isnan(ppw)
        return Candidate(
            device_uid=self.view.uids[i],
            chosen=chosen,
            eligible=code == ELIGIBLE,
            reason=device_reason(self, i, code, chosen),
            score=round(float(self.score[i]), 6) if code == ELIGIBLE else None,
            perf_per_watt=ppw if known else None,
            perf_modelled=modelled if known else None,
        )

class PlacementEngine:
    """Places requests on a `FarmView`, updating it; see the module docstring for the rules."""

    def __init__(self, view: FarmView) -> None:
        self.view = view

    def place(self, request: PlacementRequest, *, commit: bool = True) -> PlacementResult:
        """Choose devices for `request.count` replicas. With `commit=False` the view is untouched."""
        view = self.view
        n = len(view)
        figures = view.figures(request.model, request.flops_per_sample, request.precision,
                               weight_bytes=request.memory_bytes, max_batch=request.max_batch)
        class_verdict = np.array(
            [_class_verdict(view, c, request, figures.latency_ms[c]) for c in range(len(view.class_devices))],
            np.int8,
        )
        cc = view.class_code
        verdict = np.where(
            view.unavailable != 0, view.unavailable, class_verdict[cc] if n else view.unavailable
        )
        if view.reservations:
            _reservation_verdicts(view, request, verdict)
        sps = figures.sps[cc] if request.rps_per_replica is not None else None
        overrides: dict[int, tuple[float, float, float, bool]] = {}
        for i in view.measured_devices:  # a device's own measurement overrides its class's figures
            p = view.profile(i, request.model, request.flops_per_sample, request.precision,
                             weight_bytes=request.memory_bytes, max_batch=request.max_batch)
            lat = p.latency_s(1)
            fig = (
                np.nan if p.perf_per_watt is None else p.perf_per_watt,
                np.nan if p.samples_per_second is None else p.samples_per_second,
                np.nan if lat is None else lat * 1000,
                p.modelled,
            )
            overrides[i] = fig
            if sps is not None:
                sps[i] = fig[1]
            if verdict[i] in (ELIGIBLE, LATENCY):
                slow = request.slo_p99_ms is not None and fig[2] > request.slo_p99_ms
                verdict[i] = LATENCY if slow else ELIGIBLE

        if request.node is not None:
            verdict[(verdict == ELIGIBLE) & (view.node_code != view.nodes.get(request.node))] = NODE
        for uid in request.exclude:
            i = view.index.get(uid)
            if i is not None and verdict[i] == ELIGIBLE:
                verdict[i] = EXCLUDED
        need = float(request.memory_bytes or 0)
        free_before = view.memory_total - view.memory_used
        if need:
            short = (verdict == ELIGIBLE) & ~(free_before >= need)
            verdict[short] = np.where(view.memory_known[short], MEMORY, MEMORY_UNKNOWN)
        rps = request.rps_per_replica
        load_share = None
        if rps is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                load_share = rps / sps  # nan where the device's throughput is unknown
            verdict[(verdict == ELIGIBLE) & (view.load_used + load_share > 1.0 + 1e-12)] = THROUGHPUT

        eligible = verdict == ELIGIBLE
        # Normalise perf/watt by the best class that passed the class checks (and measured devices):
        # worked out per class and gathered, which keeps this off the 10,000-element path.
        passing = [float(figures.ppw[c]) for c in range(len(class_verdict)) if class_verdict[c] == ELIGIBLE]
        known = [v for v in (*passing, *(f[0] for f in overrides.values())) if not math.isnan(v)]
        best = max(known) if known else math.nan
        if best > 0:
            ppw_norm = np.nan_to_num(figures.ppw / best, nan=0.0)[cc] if n else np.zeros(0)
            for i, fig in overrides.items():
                ppw_norm[i] = 0.0 if math.isnan(fig[0]) else fig[0] / best
        else:
            ppw_norm = np.zeros(n)
        fullness = (view.memory_used + need) * view.inv_memory
        spread = request.policy == "spread"
        score = ppw_norm + POLICY_WEIGHT * ((1.0 - fullness) if spread else fullness)
        same = view.placed.get(request.deployment)
        if spread and same:
            for i, count in same.items():
                score[i] -= SPREAD_WEIGHT * count
        score = np.where(eligible, score, -np.inf)
        working = score.copy()
        load_before = view.load_used.copy()

        memory_used = view.memory_used if commit else view.memory_used.copy()
        load_used = view.load_used if commit else view.load_used.copy()
        local_same: Counter[int] = Counter(same or {})
        chosen: list[int] = []
        for _ in range(request.count if n else 0):
            i = int(working.argmax())
            if working[i] == -np.inf:
                break
            chosen.append(i)
            share = None if load_share is None or math.isnan(load_share[i]) else float(load_share[i])
            if commit:
                view.commit(request.deployment, i, request.memory_bytes, share)
            else:
                memory_used[i] += need
                if share is not None:
                    load_used[i] += share
            local_same[i] += 1
            # Only device i changed: does another replica still fit there, and how does it score now?
            fits = not need or view.memory_total[i] - memory_used[i] >= need
            if share is not None:
                fits = fits and load_used[i] + share <= 1.0 + 1e-12
            if not fits:
                working[i] = -np.inf
                continue
            full = (memory_used[i] + need) * view.inv_memory[i]
            if spread:
                working[i] = ppw_norm[i] + POLICY_WEIGHT * (1.0 - full) - SPREAD_WEIGHT * local_same[i]
            else:
                working[i] = ppw_norm[i] + POLICY_WEIGHT * full
        return PlacementResult(
            request=request,
            view=view,
            chosen=chosen,
            verdict=verdict,
            score=score,
            free_before=free_before,
            load_before=load_before,
            figures=figures,
            overrides=overrides,
            rejected=np.bincount(verdict, minlength=N_CODES),
        )

    def regret(self, request: PlacementRequest) -> float:
        """Watts one replica would cost extra on its second-best device class instead of its best.

        `inf` when only one class with a known perf/watt can host it (place it before others
        take that class); 0 when none can, or its perf/watt is unknown everywhere.
        """
        view = self.view
        figures = view.figures(request.model, request.flops_per_sample, request.precision,
                               weight_bytes=request.memory_bytes, max_batch=request.max_batch)
        ppws = sorted(
            (
                float(figures.ppw[c])
                for c in range(len(view.class_devices))
                if not math.isnan(figures.ppw[c])
                and _class_verdict(view, c, request, figures.latency_ms[c]) == ELIGIBLE
            ),
            reverse=True,
        )
        if not ppws or ppws[0] <= 0:
            return 0.0
        if len(ppws) == 1:
            return math.inf
        return (request.rps_per_replica or 1.0) * (1.0 / ppws[1] - 1.0 / ppws[0])

    def place_many(self, requests: Sequence[PlacementRequest]) -> list[PlacementResult]:
        """Place a batch (e.g. every deployment at startup); results in request order.

        Deployments go in order of *regret*: the watts a replica would lose by being pushed off
        its best device class. Those with most to lose pick first, so the most efficient
        devices go to the deployments that gain most from them rather than to whichever came
        first (the regret heuristic for generalised assignment, Martello & Toth). Ties: larger
        memory first (first-fit decreasing). On small instances this stays within a few % of
        the MILP optimum (benchmarks/placement_scale.py).
        """
        keys = {k: (-self.regret(req), -(req.memory_bytes or 0), k) for k, req in enumerate(requests)}
        results: dict[int, PlacementResult] = {}
        for k in sorted(keys, key=keys.__getitem__):
            results[k] = self.place(requests[k])
        return [results[k] for k in range(len(requests))]
