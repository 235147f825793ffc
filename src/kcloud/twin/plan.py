"""`kcloud twin plan`: how many devices a load needs under an SLO, what they cost, what a farm carries.

Two questions, both answered by running the twin (`kcloud.twin.sim`) rather than by a formula,
so that batching, queueing and the router are in the answer:

- **sizing**: for a model, an offered rate (Poisson) and an SLO (p99, and the rate served), the
  fewest devices of each priced chip that meet it, and what they cost an hour (instances are
  rented whole: `accelerator_count` per instance); the cheapest is the plan, with its margin
  (how far p99 stays under the target, how much capacity is left). A chip without a price is
  still sized, and says that it cannot be costed;
- **capacity**: for a farm and a deployment on every device it may use, the highest rate at
  which the SLO still holds, and the farm's power at that rate.

An SLO "holds" when p99 of the answered requests is at most the target and at most
`MAX_REFUSED` of the requests are refused (429, 504) or lost. Every figure is modelled.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kcloud.devices.catalog import Catalog
from kcloud.farm.placement import FarmView, PlacementEngine
from kcloud.farm.profiles import ProfileBook
from kcloud.models.repository import ModelRepository
from kcloud.twin.cost import measured_for_chip
from kcloud.twin.prices import PriceTable
from kcloud.twin.run import run
from kcloud.twin.scenario import (
    PlacedFarm,
    ScenarioError,
    ScenarioFile,
    build_devices,
    place,
    placement_request,
    unknown_speed,
)

#: The share of requests that may be refused (shed, timed out, lost) while the SLO holds.
MAX_REFUSED = 0.001
#: Each trial simulates about this many requests (a stable p99), over at most MAX_TRIAL_S seconds.
TRIAL_REQUESTS = 200_000
MAX_TRIAL_S = 30.0


@dataclass(frozen=True)
class Slo:
    p99_ms: float
    rate: float  # requests/s offered (and to be served)


@dataclass
class Trial:
    """One simulated configuration and how it fared against the SLO."""

    devices: int
    rate: float
    p99_ms: float | None
    refused: float  # share of requests not answered
    mean_power_w: float | None  # of the devices whose power is known
    devices_without_power: int = 0
    capacity_rps: float = 0.0  # what its replicas serve with full batches (modelled)

    def holds(self, slo: Slo) -> bool:
        return self.p99_ms is not None and self.p99_ms <= slo.p99_ms and self.refused <= MAX_REFUSED


@dataclass
class ChipPlan:
    chip: str
    instance: str | None
    devices: int | None  # None: no count up to the limit meets the SLO
    instances: int | None
    usd_per_hour: float | None
    p99_ms: float | None
    p99_margin: float | None  # 1 - p99 / target
    capacity_margin: float | None  # modelled capacity of the devices / offered rate - 1
    mean_power_w: float | None
    why: str | None = None  # why it has no count or no cost
    profile: str = "modelled"


@dataclass
class SizingPlan:
    model: str
    slo: Slo
    chips: list[ChipPlan] = field(default_factory=list)

    @property
    def cheapest(self) -> ChipPlan | None:
        costed = [c for c in self.chips if c.devices is not None and c.usd_per_hour is not None]
        return min(costed, key=lambda c: c.usd_per_hour or math.inf, default=None)

    def to_dict(self) -> dict[str, Any]:
        cheapest = self.cheapest
        return {
            "modelled": True,
            "model": self.model,
            "slo": asdict(self.slo),
            "max_refused": MAX_REFUSED,
            "chips": [asdict(c) for c in self.chips],
            "cheapest": None if cheapest is None else cheapest.chip,
        }


def _scenario(
    farm: Path,
    model: str,
    replicas: int,
    rate: float,
    constraints: dict[str, Any],
    *,
    duration_s: float = 1.0,
    seed: int = 1,
) -> ScenarioFile:
    """One deployment of `model` on `farm` under a Poisson load: what each trial and probe simulates."""
    return ScenarioFile.model_validate(
        {
            "twin": {"farm": [str(farm)], "duration_s": duration_s, "seed": seed},
            "deployments": [
                {
                    "name": "plan",
                    "model": model,
                    "replicas": replicas,
                    **constraints,
                    "load": {"kind": "poisson", "rate": rate},
                }
            ],
        }
    )


def _trial(
    repository: ModelRepository,
    profiles: ProfileBook,
    farm: Path,
    model: str,
    replicas: int,
    rate: float,
    constraints: dict[str, Any],
    seed: int,
) -> Trial:
    scenario = _scenario(farm, model, replicas, rate, constraints, duration_s=trial_seconds(rate), seed=seed)
    placed = place(scenario, repository, profiles)
    result = run(placed)
    (deployment,) = result["deployments"]
    refused = 1 - deployment["answered"] / deployment["requests"] if deployment["requests"] else 0.0
    energy = result["energy"]
    return Trial(
        replicas,
        rate,
        deployment["latency_ms"]["p99"],
        refused,
        energy["mean_power_w"],
        len(energy["devices_without_power"]),
        _capacity(placed),
    )


def _capacity(placed: PlacedFarm) -> float:
    """Requests/s the deployment's replicas serve with full batches: the most it can carry."""
    return sum(r.times.drain_rows_per_s for r in placed.deployments[0].replicas)


