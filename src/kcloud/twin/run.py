"""`kcloud twin run`: simulate a placed farm under its loads and sum up what happened.

Every figure in the result is modelled (the result says so at the top and per device says
whether the service times and power behind it were measured by bench or modelled from the
catalog). Per deployment: throughput, latency percentiles of answered requests, shed (429),
timed-out (504), refused for want of a replica (503) and failed (502) requests, and per-second
timelines. Per device: utilisation and energy. Power follows the device's measured curve where
bench measured one, else the emulated devices' model (`kcloud.devices.plugins.emulated`: idle at
a fixed share of TDP, rising linearly with utilisation to TDP); a chip without a TDP in the
catalog has unknown power, and the farm's energy then says how many devices it leaves out.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from kcloud import __version__
from kcloud.devices.device import Device
from kcloud.devices.plugins.emulated import DEFAULT_IDLE_FRACTION
from kcloud.farm.profiles import DeviceProfile
from kcloud.twin.load import arrivals
from kcloud.twin.scenario import PlacedDeployment, PlacedFarm
from kcloud.twin.sim import (
    COMPILED,
    FAILED,
    NO_REPLICA,
    OK,
    SHED,
    TIMED_OUT,
    Outcome,
    Pauses,
    admit,
    simulate,
)

PERCENTILES = (50, 90, 99, 99.9)


@dataclass(frozen=True)
class PowerCurve:
    """Watts at a utilisation, and where that comes from."""

    points: tuple[tuple[float, float], ...]
    measured: bool
    basis: str

    def watts(self, utilisation: np.ndarray) -> np.ndarray:
        u = np.clip(utilisation, 0.0, 1.0)
        xs, ys = zip(*self.points, strict=True)
        return np.interp(u, xs, ys)


def power_curve(device: Device, profile: DeviceProfile | None) -> PowerCurve | None:
    """A measured curve (two points or more) where bench left one; else idle→TDP from the catalog."""
    if profile is not None and not profile.modelled and len(profile.power_by_util) >= 2:
        return PowerCurve(tuple(profile.power_by_util), True, profile.basis)
    tdp = device.spec.tdp_watts
    if not tdp.known or tdp.value <= 0:
        return None
    idle = DEFAULT_IDLE_FRACTION * tdp.value
    return PowerCurve(
        ((0.0, idle), (1.0, float(tdp.value))),
        False,
        f"modelled: idle {DEFAULT_IDLE_FRACTION:.0%} of TDP {tdp.value:g} W, linear to TDP",
    )


def run(farm: PlacedFarm) -> dict[str, Any]:
    """Simulate every deployment and return the result (a JSON-ready dict)."""
    settings = farm.scenario.twin
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()
    horizon = settings.duration_s
    bins = int(np.ceil(horizon / settings.bin_s))  # the timelines' bins (duration_s > 0: at least one)
    busy_by_device: dict[str, np.ndarray] = {}
    curve_profile: dict[str, DeviceProfile] = {}
    deployments = []
    requests = 0
    loads = [arrivals(d.spec.load, horizon, rng) for d in farm.deployments]
    pauses = (
        None
        if settings.pauses is None
        else Pauses.drawn(settings.pauses.every_s, settings.pauses.mean_ms / 1000, horizon, rng)
    )
    ready = _through_gateway(
        [times for times, _ in loads], settings.gateway_ms / 1000, pauses, settings.most_open_per_client
    )
    for index, (deployment, (times, rows), (leaves, refused)) in enumerate(
        zip(farm.deployments, loads, ready, strict=True)
    ):
        requests += len(times)
        admitted = ~refused
        outcome = simulate(
            times[admitted],
            rows[admitted],
            [r.times for r in deployment.replicas],
            deployment.batching,
            deadline_s=None if deployment.spec.deadline_ms is None else deployment.spec.deadline_ms / 1000,
            overhead_s=settings.overhead_ms / 1000,
            ready_s=leaves[admitted],
            bin_s=settings.bin_s,
            horizon_s=horizon,
            seed=settings.seed + index,
        )
        outcome = _with_refused(outcome, refused, leaves)
        if pauses is not None:  # an answer ready in a stall leaves at its end
            outcome.end_s = pauses.defer(outcome.end_s)
        deployments.append(_deployment_result(deployment, times, rows, outcome, horizon, bins, refused))
        for k, replica in enumerate(deployment.replicas):
            uid = replica.device.uid
            busy = busy_by_device.setdefault(uid, np.zeros(bins))
            busy += outcome.busy_s[k, :bins]
            curve_profile.setdefault(uid, replica.profile)
    wall = time.perf_counter() - started
    devices, farm_energy = _devices(farm, busy_by_device, curve_profile, settings.bin_s, horizon, bins)
    answered = sum(d["answered"] for d in deployments)
    farm_energy["joules_per_answered_request"] = (
        round(farm_energy["energy_j"] / answered, 6) if answered and farm_energy["complete"] else None
    )
    return {
        "kind": "kcloud-twin-run",
        "kcloud_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "modelled": True,
        "basis": "discrete-event simulation of kcloud's router and batchers (kcloud.twin.sim) over "
        "service times from measured or catalog-modelled device profiles",
        "farm": farm.farm_name,
        "duration_s": horizon,
        "seed": settings.seed,
        "overhead_ms": settings.overhead_ms,
        "gateway_ms": settings.gateway_ms,
        "pauses": None if settings.pauses is None else settings.pauses.model_dump(),
        "most_open_per_client": settings.most_open_per_client,
        "simulation": {
            "requests": requests,
            "wall_s": round(wall, 3),
            "compiled": COMPILED,
            "speed_x_real_time": round(horizon / wall, 1) if wall > 0 else None,
        },
        "events": farm.events,
        "warnings": [w for d in farm.deployments for w in d.warnings],
        "deployments": deployments,
        "devices": devices,
        "energy": farm_energy,
        "timeline_s": [round((b + 0.5) * settings.bin_s, 6) for b in range(bins)],
    }


def _through_gateway(
    arrivals_by_deployment: list[np.ndarray],
    seconds_per_request: float,
    pauses: Pauses | None,
    most_open: int | None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """When each deployment's requests leave the one gateway they all pass through, in arrival
    order, and which of them it refused (`kcloud.twin.sim.admit`)."""
    if seconds_per_request <= 0 and pauses is None and most_open is None:  # nothing to wait for
        return [(a, np.zeros(len(a), np.bool_)) for a in arrivals_by_deployment]
    merged = np.concatenate(arrivals_by_deployment)
    order = np.argsort(merged, kind="stable")
    leaves, refused = np.empty_like(merged), np.empty(len(merged), np.bool_)
    leaves[order], refused[order] = admit(merged[order], seconds_per_request, pauses, most_open)
    # a deployment's requests keep their order through a FIFO, so its share still ascends
    cuts = np.cumsum([len(a) for a in arrivals_by_deployment])[:-1]
    return list(zip(np.split(leaves, cuts), np.split(refused, cuts), strict=True))


def _with_refused(outcome: Outcome, refused: np.ndarray, leaves: np.ndarray) -> Outcome:
    """The admitted requests' outcome, widened to every request: the refused ones answered 503
    when they arrived (`leaves` of a refused request), by no replica."""
    if not refused.any():
        return outcome
    admitted = ~refused
    status = np.full(len(refused), NO_REPLICA, np.int64)
    end = leaves.copy()
    replica = np.full(len(refused), -1, np.int64)
    status[admitted], end[admitted], replica[admitted] = outcome.status, outcome.end_s, outcome.replica
    return dataclasses.replace(outcome, status=status, end_s=end, replica=replica)


def latency_percentiles(latency_s: np.ndarray) -> dict[str, float | None]:
    """Latency percentiles, mean and max in ms (3 decimals) of latencies in s; None for none."""
    if len(latency_s) == 0:
        return {f"p{q:g}": None for q in PERCENTILES} | {"mean": None, "max": None}
    values = np.percentile(latency_s, PERCENTILES) * 1000
    found: dict[str, float | None] = {
        f"p{q:g}": round(float(v), 3) for q, v in zip(PERCENTILES, values, strict=True)
    }
    return found | {
        "mean": round(float(latency_s.mean() * 1000), 3),
        "max": round(float(latency_s.max() * 1000), 3),
    }


def _deployment_result(
    deployment: PlacedDeployment,
    arrival: np.ndarray,
    rows: np.ndarray,
    outcome: Outcome,
    horizon: float,
    bins: int,
    refused: np.ndarray,
) -> dict[str, Any]:
    status = outcome.status
    ok = status == OK
    latency = outcome.end_s[ok] - arrival[ok]
    # answers after the horizon count in its last bin
    which = np.minimum((outcome.end_s[ok] // outcome.bin_s).astype(np.int64), bins - 1)
    per_bin = np.bincount(which, minlength=bins)
    p99_by_bin = _p99_by_bin(which, latency, bins)
    counts = {
        "answered": int(ok.sum()),
        "shed_429": int((status == SHED).sum()),
        "timed_out_504": int((status == TIMED_OUT).sum()),
        "no_replica_503": int((status == NO_REPLICA).sum() - refused.sum()),
        "over_client_cap_503": int(refused.sum()),
        "failed_502": int((status == FAILED).sum()),
        "unfinished": int((status == 0).sum()),
    }
    spec = deployment.spec
    replicas = []
    for k, replica in enumerate(deployment.replicas):
        batches = int(outcome.batches[k])
        replicas.append(
            {
                "device": replica.device.uid,
                "chip": replica.device.spec.key,
                "emulated": replica.device.emulated,
                "profile": "modelled" if replica.profile.modelled else "measured",
                "basis": replica.profile.basis,
                "serves_from_s": replica.times.up_at,
                "serves_until_s": None if replica.times.down_at == np.inf else replica.times.down_at,
                "batch_rows": replica.times.batch_rows,
                "service_ms_batch_1": round(float(replica.times.service_s[1]) * 1000, 4),
                "service_sigma": replica.times.service_sigma,
                "batches": batches,
                "rows": int(outcome.rows[k]),
                "mean_batch_rows": round(int(outcome.rows[k]) / batches, 2) if batches else None,
                "utilisation": round(float(outcome.busy_s[k].sum()) / horizon, 4),
            }
        )
    return {
        "name": spec.name,
        "model": deployment.entry.name,
        "replicas": replicas,
        "placement": deployment.reason,
        "load": spec.load.model_dump(mode="json", exclude_none=True),
        "offered_rps": round(len(arrival) / horizon, 3),
        "offered_rows_per_s": round(int(rows.sum()) / horizon, 3),
        "requests": len(arrival),
        **counts,
        "throughput_rps": round(counts["answered"] / horizon, 3),
        "latency_ms": latency_percentiles(latency),
        "deadline_ms": spec.deadline_ms,
        "timeline": {"answered_per_s": (per_bin / outcome.bin_s).round(3).tolist(), "p99_ms": p99_by_bin},
    }


def _p99_by_bin(which: np.ndarray, latency: np.ndarray, bins: int) -> list[float | None]:
    """Each time bin's p99 of the requests answered in it (None for a bin without answers)."""
    order = np.argsort(which, kind="stable")
    grouped, values = which[order], latency[order]
    edges = np.searchsorted(grouped, np.arange(bins + 1))
    found: list[float | None] = []
    for b in range(bins):
        chunk = values[edges[b] : edges[b + 1]]
        found.append(round(float(np.percentile(chunk, 99)) * 1000, 3) if len(chunk) else None)
    return found


