"""Quotas per tenant, and the check made when a deployment is created or scaled.

A quota caps what a tenant may *hold* (replicas, devices in total and per vendor, PF of compute
from the catalog) and how fast it may *call* (requests per second and burst per key, requests in
flight for the whole tenant, and LLM tokens per minute and per UTC day for all its keys together,
enforced by `kcloud.tenancy.tokens`). `None` means "no cap".

The holding check is pure: it compares what the tenant would hold after the change with its
quota and names the first limit crossed. The caller (the control plane) computes what the tenant
would hold from its placement, so the rule lives here and the placement stays there.

PF of compute is counted from the catalog's figure for each device, as `kcloud.farm.capacity` reads
it (FP16/BF16 PFLOPS by default, or INT8 POPS, chosen by `pf_figure`);
a device whose figure is unknown cannot be counted against a PF cap, so a tenant with a PF cap
is refused that device rather than having it counted as zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from kcloud.farm.bounds import BIGINTEGER_MAX, INTEGER_MAX, StorableBody

#: The catalog figures a PF cap may count, as `kcloud.farm.capacity` defines them.
PfFigure = Literal["fp16_bf16_pflops", "int8_pops"]
PF_UNITS: dict[str, str] = {"fp16_bf16_pflops": "FP16/BF16 PFLOPS", "int8_pops": "INT8 POPS"}


#: A count stored in an INTEGER column: at most `INTEGER_MAX` (PostgreSQL's), refused with 400 beyond.
_Count = Annotated[int, Field(ge=0, le=INTEGER_MAX)]


#: A token limit (per minute or per day, of a key or a tenant): a whole number of tokens, at least 1
#: (a key that may use none is revoked instead), stored in a BIGINT column. Strict: `1.5`, `"10"` and
#: `true` are refused rather than read as a number.
TokenLimit = Annotated[int, Field(ge=1, le=BIGINTEGER_MAX, strict=True)]


class QuotaLimits(StorableBody):
    """What the operator sets for a tenant; every field optional (None = no cap).

    Counts are bounded by their column's type (`kcloud.farm.bounds`), so a cap too large to store is
    a 400 rather than a database error; no cap at all is `null`.
    """

    model_config = ConfigDict(extra="forbid")

    max_replicas: int | None = Field(default=None, ge=0, le=INTEGER_MAX)
    max_devices: int | None = Field(default=None, ge=0, le=INTEGER_MAX)
    max_devices_per_vendor: dict[str, _Count] = Field(
        default_factory=dict,
        description="vendor -> most devices of that vendor; a vendor not named is uncapped",
    )
    max_pf: float | None = Field(default=None, ge=0, description="PF of compute, from catalog figures")
    pf_figure: PfFigure = Field(
        default="fp16_bf16_pflops", description="which catalog figure max_pf counts (kcloud.farm.capacity)"
    )
    requests_per_second: float | None = Field(default=None, gt=0, description="per key; token-bucket rate")
    burst: int | None = Field(
        default=None, ge=1, le=INTEGER_MAX, description="per key; bucket size (default: the rate)"
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=INTEGER_MAX, description="requests in flight for the tenant"
    )
    tokens_per_minute: TokenLimit | None = Field(
        default=None, description="LLM tokens (prompt + completion) per minute, all its keys together"
    )
    tokens_per_day: TokenLimit | None = Field(
        default=None, description="LLM tokens (prompt + completion) per UTC day, all its keys together"
    )


@dataclass(frozen=True)
class HeldDevice:
    """One device a tenant's replicas occupy; `pf` is its catalog compute in PF, None if unknown."""

    uid: str
    vendor: str
    pf: float | None


@dataclass
class Holding:
    """What a tenant holds (or would hold): replicas, and the distinct devices they sit on."""

    replicas: int = 0
    devices: dict[str, HeldDevice] = field(default_factory=dict)

    def add(self, replicas: int, devices: list[HeldDevice]) -> None:
        self.replicas += replicas
        for device in devices:
            self.devices[device.uid] = device

    def per_vendor(self) -> Counter[str]:
        return Counter(d.vendor for d in self.devices.values())

    def pf(self) -> tuple[float, list[str]]:
        """Known PF summed, and the devices whose PF is unknown."""
        known = sum(d.pf for d in self.devices.values() if d.pf is not None)
        unknown = sorted(d.uid for d in self.devices.values() if d.pf is None)
        return known, unknown


@dataclass(frozen=True)
class QuotaViolation:
    """The first limit a change would cross, as a sentence for the client and fields for tools."""

    limit: str
    allowed: float
    requested: float
    reason: str


def check_holding(tenant: str, limits: QuotaLimits, after: Holding) -> QuotaViolation | None:
    """None if `after` (everything the tenant would hold after the change) fits its quota."""
    if limits.max_replicas is not None and after.replicas > limits.max_replicas:
        return QuotaViolation(
            "max_replicas", limits.max_replicas, after.replicas,
            f"tenant {tenant!r} would hold {after.replicas} replicas; its quota allows {limits.max_replicas}",
        )
    total = len(after.devices)
    if limits.max_devices is not None and total > limits.max_devices:
        return QuotaViolation(
            "max_devices", limits.max_devices, total,
            f"tenant {tenant!r} would hold {total} devices; its quota allows {limits.max_devices}",
        )
    for vendor, count in sorted(after.per_vendor().items()):
        cap = limits.max_devices_per_vendor.get(vendor)
        if cap is not None and count > cap:
            return QuotaViolation(
                f"max_devices_per_vendor.{vendor}", cap, count,
                f"tenant {tenant!r} would hold {count} {vendor} devices; its quota allows {cap}",
            )
    if limits.max_pf is not None:
        unit = PF_UNITS[limits.pf_figure]
        known, unknown = after.pf()
        if unknown:
            return QuotaViolation(
                "max_pf", limits.max_pf, known,
                f"tenant {tenant!r} has a cap of {limits.max_pf:g} {unit}, but the catalog has no "
                f"{unit} figure for {', '.join(unknown)}, so its use cannot be counted",
            )
        if known > limits.max_pf + 1e-12:
            return QuotaViolation(
                "max_pf", limits.max_pf, known,
                f"tenant {tenant!r} would hold {known:.6g} {unit} of compute; its quota allows "
                f"{limits.max_pf:g} {unit}",
            )
    return None