def trial_seconds(rate: float) -> float:
    return min(MAX_TRIAL_S, TRIAL_REQUESTS / rate)


def _chip_farm(directory: Path, chip: str, devices: int) -> Path:
    path = directory / f"farm-{chip}-{devices}.toml"
    per_node = 8  # a usual server
    counts = [min(per_node, devices - k * per_node) for k in range(math.ceil(devices / per_node))]
    nodes = "".join(
        f'\n[[nodes]]\nname = "n{k}"\ndevices = [{{ chip = "{chip}", count = {n} }}]\n'
        for k, n in enumerate(counts)
    )
    path.write_text(f'[farm]\nname = "plan-{chip}"\n{nodes}', "utf-8")
    return path


def size_for_chip(
    repository: ModelRepository,
    profiles: ProfileBook,
    model: str,
    chip: str,
    slo: Slo,
    *,
    max_devices: int,
    seed: int = 1,
) -> tuple[Trial | None, Trial | None, str | None]:
    """For one chip: the smallest count that holds, the best trial seen, and why none can be tried."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)

        def trial(n: int) -> Trial:
            return _trial(
                repository, profiles, _chip_farm(directory, chip, n), model, n, slo.rate, {"chip": chip}, seed
            )

        try:
            first = trial(1)
        except ScenarioError as exc:
            return None, None, str(exc)
        low = max(1, math.ceil(slo.rate / first.capacity_rps)) if first.capacity_rps else 1
        best = first
        tried: dict[int, Trial] = {1: first}
        n = min(low, max_devices)
        while True:  # double until it holds or the limit is reached
            t = tried.get(n) or trial(n)
            tried[n] = t
            if t.p99_ms is not None and (best.p99_ms is None or t.p99_ms < best.p99_ms):
                best = t
            if t.holds(slo) or n >= max_devices:
                break
            n = min(max_devices, n * 2)
        if not tried[n].holds(slo):
            return None, best, None
        lo = max([k for k, t in tried.items() if k < n and not t.holds(slo)], default=0)
        hi = n
        while hi - lo > 1:  # the smallest count that holds, between the last failure and the first success
            mid = (lo + hi) // 2
            tried[mid] = tried.get(mid) or trial(mid)
            if tried[mid].holds(slo):
                hi = mid
            else:
                lo = mid
        return tried[hi], best, None


def size(
    repository: ModelRepository,
    profiles: ProfileBook,
    catalog: Catalog,
    prices: PriceTable,
    model: str,
    slo: Slo,
    *,
    chips: list[str] | None = None,
    max_devices: int = 256,
) -> SizingPlan:
    """The fewest devices of each candidate chip that meet `slo`, and their hourly cost."""
    repository.get(model)  # an unknown model is refused once, not once per chip
    rows = {}
    for row in prices.instance:
        if row.accelerator and row.price_per_hour and row.accelerator_count:
            usd, _ = prices.to_usd(row.price_per_hour, row.currency)
            per_device = usd / row.accelerator_count  # type: ignore[operator]
            if (
                row.accelerator not in rows
                or per_device < rows[row.accelerator][1] / rows[row.accelerator][0].accelerator_count
            ):
                rows[row.accelerator] = (row, usd)
    candidates = chips or sorted(rows)
    plan = SizingPlan(model, slo)
    for chip in candidates:
        catalog.get(chip)  # an unknown chip is refused here, naming the catalog's keys
        found, best, why = size_for_chip(repository, profiles, model, chip, slo, max_devices=max_devices)
        row, usd = rows.get(chip, (None, None))
        if found is None:
            reason = why or (
                f"no count up to {max_devices} devices meets p99 <= {slo.p99_ms:g} ms at "
                f"{slo.rate:g}/s; best p99 {_ms(best.p99_ms if best else None)} with "
                f"{best.devices if best else '-'} device(s)"
            )
            plan.chips.append(
                ChipPlan(
                    chip,
                    row.key if row else None,
                    None,
                    None,
                    None,
                    best.p99_ms if best else None,
                    None,
                    None,
                    None,
                    reason,
                )
            )
            continue
        instances = math.ceil(found.devices / row.accelerator_count) if row else None  # type: ignore[operator]
        plan.chips.append(
            ChipPlan(
                chip,
                row.key if row else None,
                found.devices,
                instances,
                None if row is None else round(instances * usd, 4),  # type: ignore[operator]
                found.p99_ms,
                round(1 - found.p99_ms / slo.p99_ms, 4),  # type: ignore[operator]
                round(found.capacity_rps / slo.rate - 1, 4) if found.capacity_rps else None,
                None if found.devices_without_power else found.mean_power_w,
                None if row else "no priced instance of this chip in the price table",
                profile=_profile_label(profiles, model, chip),
            )
        )
    return plan


def _profile_label(profiles: ProfileBook, model: str, chip: str) -> str:
    return "modelled" if measured_for_chip(profiles, chip, model, None) is None else "measured"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


@dataclass
class FarmCapacity:
    """The highest rate the farm's deployment carries within the SLO, and its power there."""

    farm: str
    model: str
    p99_ms: float
    devices: int
    rate: float | None  # None: not even the lowest rate tried holds
    p99_at_rate_ms: float | None
    mean_power_w: float | None  # the farm's, at that rate, over the devices whose power is known
    devices_without_power: int = 0
    why: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"modelled": True, "max_refused": MAX_REFUSED, **asdict(self)}


