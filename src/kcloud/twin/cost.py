"""$ per million inferences and J per inference, per instance of the price table; the "70 % cheaper" test.

For one model, each priced instance gets its accelerator's throughput from a measured device
profile where bench measured that chip serving the model, else from the catalog model
(`modelled_profile`: a roofline of the model's FLOPs over the chip's sourced peak and its weights
over the chip's memory bandwidth, × the chip's own efficiency factor or a what-if one, at the
model's largest batch), and the figures say which, and which factor from where. Then:

    $ per million inferences = $/h ÷ (count × samples/s × utilisation × 3600) × 10⁶
    J per inference          = busy watts ÷ samples/s          (energy while serving)
    energy $ per million     = J per inference × 10⁶ ÷ 3.6·10⁶ J/kWh × $/kWh

A figure whose input is unknown (no price, a chip the catalog lacks, no FLOPs for the model, no
TDP) is `None` with the reason, never a zero. Nothing here reads files or prints: the command
layer loads the table, the profiles and the model and shows the result.

The seeds say AWS's own chips give "compute up to 70 % cheaper than GPUs". `compare_npu_gpu`
puts the cheapest NPU row against the cheapest GPU row in $/M inferences and says whether the
figures reproduce that, fall short of it, refute it, or cannot decide, with every assumption.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kcloud.devices.catalog import Catalog, load_catalog
from kcloud.farm.profiles import DeviceProfile, ProfileBook, modelled_profile
from kcloud.runtimes.modelled import check_efficiency, efficiency_for
from kcloud.twin.prices import EnergyPrice, InstancePrice, PriceTable

#: The seeds' claim (MISSION.md): AWS's own chips, "compute up to 70 % cheaper than GPUs".
CLAIMED_SAVING = 0.70
JOULES_PER_KWH = 3.6e6

Label = Literal["measured", "modelled"]


@dataclass(frozen=True)
class InstanceCost:
    """The cost figures of one instance row for one model; `None` figures carry their reasons."""

    key: str
    provider: str
    instance_type: str
    accelerator: str | None
    accelerator_kind: str | None
    accelerator_count: int | None
    usd_per_hour: float | None
    #: Best throughput of one accelerator (samples/s), before the utilisation factor.
    samples_per_second: float | None
    usd_per_million: float | None
    joules_per_inference: float | None
    energy_usd_per_million: float | None
    #: "measured" or "modelled" for the throughput and power; `None` when no profile applies.
    label: Label | None
    basis: str
    price_source: str
    price_as_of: str
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The fraction of peak a modelled row's chip is modelled with, and where it came from.
    efficiency: float | None = None
    efficiency_basis: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Cheapest NPU row against cheapest GPU row, and what that says about the claim."""

    verdict: Literal["reproduced", "not reproduced", "refuted", "undecided"]
    summary: str
    npu: str | None
    gpu: str | None
    saving: float | None
    assumptions: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CostReport:
    model: str
    flops_per_sample: float | None
    precision: str | None
    utilisation: float
    #: The what-if factor for every modelled chip; `None`: each chip's own (see the rows).
    efficiency: float | None
    energy: EnergyPrice | None
    prices_origin: str
    rows: list[InstanceCost]
    comparison: Comparison

    def to_dict(self) -> dict[str, Any]:
        energy = None
        if self.energy is not None:
            energy = self.energy.model_dump(mode="json")
        return {
            "model": self.model,
            "flops_per_sample": self.flops_per_sample,
            "precision": self.precision,
            "utilisation": self.utilisation,
            "efficiency": self.efficiency,
            "energy_price": energy,
            "prices": self.prices_origin,
            "rows": [r.to_dict() for r in self.rows],
            "comparison": self.comparison.to_dict(),
        }


def measured_for_chip(
    book: ProfileBook, chip_key: str, model: str, precision: str | None
) -> DeviceProfile | None:
    """A measured profile of this chip serving this model: the asked precision first, then none given.

    Without a precision asked, any precision measured for the model will do (the label's basis
    names it), preferring one recorded without a precision.
    """
    found = [p for p in book.measured if p.chip_key == chip_key and p.model == model]
    for wanted in (precision, None):
        for profile in found:
            if profile.precision == wanted:
                return profile
    return found[0] if found and precision is None else None


