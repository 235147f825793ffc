"""The chip catalog: sourced `ChipSpec` rows read from `catalog.toml`.

The data lives in a TOML file next to this module so that a figure, its source and its
confidence sit on one reviewable line. This module only parses, validates and looks rows up:
it never fills a gap. A device whose name no row matches gets a per-vendor *unknown* spec with
every figure `None`, so an unrecognised card is shown as unknown rather than as someone else's.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kcloud.devices.spec import ChipSpec, DeviceKind, Figure

FIGURE_FIELDS: tuple[str, ...] = (
    "int8_tops",
    "fp16_tflops",
    "bf16_tflops",
    "fp8_tflops",
    "memory_gib",
    "memory_bandwidth_gbps",
    "tdp_watts",
    "mlperf_resnet50_offline_sps",
)
_ROW_FIELDS = {"key", "vendor", "chip", "card", "kind", "host_link", "host_link_source", "notes", "match"}
_FIGURE_KEYS = {"value", "source", "confidence", "note"}

#: The kind a vendor's unrecognised device is assumed to be (for the synthesized unknown spec).
_VENDOR_KIND: dict[str, DeviceKind] = {"nvidia": "gpu", "cpu": "cpu", "samsung-skhynix": "pim"}


class CatalogError(ValueError):
    """The catalog file itself is malformed: a packaging bug, not a user's mistake."""


class UnknownChipError(KeyError):
    """No catalog row has this key. The message lists the closest keys."""

    def __init__(self, key: str, suggestions: list[str]) -> None:
        self.key = key
        self.suggestions = suggestions
        hint = f" (did you mean: {', '.join(suggestions)}?)" if suggestions else ""
        super().__init__(f"unknown chip {key!r}{hint}")

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


@dataclass(frozen=True)
class _Row:
    spec: ChipSpec
    patterns: tuple[re.Pattern[str], ...]


class Catalog:
    """All rows of one catalog file, by key, in file order."""

    def __init__(self, rows: list[_Row], source: str) -> None:
        self._rows = {row.spec.key: row for row in rows}
        self.source = source

    def get(self, key: str) -> ChipSpec:
        """The row with this key; `UnknownChipError` (a `KeyError`) with suggestions if none."""
        row = self._rows.get(key)
        if row is None:
            raise UnknownChipError(key, difflib.get_close_matches(key, self._rows, n=3, cutoff=0.5))
        return row.spec

    def all(self) -> list[ChipSpec]:
        return [row.spec for row in self._rows.values()]

    def keys(self) -> list[str]:
        return list(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[ChipSpec]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self._rows)

    def match_spec(self, vendor: str, name: str) -> ChipSpec:
        """The row for a device name as a vendor tool reports it (NVML, rbln-smi, furiosa-smi).

        Falls back to `unknown_spec(vendor, name)`: all figures unknown, never a neighbour's.
        """
        cleaned = name.strip()
        for row in self._rows.values():
            if row.spec.vendor == vendor and any(p.fullmatch(cleaned) for p in row.patterns):
                return row.spec
        return unknown_spec(vendor, cleaned)


def unknown_spec(vendor: str, name: str) -> ChipSpec:
    """A spec for a device the catalog does not know: its name kept, every figure unknown."""
    return ChipSpec(
        key=f"{vendor}-unknown",
        vendor=vendor,
        chip=name or "unknown",
        kind=_VENDOR_KIND.get(vendor, "npu"),
        notes=f"device name {name!r} matches no catalog row; all figures unknown",
    )


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    """Parse and validate catalog TOML. Raises `CatalogError` naming the row and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: TOML syntax error: {exc}") from exc
    unexpected = set(data) - {"chip"}
    if unexpected:
        raise CatalogError(f"{source}: unknown top-level keys {sorted(unexpected)}")
    rows: list[_Row] = []
    seen: set[str] = set()
    for index, raw in enumerate(data.get("chip", [])):
        where = f"{source}: chip[{index}] ({raw.get('key', '?')})"
        row = _parse_row(raw, where)
        if row.spec.key in seen:
            raise CatalogError(f"{where}: duplicate key")
        seen.add(row.spec.key)
        rows.append(row)
    if not rows:
        raise CatalogError(f"{source}: no [[chip]] rows")
    return Catalog(rows, source)


def _parse_row(raw: dict[str, Any], where: str) -> _Row:
    unknown = set(raw) - _ROW_FIELDS - set(FIGURE_FIELDS)
    if unknown:
        raise CatalogError(f"{where}: unknown fields {sorted(unknown)}")
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k in _ROW_FIELDS and k != "match"}
    for name in FIGURE_FIELDS:
        if name not in raw:
            continue
        figure = raw[name]
        if not isinstance(figure, dict) or set(figure) - _FIGURE_KEYS:
            raise CatalogError(f"{where}.{name}: a figure is a table of {sorted(_FIGURE_KEYS)}")
        try:
            fields[name] = Figure(**figure)
        except ValidationError as exc:
            raise CatalogError(f"{where}.{name}: {_first_error(exc)}") from exc
    try:
        spec = ChipSpec(**fields)
    except ValidationError as exc:
        raise CatalogError(f"{where}: {_first_error(exc)}") from exc
    try:
        patterns = tuple(re.compile(p, re.IGNORECASE) for p in raw.get("match", []))
    except re.error as exc:
        raise CatalogError(f"{where}.match: bad regular expression: {exc}") from exc
    return _Row(spec, patterns)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


@cache
def _default_catalog() -> Catalog:
    text = resources.files("kcloud.devices").joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text, "kcloud/devices/catalog.toml")


def load_catalog(path: Path | None = None) -> Catalog:
    """The packaged catalog (parsed once per process), or the one at `path`."""
    if path is None:
        return _default_catalog()
    return parse_catalog(Path(path).read_text(encoding="utf-8"), str(path))


def match_spec(vendor: str, name: str) -> ChipSpec:
    """`load_catalog().match_spec(vendor, name)`."""
    return load_catalog().match_spec(vendor, name)
