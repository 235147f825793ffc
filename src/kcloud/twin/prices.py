"""The price table: what an instance-hour, a kWh and a won cost, every figure with its source.

A cost figure is only as honest as its price, so the table refuses what it cannot trace: a row
without a `source` or an `as_of` date, a price of zero or below, an unknown field, a currency
with no exchange row, an accelerator key the chip catalog does not have. A price nobody
published is simply absent (TOML has no null) and the row then needs a `note` saying so: it
stays in the table, so the gap shows in every answer instead of a guessed number.

The bundled table is `kcloud/twin/data/prices.toml`; a user passes their own with `--prices`.
"""

from __future__ import annotations

import datetime
import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kcloud.devices.catalog import Catalog, load_catalog

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class PriceTableError(ValueError):
    """The price table is unusable; the message names the file, the row and the field."""


class _Sourced(BaseModel):
    model_config = _STRICT

    source: str = Field(min_length=1, description="URL or document title the figure was read from")
    as_of: datetime.date = Field(description="date the source states for the figure, or it was read")
    note: str | None = None


class InstancePrice(_Sourced):
    """One rentable instance: its accelerators and what an hour of it costs."""

    key: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    instance_type: str = Field(min_length=1)
    region: str = Field(min_length=1)
    #: A chip catalog key; `None` when the chip (or the card) is not in the catalog.
    accelerator: str | None = None
    accelerator_name: str | None = None
    accelerator_count: int | None = Field(default=None, ge=1)
    currency: str = Field(min_length=3, max_length=3)
    #: In `currency`; `None` when no source gave one (then `note` says so).
    price_per_hour: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _gap_explained(self) -> InstancePrice:
        if self.price_per_hour is None and not self.note:
            raise ValueError("a row without price_per_hour needs a note saying why it is unknown")
        return self


class EnergyPrice(_Sourced):
    """One electricity tariff, per kWh."""

    key: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    tariff: str = Field(min_length=1)
    region: str = Field(min_length=1)
    currency: str = Field(min_length=3, max_length=3)
    price_per_kwh: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _gap_explained(self) -> EnergyPrice:
        if self.price_per_kwh is None and not self.note:
            raise ValueError("a row without price_per_kwh needs a note saying why it is unknown")
        return self


class ExchangeRate(_Sourced):
    """How many units of `currency` one US dollar buys."""

    currency: str = Field(min_length=3, max_length=3)
    per_usd: float = Field(gt=0)


class PriceTable(BaseModel):
    """A whole price file, validated; prices converted to USD on request."""

    model_config = _STRICT

    instance: list[InstancePrice] = Field(default_factory=list)
    energy: list[EnergyPrice] = Field(default_factory=list)
    exchange: list[ExchangeRate] = Field(default_factory=list)
    #: Where the table was read from (set by the loader, for labels).
    origin: str = "<prices>"

    def to_usd(self, amount: float | None, currency: str) -> tuple[float | None, ExchangeRate | None]:
        """The amount in USD and the exchange row used (`None` for USD itself)."""
        if amount is None:
            return None, None
        if currency == "USD":
            return amount, None
        rate = next(r for r in self.exchange if r.currency == currency)  # checked at load
        return amount / rate.per_usd, rate

    def energy_row(self, key: str | None = None) -> EnergyPrice | None:
        """The tariff with this key, or the first one with a price. `KeyError` for an unknown key."""
        if key is None:
            return next((e for e in self.energy if e.price_per_kwh is not None), None)
        for row in self.energy:
            if row.key == key:
                return row
        known = ", ".join(e.key for e in self.energy) or "none"
        raise KeyError(f"no energy row {key!r} in {self.origin} (it has: {known})")


def bundled_price_path() -> Path:
    return Path(str(resources.files("kcloud.twin").joinpath("data/prices.toml")))


def load_price_table(path: Path | None = None, catalog: Catalog | None = None) -> PriceTable:
    """The bundled table, or the one at `path`. Raises `PriceTableError` naming what is wrong."""
    path = Path(path) if path is not None else bundled_price_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceTableError(f"{path}: cannot read the price table: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PriceTableError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return parse_price_table(text, str(path), catalog)


def parse_price_table(text: str, origin: str = "<prices>", catalog: Catalog | None = None) -> PriceTable:
    """Parse and check a price table; every error names `origin`, the row and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PriceTableError(f"{origin}: not valid TOML: {exc}") from None
    unknown = set(data) - {"instance", "energy", "exchange"}
    if unknown:
        raise PriceTableError(
            f"{origin}: unknown top-level keys {sorted(unknown)} "
            "(expected [[instance]], [[energy]], [[exchange]])"
        )
    sections: dict[str, list[Any]] = {}
    for section, model in (("instance", InstancePrice), ("energy", EnergyPrice), ("exchange", ExchangeRate)):
        rows = data.get(section, [])
        if not isinstance(rows, list):
            raise PriceTableError(f"{origin}: `{section}` must be an array of tables ([[{section}]])")
        sections[section] = [_row(model, raw, f"{origin}: {section}[{i}]") for i, raw in enumerate(rows)]
    table = PriceTable(**sections, origin=origin)
    _check_references(table, origin, catalog or load_catalog())
    return table


def _row(model: type[BaseModel], raw: object, where: str) -> Any:
    if not isinstance(raw, dict):
        raise PriceTableError(f"{where}: a row is a table of fields")
    label = raw.get("key") or raw.get("currency") or "?"
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise PriceTableError(f"{where} ({label}): {problems}") from None


def _problem(err: Any) -> str:
    field = ".".join(str(part) for part in err["loc"])
    message = err["msg"]
    if err["type"] == "missing":
        message = "missing (every row needs it)" if field in {"source", "as_of"} else "missing"
    elif err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{field}: {message}" if field else message


def _check_references(table: PriceTable, origin: str, catalog: Catalog) -> None:
    """Keys are unique, currencies convertible and accelerators real catalog rows."""
    for section in ("instance", "energy"):
        seen: set[str] = set()
        for i, row in enumerate(getattr(table, section)):
            if row.key in seen:
                raise PriceTableError(f"{origin}: {section}[{i}] ({row.key}): duplicate key")
            seen.add(row.key)
    rates = [r.currency for r in table.exchange]
    if len(rates) != len(set(rates)):
        raise PriceTableError(f"{origin}: more than one [[exchange]] row for a currency")
    for section in ("instance", "energy"):
        for i, row in enumerate(getattr(table, section)):
            if row.currency != "USD" and row.currency not in rates:
                raise PriceTableError(
                    f"{origin}: {section}[{i}] ({row.key}): currency {row.currency} has no [[exchange]] row"
                )
    for i, row in enumerate(table.instance):
        if row.accelerator is not None and row.accelerator not in catalog:
            close = difflib.get_close_matches(row.accelerator, catalog.keys(), n=3, cutoff=0.5)
            hint = (
                f" (did you mean: {', '.join(close)}?)" if close else " (leave it out for a chip not in it)"
            )
            raise PriceTableError(
                f"{origin}: instance[{i}] ({row.key}): accelerator {row.accelerator!r} is not a key of "
                f"the chip catalog{hint}"
            )