def instance_cost(
    row: InstancePrice,
    table: PriceTable,
    *,
    model: str,
    flops_per_sample: float | None,
    precision: str | None,
    book: ProfileBook,
    catalog: Catalog,
    energy: EnergyPrice | None,
    utilisation: float = 1.0,
    efficiency: float | None = None,
    weight_bytes: int | None = None,
    max_batch: int | None = None,
) -> InstanceCost:
    """The figures of one instance row; each unknown one says why.

    `weight_bytes` and `max_batch` (the model's FP32 weights and largest batch) shape a modelled
    profile's roofline; `efficiency` is a what-if for every chip, `None` each chip's own factor.
    """
    unknown: list[str] = []
    notes: list[str] = []
    usd_per_hour, rate = table.to_usd(row.price_per_hour, row.currency)
    if usd_per_hour is None:
        unknown.append(f"no price: {(row.note or 'not given').rstrip('.')}")
    elif rate is not None:
        notes.append(
            f"{row.price_per_hour:g} {row.currency}/h at {rate.per_usd:g} {rate.currency}/USD ({rate.as_of})"
        )
    if row.accelerator_count is None:
        unknown.append("accelerator count not stated")

    profile: DeviceProfile | None = None
    kind: str | None = None
    factor: tuple[float, str] | None = None
    if row.accelerator is None:
        unknown.append(f"accelerator {row.accelerator_name or '?'} is not in the chip catalog")
    else:
        spec = catalog.get(row.accelerator)
        kind = spec.kind
        profile = measured_for_chip(book, spec.key, model, precision)
        if profile is None:
            profile = modelled_profile(spec, model, flops_per_sample, precision, efficiency=efficiency,
                                       weight_bytes=weight_bytes, max_batch=max_batch)
            factor = efficiency_for(spec, efficiency)
        elif kind == "cpu":
            notes.append(f"measured on {profile.device_uid or 'this host'}'s CPU, not on this instance's CPU")

    sps = profile.samples_per_second if profile is not None else None
    watts = profile.busy_watts if profile is not None else None
    if profile is not None and profile.unknown_reason:
        unknown.append(profile.unknown_reason)

    usd_per_million = None
    if usd_per_hour is not None and sps and row.accelerator_count:
        usd_per_million = usd_per_hour / (row.accelerator_count * sps * utilisation * 3600) * 1e6
    joules = watts / sps if watts and sps else None
    energy_usd = None
    if joules is not None:
        if energy is None or energy.price_per_kwh is None:
            unknown.append("no energy price")
        else:
            usd_per_kwh, _ = table.to_usd(energy.price_per_kwh, energy.currency)
            assert usd_per_kwh is not None
            energy_usd = joules * 1e6 / JOULES_PER_KWH * usd_per_kwh

    label: Label | None = None
    if profile is not None and (sps or watts):
        label = "modelled" if profile.modelled else "measured"
    return InstanceCost(
        key=row.key,
        provider=row.provider,
        instance_type=row.instance_type,
        accelerator=row.accelerator,
        accelerator_kind=kind,
        accelerator_count=row.accelerator_count,
        usd_per_hour=usd_per_hour,
        samples_per_second=sps,
        usd_per_million=usd_per_million,
        joules_per_inference=joules,
        energy_usd_per_million=energy_usd,
        label=label,
        basis=profile.basis if profile is not None else "no profile: accelerator not in the catalog",
        price_source=row.source,
        price_as_of=row.as_of.isoformat(),
        unknown=list(dict.fromkeys(unknown)),
        notes=notes,
        efficiency=factor[0] if factor and label == "modelled" else None,
        efficiency_basis=factor[1] if factor and label == "modelled" else None,
    )


def cost_report(
    table: PriceTable,
    *,
    model: str,
    flops_per_sample: float | None,
    precision: str | None = None,
    book: ProfileBook | None = None,
    catalog: Catalog | None = None,
    energy_key: str | None = None,
    utilisation: float = 1.0,
    efficiency: float | None = None,
    weight_bytes: int | None = None,
    max_batch: int | None = None,
) -> CostReport:
    """Every instance row's figures for one model, and the NPU-vs-GPU comparison.

    `utilisation` is the fraction of the hour the accelerators are busy serving (1.0: all of
    it); paid idle time raises $/M inferences, it does not change J per inference. `efficiency`
    is a what-if fraction of peak for every modelled chip; `None` models each with its own.
    """
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    check_efficiency(efficiency)
    book = book or ProfileBook()
    catalog = catalog or load_catalog()
    energy = table.energy_row(energy_key)
    rows = [
        instance_cost(
            row,
            table,
            model=model,
            flops_per_sample=flops_per_sample,
            precision=precision,
            book=book,
            catalog=catalog,
            energy=energy,
            utilisation=utilisation,
            efficiency=efficiency,
            weight_bytes=weight_bytes,
            max_batch=max_batch,
        )
        for row in table.instance
    ]
    comparison = compare_npu_gpu(rows, utilisation=utilisation)
    return CostReport(
        model=model,
        flops_per_sample=flops_per_sample,
        precision=precision,
        utilisation=utilisation,
        efficiency=efficiency,
        energy=energy,
        prices_origin=table.origin,
        rows=rows,
        comparison=comparison,
    )


