"""The words of placement: every reason `kcloud placement explain`, events and the API show.

The engine (`kcloud.farm.placement`) decides with verdict codes (`kcloud.farm.verdicts`); this
module turns a decision into prose, in one place, so that a reason reads the same wherever it
is shown and the engine's arithmetic stays free of wording. `summary` is the one line for a
placement; `device_reason` is one device's verdict; `pipeline_summary` is a pipeline
replica's line (`kcloud.farm.stages`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

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
    VERDICT_LABELS,
)

if TYPE_CHECKING:  # for annotations only: the engine imports this module
    from kcloud.farm.placement import PlacementResult
    from kcloud.farm.stages import PipelinePlacement

GIB = float(2**30)
MIB = float(2**20)


def size_text(value: float | None) -> str:
    """Bytes as GiB or MiB for a reason; `unknown` for None or NaN."""
    if value is None or math.isnan(value):
        return "unknown"
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    return f"{value / MIB:.1f} MiB"


def summary(result: PlacementResult) -> str:
    """One line: where the replicas went, or why (some) did not fit anywhere."""
    req = result.request
    counts = Counter(result.chosen)
    uids = result.view.uids
    where = ", ".join(f"{uids[i]}×{n}" if n > 1 else uids[i] for i, n in counts.items())
    eligible = int(np.count_nonzero(result.verdict == ELIGIBLE))
    inside = _inside(result)
    if result.outcome == "placed":
        if req.count == 0:
            return "nothing to place"
        how = f"({req.policy}, by perf/watt){inside}; {eligible} eligible"
        return f"placed {result.placed} replica(s) on {where} {how}"
    why = nothing_fits(result)
    if result.outcome == "partial":
        return f"placed {result.placed} of {req.count} on {where}; no room for the rest{inside}: {why}"
    return f"no device fits {req.count} replica(s) of {req.model}{inside}: {why}"


def _inside(result: PlacementResult) -> str:
    """` in tenant T's reservation(s) 1, 4` for a tenant that holds reservations, else ``."""
    tenant = result.request.tenant
    held = result.view.reservations.get(tenant) if tenant is not None else None
    if not held:
        return ""
    return f" in tenant {tenant}'s reservation(s) {', '.join(str(r.id) for r in held)}"

def nothing_fits(result: PlacementResult) -> str:
    parts = [
        f"{int(result.rejected[code])} {VERDICT_LABELS[code]}{_detail(result, code)}"
        for code in sorted(range(1, N_CODES), key=lambda c: -result.rejected[c])
        if result.rejected[code]
    ]
    eligible = int(np.count_nonzero(result.verdict == ELIGIBLE))
    if eligible:
        parts.append(f"{eligible} eligible device(s) had no room left for more")
    return "; ".join(parts) if parts else "the farm has no devices"

def _detail(result: PlacementResult, code: int) -> str:
    req = result.request
    mask = result.verdict == code
    if code == VENDOR:
        return f" (wants vendor {req.vendor!r})"
    if code == CHIP:
        return f" (wants chip {req.chip!r})"
    if code == NODE:
        return f" (wants node {req.node!r})"
    if code == PRECISION:
        return f" (wants {req.precision})"
    if code == KIND:
        return f" (model runs on {', '.join(req.device_kinds)})"
    if code == RUNTIME:
        return f" (needs a {req.platform} runtime)"
    if code == MEMORY and req.memory_bytes:
        largest = float(np.nanmax(result.free_before[mask]))
        return f" (needs {size_text(req.memory_bytes)}; largest free {size_text(largest)})"
    if code == LATENCY and req.slo_p99_ms is not None:
        best = min(result.figures_of(int(i))[2] for i in np.flatnonzero(mask)[:1000])
        return f" (p99 target {req.slo_p99_ms:g} ms; fastest {best:.3g} ms)"
    if code == THROUGHPUT and req.rps_per_replica is not None:
        best = max(
            result.figures_of(int(i))[1] * max(0.0, 1 - result.load_before[i])
            for i in np.flatnonzero(mask)[:1000]
        )
        return f" ({req.rps_per_replica:.4g} rps per replica; most left on one device {best:.4g}/s)"
    return ""


def _ppw_text(result: PlacementResult, i: int) -> str:
    ppw, _, _, modelled = result.figures_of(i)
    if math.isnan(ppw):
        return "perf/watt unknown"
    return f"perf/watt {ppw:.4g} samples/J ({'modelled' if modelled else 'measured'})"

def device_reason(result: PlacementResult, i: int, code: int, chosen: int) -> str:
    req, view = result.request, result.view
    device = view.devices[i]
    _, sps, latency_ms, modelled = result.figures_of(i)
    tag = "modelled" if modelled else "measured"
    if code == ELIGIBLE:
        free = f"{size_text(result.free_before[i])} free" if view.memory_known[i] else "memory unknown"
        head = f"chosen for {chosen} replica(s)" if chosen else "eligible, not chosen"
        if i in view.reserved_by:
            head += f" (in reservation {view.reserved_by[i].id} of tenant {req.tenant})"
        tail = "; better-scoring devices took the replicas" if not chosen and result.chosen else ""
        if req.slo_p99_ms is not None and math.isnan(latency_ms):
            tail += "; latency unknown: SLO p99 not checked"
        if req.precision is not None:
            serves = view.precision_answer(int(view.class_code[i]), req.platform, req.precision)[1]
            tail += f"; {serves}" if serves else ""
        return f"{head}: {_ppw_text(result, i)}, {free}, score {result.score[i]:.4g}{tail}"
    label = VERDICT_LABELS[code]
    if code in (ABSENT, UNHEALTHY, DRAINED):
        why = view.unavailable_reason.get(i)
        return f"rejected: {label}" + (f" ({why})" if why else "")
    if code == RESERVED:
        r = view.reserved_by[i]
        # A tenant's placement reasons name no other tenant (its owner reads them).
        whose = "another tenant" if req.tenant is not None else f"tenant {r.tenant} (reservation {r.id})"
        return f"rejected: reserved for {whose}"
    if code == UNRESERVED:
        held = _inside(result).removeprefix(" in ")
        return f"rejected: outside {held} (its deployments are placed only there)"
    if code == KIND:
        return f"rejected: a {device.spec.kind}; the model runs on {', '.join(req.device_kinds)}"
    if code == RUNTIME:
        why = view.unserved(int(view.class_code[i]), req.platform)
        return (
            f"rejected: no runtime serves {req.platform} models on a {device.vendor} "
            f"{device.spec.kind}{' (emulated)' if device.emulated else ''}; {why}"
        )
    if code == VENDOR:
        return f"rejected: vendor {device.vendor}, the deployment wants {req.vendor}"
    if code == CHIP:
        return f"rejected: chip {device.spec.key}, the deployment wants {req.chip}"
    if code == NODE:
        return f"rejected: on node {device.node}, the deployment wants {req.node}"
    if code == PRECISION:
        why = view.precision_answer(int(view.class_code[i]), req.platform, req.precision or "")[1]
        if why:
            return f"rejected: {why}"
        if req.precision == "fp32":
            return f"rejected: FP32 runs on CPUs and GPUs; this is a {device.spec.kind}"
        return (
            f"rejected: the catalog has no {(req.precision or '').upper()} figure for {device.spec.key} "
            f"(support unknown, not assumed)"
        )
    if code == EXCLUDED:
        return f"rejected: {req.exclude.get(view.uids[i], label)}"
    if code == MEMORY_UNKNOWN:
        return f"rejected: device memory unknown, cannot check that {size_text(req.memory_bytes)} fits"
    if code == MEMORY:
        return (
            f"rejected: needs {size_text(req.memory_bytes)}, {size_text(result.free_before[i])} free "
            f"of {size_text(view.memory_total[i])}"
        )
    if code == LATENCY:
        return f"rejected: batch-1 latency {latency_ms:.3g} ms ({tag}) > p99 target {req.slo_p99_ms:g} ms"
    if code == THROUGHPUT:
        share = result.load_share_of(i) or 0.0
        return (
            f"rejected: a replica's {req.rps_per_replica:.4g} rps needs {share:.1%} of its "
            f"{sps:.4g} samples/s ({tag}); {max(0.0, 1 - result.load_before[i]):.1%} left"
        )
    return f"rejected: {label}"


def pipeline_summary(placement: PipelinePlacement) -> str:
    """One line for a pipeline deployment's placement: each replica's stage devices, or the
    stage that found no device and why."""
    what = f"{placement.plan.stages}-stage pipeline (balance {placement.plan.balance:.2f})"
    where = "; ".join(" → ".join(placement.stage_devices(k)) for k in range(placement.placed))
    if placement.outcome == "placed":
        if not placement.request.count:
            return "nothing to place"
        return f"placed {placement.placed} {what} replica(s): {where}"
    stage = len(placement.short) - 1
    why = f"no device for stage {stage} ({placement.short[-1].reason})"
    if placement.outcome == "partial":
        return f"placed {placement.placed} of {placement.request.count} {what} replica(s): {where}; {why}"
    return f"no room for a {what} replica of {placement.request.model}: {why}"


#: What a stage's reason gains when it shares a device with an earlier stage of its replica.
SHARED_STAGE = "; shares the device with an earlier stage of its replica (no other device has room)"
