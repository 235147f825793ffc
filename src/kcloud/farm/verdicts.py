"""Placement verdict codes: the first check a device fails for a request, and its label.

Codes are in filter order; 0 is eligible. Codes from KIND up to LATENCY depend only on a
device's class (chip, vendor, plugin, emulated), so the engine decides them once per class.
The engine (`kcloud.farm.placement`) computes them, `kcloud.farm.placement_reasons` words them.
"""

from __future__ import annotations

(
    ELIGIBLE,
    ABSENT,
    UNHEALTHY,
    DRAINED,
    RESERVED,
    UNRESERVED,
    KIND,
    RUNTIME,
    VENDOR,
    CHIP,
    PRECISION,
    LATENCY,
    NODE,
    EXCLUDED,
    MEMORY_UNKNOWN,
    MEMORY,
    THROUGHPUT,
) = range(17)
N_CODES = 17
VERDICT_LABELS = {
    ABSENT: "not present in the inventory",
    UNHEALTHY: "unhealthy",
    DRAINED: "drained",
    RESERVED: "reserved for another tenant",
    UNRESERVED: "outside the tenant's reservations",
    KIND: "device kind the model does not run on",
    RUNTIME: "no runtime for the model's platform",
    VENDOR: "vendor constraint",
    CHIP: "chip constraint",
    PRECISION: "precision constraint (the chip or its runtime does not run it)",
    LATENCY: "batch-1 latency above the SLO p99",
    NODE: "node constraint",
    EXCLUDED: "recently failed to start this deployment",
    MEMORY_UNKNOWN: "memory unknown",
    MEMORY: "not enough free memory",
    THROUGHPUT: "not enough throughput left for the SLO",
}