def compare_npu_gpu(rows: list[InstanceCost], *, utilisation: float) -> Comparison:
    """The cheapest NPU row against the cheapest GPU row in $ per million inferences."""
    assumptions = [
        f"$/M inferences at {utilisation:.0%} utilisation (busy share of every paid hour), on-demand prices",
        "one model replica set per accelerator; host CPU, memory, network and storage are in the "
        "instance price and not costed apart",
    ]
    left_out = [
        f"{r.key}: {'; '.join(r.unknown) or 'no $/M figure'}"
        for r in rows
        if r.accelerator_kind in ("npu", "gpu") and r.usd_per_million is None
    ]
    unpriced = [r.key for r in rows if r.accelerator_kind is None]
    if left_out:
        assumptions.append("rows left out for an unknown figure: " + " | ".join(left_out))
    if unpriced:
        assumptions.append("rows with no catalog chip (kind unknown): " + ", ".join(unpriced))
    npu = _cheapest(rows, "npu")
    gpu = _cheapest(rows, "gpu")
    if npu is None or gpu is None:
        missing = " and ".join(k for k, r in (("NPU", npu), ("GPU", gpu)) if r is None)
        return Comparison(
            verdict="undecided",
            summary=f"cannot decide: no {missing} row has a known $/M inferences for this model",
            npu=npu.key if npu else None,
            gpu=gpu.key if gpu else None,
            saving=None,
            assumptions=assumptions,
        )
    assert npu.usd_per_million is not None and gpu.usd_per_million is not None
    for side, r in (("NPU", npu), ("GPU", gpu)):
        assumptions.append(
            f"{side}: {r.key} ({r.accelerator} x{r.accelerator_count}), {r.label}: {r.basis}; "
            f"price {r.price_source} as of {r.price_as_of}"
        )
    modelled = [(side, r) for side, r in (("NPU", npu), ("GPU", gpu)) if r.label == "modelled"]
    if modelled:
        factors = "; ".join(f"{side} {r.accelerator} with {_factor(r)}" for side, r in modelled)
        if len(modelled) == 1:
            assumptions.append(f"one side measured, the other modelled: the two figures are not of the "
                               f"same kind; {factors}")
        elif npu.efficiency == gpu.efficiency:
            assumptions.append(f"both sides modelled with the same factor: {factors}. Where both are "
                               "compute bound the ratio is then that of price per unit of catalog peak")
        else:
            assumptions.append(f"both sides modelled, each with its chip's own factor: {factors}")
    saving = 1 - npu.usd_per_million / gpu.usd_per_million
    figures = f"{npu.key} ${npu.usd_per_million:.4g}/M vs {gpu.key} ${gpu.usd_per_million:.4g}/M inferences"
    if saving >= CLAIMED_SAVING:
        verdict, words = "reproduced", f"NPU {saving:.0%} cheaper: reproduces 'up to 70 % cheaper'"
    elif saving > 0:
        verdict, words = (
            "not reproduced",
            f"NPU {saving:.0%} cheaper: short of the claimed 70 % (an 'up to' claim, so not a refutation)",
        )
    else:
        verdict, words = "refuted", f"NPU {-saving:.0%} dearer than the GPU: refutes 'cheaper than GPUs'"
    return Comparison(
        verdict=verdict,
        summary=f"{words} ({figures})",
        npu=npu.key,
        gpu=gpu.key,
        saving=saving,
        assumptions=assumptions,
    )


def _cheapest(rows: list[InstanceCost], kind: str) -> InstanceCost | None:
    priced = [r for r in rows if r.accelerator_kind == kind and r.usd_per_million is not None]
    return min(priced, key=lambda r: r.usd_per_million or 0.0, default=None)


def _factor(row: InstanceCost) -> str:
    """A modelled row's efficiency factor in words, with where it came from."""
    if row.efficiency is None:
        return "an unknown efficiency factor"
    return f"efficiency factor {round(row.efficiency, 2):g} ({row.efficiency_basis})"