def _devices(
    farm: PlacedFarm,
    busy_by_device: dict[str, np.ndarray],
    profiles: dict[str, DeviceProfile],
    bin_s: float,
    horizon: float,
    bins: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    energy_total = 0.0
    unknown: list[str] = []
    widths = np.full(bins, bin_s)
    if bins:
        widths[-1] = horizon - bin_s * (bins - 1)
    for device in farm.devices:
        busy = busy_by_device.get(device.uid)
        utilisation = np.zeros(bins) if busy is None else np.minimum(busy / widths, 1.0)
        curve = power_curve(device, profiles.get(device.uid))
        energy = None
        if curve is None:
            unknown.append(device.uid)
        else:
            energy = float((curve.watts(utilisation) * widths).sum())
            energy_total += energy
        rows.append(
            {
                "uid": device.uid,
                "node": device.node,
                "chip": device.spec.key,
                "kind": device.spec.kind,
                "emulated": device.emulated,
                "replicas": busy is not None,
                "utilisation": round(float((utilisation * widths).sum() / horizon), 4),
                "energy_j": None if energy is None else round(energy, 3),
                "mean_power_w": None if energy is None else round(energy / horizon, 3),
                "power": None if curve is None else ("measured" if curve.measured else "modelled"),
                "power_basis": curve.basis if curve else "unknown: the catalog has no TDP for this chip",
                "utilisation_timeline": utilisation.round(4).tolist() if busy is not None else None,
            }
        )
    return rows, {
        "energy_j": round(energy_total, 3),
        "mean_power_w": round(energy_total / horizon, 3),
        "devices_without_power": unknown,
        "complete": not unknown,
        "note": None
        if not unknown
        else (
            f"{len(unknown)} device(s) have no TDP in the catalog: the energy leaves them out (a lower bound)"
        ),
    }
