"""The measured profile a bench run leaves behind, for placement (and the farm's twin).

A performance run in-process on a real device measures, batch by batch, how long the device's
replica took for how many rows. Those service times against batch size, per model and precision,
are what placement ranks devices by when they are measured (`kcloud.farm.profiles`: a measured
profile wins over the catalog's modelled one), so the run writes them to the profiles directory,
named by device, model and precision, with the run it came from. Power comes with them when the
run's energy counter was real: the run's average power at its measured utilisation.

Emulated devices get none: the host computed their work, and their figures are modelled anyway.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from kcloud.bench.inprocess import InProcessBackend
from kcloud.farm.profiles import MeasuredProfileFile, measured_profile_path, save_measured_profile
from kcloud.models.repository import ModelEntry
from kcloud.models.targets import TARGETS

#: Most (rows, seconds) points a profile keeps: one per power-of-two bucket of batch rows.
MOST_POINTS = 8
#: Fewest timed batches from which a run states how much batch times vary.
FEWEST_FOR_SPREAD = 20


def batch_points(batches: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Median service time per power-of-two bucket of batch rows: (median rows, median seconds)."""
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for rows, seconds in batches:
        if rows >= 1 and seconds > 0:
            buckets[int(math.log2(rows))].append((rows, seconds))
    points = []
    for bucket in sorted(buckets)[-MOST_POINTS:]:
        members = buckets[bucket]
        rows = sorted(r for r, _ in members)[len(members) // 2]
        seconds = sorted(s for _, s in members)[len(members) // 2]
        points.append((rows, seconds))
    return points


def service_spread(batches: list[tuple[int, float]]) -> float:
    """How much batch times vary: the standard deviation of log(seconds) around the median of
    each batch's power-of-two bucket of rows, pooled over the buckets (0.0 with too few batches
    to say). The twin draws each simulated batch's time with this spread (`service_sigma`)."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for rows, seconds in batches:
        if rows >= 1 and seconds > 0:
            buckets[int(math.log2(rows))].append(math.log(seconds))
    deviations = []
    for logs in buckets.values():
        median = sorted(logs)[len(logs) // 2]
        deviations += [x - median for x in logs]
    if len(deviations) < FEWEST_FOR_SPREAD:
        return 0.0
    mean = sum(deviations) / len(deviations)
    return math.sqrt(sum((d - mean) ** 2 for d in deviations) / (len(deviations) - 1))


def _merged(points: list[tuple[int, float]], path: Path, replicas: int) -> list[tuple[int, float]]:
    """`points`, with the earlier profile's points of batch sizes this run did not time (a
    SingleStream run times batch 1 only: it keeps what an Offline run measured of larger batches).
    An earlier profile of another replica layout is replaced whole."""
    try:
        earlier = MeasuredProfileFile.model_validate_json(path.read_text("utf-8"))
    except (OSError, ValueError):
        return points
    if earlier.replicas != replicas:
        return points
    covered = {int(math.log2(rows)) for rows, _ in points}
    kept = [(rows, s) for rows, s in earlier.latency_by_batch if int(math.log2(rows)) not in covered]
    return sorted([*points, *kept])[-MOST_POINTS:]


def write_profile(
    result: dict[str, Any], backend: InProcessBackend, entry: ModelEntry, run_name: str
) -> dict[str, Any]:
    """Write the run's measured profile of the backend's device; what `result["profile"]` says."""
    device = backend.device
    if device.emulated:
        return {"written": False, "reason": "emulated device: the host computed its work"}
    batches = backend.batches()
    points = batch_points(batches)
    if not points:
        return {"written": False, "reason": "no batch was timed"}
    energy = result.get("energy") or {}
    power: list[tuple[float, float]] = []
    watts, window = energy.get("average_power_watts"), energy.get("window_s")
    if watts is not None and window and not energy.get("modelled"):
        utilisation = min(1.0, backend.busy_seconds() / (window * backend.replicas))
        power = [(round(utilisation, 4), float(watts))]
    precision = TARGETS[entry.artifact.target].precision if entry.artifact else None
    points = _merged(points, measured_profile_path(device.uid, entry.name, precision), backend.replicas)
    profile = MeasuredProfileFile(
        chip_key=device.spec.key,
        device_uid=device.uid,
        model=entry.name,
        precision=precision,
        latency_by_batch=points,
        power_by_util=power,
        source=f"bench run {run_name}, {result['scenario']}, started {result['started_at']}",
        replicas=backend.replicas,
        service_sigma=round(min(3.0, service_spread(batches)), 4),
    )
    path = save_measured_profile(profile)
    return {
        "written": True,
        "path": str(path),
        "latency_by_batch": points,
        "power_by_util": power,
        "replicas": backend.replicas,
        "service_sigma": profile.service_sigma,
        "reason": None if power else (energy.get("reason") or "no real energy counter over the run"),
    }