def farm_capacity(
    repository: ModelRepository,
    profiles: ProfileBook,
    farm: Path,
    model: str,
    p99_ms: float,
    constraints: dict[str, Any],
    *,
    tolerance: float = 0.01,
) -> FarmCapacity:
    """Binary search on the offered rate, with one replica on every device the deployment may use."""
    repository.get(model)
    devices = _eligible_devices(repository, profiles, farm, model, constraints)
    ceiling = _capacity(place(_scenario(farm, model, devices, 1.0, constraints), repository, profiles))
    slo = Slo(p99_ms, 0.0)
    lowest = _trial(repository, profiles, farm, model, devices, max(1.0, ceiling * 0.01), constraints, 1)
    if not lowest.holds(slo):
        return FarmCapacity(
            farm.stem,
            model,
            p99_ms,
            devices,
            None,
            lowest.p99_ms,
            None,
            f"even {lowest.rate:.3g}/s misses p99 <= {p99_ms:g} ms (p99 {_ms(lowest.p99_ms)})",
        )
    best, low, high = lowest, lowest.rate, ceiling
    while high - low > tolerance * high:
        mid = (low + high) / 2
        t = _trial(repository, profiles, farm, model, devices, mid, constraints, 1)
        if t.holds(slo):
            best, low = t, mid
        else:
            high = mid
    return FarmCapacity(
        farm.stem,
        model,
        p99_ms,
        devices,
        round(best.rate, 1),
        best.p99_ms,
        best.mean_power_w,
        best.devices_without_power,
    )


def _eligible_devices(
    repository: ModelRepository, profiles: ProfileBook, farm: Path, model: str, constraints: dict[str, Any]
) -> int:
    """How many devices the deployment may use: placement's answer for one replica on each."""
    scenario = _scenario(farm, model, 1, 1.0, constraints)
    devices, _ = build_devices(scenario.twin)
    engine = PlacementEngine(FarmView(devices, profiles=profiles))
    spec = scenario.deployments[0]
    entry = repository.get(model)
    view = engine.view
    result = engine.place(
        placement_request(spec, entry, len(devices), unknown_speed(view, entry, spec.precision)), commit=False
    )
    distinct = len(set(result.chosen))
    if not distinct:
        raise ScenarioError(f"no device of {farm.name} can serve {model}: {result.reason}")
    return distinct
