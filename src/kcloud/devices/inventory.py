"""Farm files and the `Inventory`: every device kcloud knows, real and emulated, and how to read it.

A farm file (TOML) lists nodes, then the devices on each:

    [farm]
    name = "k-cloud-phase1"

    [[nodes]]
    name = "gwangju-1"
    site = "Gwangju AI cluster"
    sector = "public"
    cloud = "KT Cloud"
    devices = [
      { chip = "furiosa-rngd", count = 8 },
      { chip = "rebellions-atom-ca22", ids = ["atom0", "atom1"] },
    ]

Every mistake is refused before anything starts, with a `FarmFileError` that names the file,
the key path (or line and column for a syntax error) and what is wrong.
"""

from __future__ import annotations

import logging
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kcloud.devices.catalog import UnknownChipError, load_catalog
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin, load_plugins
from kcloud.devices.plugins.emulated import DeclaredDevice, EmulatedPlugin

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class FarmFileError(ValueError):
    """A farm file was refused: the message names the file, where in it, and what is wrong."""

    def __init__(self, path: str | Path, where: str, what: str) -> None:
        self.path = str(path)
        self.where = where
        self.what = what
        super().__init__(f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}")


# ------------------------------------------------------------------ file schema


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'"
        )
    return value


class DeviceEntry(BaseModel):
    """`{ chip = "...", count = N }`, or with explicit `id` / `ids`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chip: str
    count: int | None = None
    id: str | None = None
    ids: list[str] | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("count", mode="before")
    @classmethod
    def _whole_positive(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"count must be a whole number of devices, got {value!r}")
        if value < 1:
            raise ValueError(f"count must be at least 1, got {value}")
        return value

    @field_validator("chip")
    @classmethod
    def _known_chip(cls, value: str) -> str:
        try:
            load_catalog().get(value)
        except UnknownChipError as exc:  # pydantic only reports ValueErrors; keep the suggestions
            raise ValueError(str(exc)) from None
        return value

    @field_validator("id")
    @classmethod
    def _id_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value, "device id")

    @field_validator("ids")
    @classmethod
    def _ids_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("ids must list at least one device id")
            for item in value:
                _check_name(item, "device id")
        return value

    @model_validator(mode="after")
    def _one_way_to_count(self) -> DeviceEntry:
        if self.id is not None and self.ids is not None:
            raise ValueError("give either id or ids, not both")
        explicit = [self.id] if self.id is not None else self.ids
        if explicit is not None and self.count is not None and self.count != len(explicit):
            raise ValueError(f"count = {self.count} but {len(explicit)} id(s) are listed")
        return self

    def device_ids(self, prefix_counts: dict[str, int]) -> list[str]:
        """Explicit ids, or generated ones (`rngd0`, `atom-ca22-0`) numbered per node and prefix."""
        if self.id is not None:
            return [self.id]
        if self.ids is not None:
            return list(self.ids)
        prefix = self.chip.split("-", 1)[1] if "-" in self.chip else self.chip
        joiner = "" if prefix[-1].isalpha() else "-"
        start = prefix_counts.get(prefix, 0)
        prefix_counts[prefix] = start + (self.count or 1)
        return [f"{prefix}{joiner}{i}" for i in range(start, start + (self.count or 1))]


class NodeEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    site: str | None = None
    sector: str | None = None
    cloud: str | None = None
    region: str | None = None
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    devices: list[DeviceEntry] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        return _check_name(value, "node name")


class FarmSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None


class FarmFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    farm: FarmSection | None = None
    nodes: list[NodeEntry] = Field(default_factory=list)


# ------------------------------------------------------------------ parsing


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """`('nodes', 0, 'devices', 1, 'count')` → `nodes[0] (gwangju-1).devices[1].count`."""
    out = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _describe(err: dict[str, Any], fields_of: dict[str, list[str]]) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key (allowed: {', '.join(fields_of.get(_owner(err['loc']), []))})"
    ctx_error = (err.get("ctx") or {}).get("error")
    if ctx_error is not None:  # our own validators' messages, without pydantic's prefix
        return str(ctx_error)
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def _owner(loc: tuple[Any, ...]) -> str:
    """Which table a location is inside: 'farm', 'nodes' or 'devices'."""
    names = [p for p in loc[:-1] if isinstance(p, str)]
    return names[-1] if names else ""


_FIELDS_OF = {
    "": list(FarmFile.model_fields),
    "farm": list(FarmSection.model_fields),
    "nodes": list(NodeEntry.model_fields),
    "devices": list(DeviceEntry.model_fields),
}


@dataclass(frozen=True)
class Node:
    """A node of the farm: a farm-file node, or this machine."""

    name: str
    site: str | None = None
    sector: str | None = None
    cloud: str | None = None
    region: str | None = None
    description: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    local: bool = False
    source: str | None = None  # the farm file that declared it

    def attributes(self) -> dict[str, str]:
        """Node facts as strings, for device attributes and labels."""
        facts = {"site": self.site, "sector": self.sector, "cloud": self.cloud, "region": self.region}
        return {k: v for k, v in facts.items() if v} | self.labels


@dataclass(frozen=True)
class Farm:
    """What farm files declare: farm names, nodes and their emulated devices."""

    names: tuple[str, ...]
    nodes: tuple[Node, ...]
    devices: tuple[DeclaredDevice, ...]


def read_farm_file(path: str | Path) -> tuple[FarmFile, dict[str, Any]]:
    """Parse and validate one farm file; `FarmFileError` on any mistake."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise FarmFileError(path, "", "file not found") from None
    except OSError as exc:
        raise FarmFileError(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FarmFileError(path, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", message)
        what = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        place = f"line {where.group(1)}, column {where.group(2)}" if where else "TOML"
        raise FarmFileError(path, place, f"TOML syntax error: {what}") from None
    try:
        parsed = FarmFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = len(exc.errors()) - 1
        what = _describe(err, _FIELDS_OF) + (f" (and {more} more problem(s))" if more else "")
        raise FarmFileError(path, _key_path(err["loc"], data), what) from None
    return parsed, data


def load_farm(paths: Sequence[str | Path]) -> Farm:
    """Read every farm file; refuse duplicates across and within them. Nothing half-built."""
    names: list[str] = []
    nodes: dict[str, Node] = {}
    devices: list[DeclaredDevice] = []
    for path in paths:
        parsed, data = read_farm_file(path)
        if parsed.farm is not None:
            names.append(parsed.farm.name)
        for n_index, entry in enumerate(parsed.nodes):
            where = _key_path(("nodes", n_index), data)
            if entry.name in nodes:
                first = nodes[entry.name].source
                raise FarmFileError(
                    path, f"{where}.name", f"duplicate node name {entry.name!r} (first in {first})"
                )
            node = Node(
                name=entry.name, site=entry.site, sector=entry.sector, cloud=entry.cloud,
                region=entry.region, description=entry.description, labels=dict(entry.labels),
                source=str(path),
            )
            nodes[entry.name] = node
            seen_ids: dict[str, str] = {}
            prefix_counts: dict[str, int] = {}
            explicit = {i for d in entry.devices for i in ([d.id] if d.id else d.ids or [])}
            for d_index, dev in enumerate(entry.devices):
                for device_id in dev.device_ids(prefix_counts):
                    dev_where = f"{where}.devices[{d_index}]"
                    if device_id in seen_ids:
                        raise FarmFileError(
                            path, dev_where,
                            f"duplicate device id {device_id!r} on node {entry.name!r} "
                            f"(also {seen_ids[device_id]})",
                        )
                    if not (dev.id or dev.ids) and device_id in explicit:
                        raise FarmFileError(
                            path, dev_where,
                            f"generated device id {device_id!r} collides with an explicit id "
                            f"on node {entry.name!r}",
                        )
                    seen_ids[device_id] = dev_where
                    devices.append(
                        DeclaredDevice(
                            node=entry.name, id=device_id, chip=dev.chip,
                            attributes=node.attributes() | dict(dev.labels) | {"farm_file": str(path)},
                        )
                    )
    return Farm(tuple(names), tuple(nodes.values()), tuple(devices))


# ------------------------------------------------------------------ the inventory


class Inventory:
    """Every device on this machine and in the farm files, with the plugin that reads each.

    Build it once (`Inventory.build`), share it: the CLI, the metrics collector, placement and
    the serving runtime (through `inventory.emulated.record_work`) all use the same object.
    """

    def __init__(
        self,
        devices: list[Device],
        nodes: list[Node],
        plugins: dict[str, DevicePlugin],
        emulated: EmulatedPlugin,
        farm_names: tuple[str, ...] = (),
    ) -> None:
        self.devices = devices
        self.nodes = nodes
        self.emulated = emulated
        self.farm_names = farm_names
        self._plugins = plugins
        self._by_uid = {d.uid: d for d in devices}
        #: Devices read elsewhere (a cluster node's agent), by uid: how to read each.
        self._samplers: dict[str, Callable[[Device], Telemetry]] = {}

    def add(self, devices: Sequence[Device], sampler: Callable[[Device], Telemetry] | None = None) -> None:
        """Devices that joined later (a cluster node's); `sampler` reads those whose sensors are
        elsewhere (None: their plugin here reads them, as for emulated devices it has declared).
        A device already here (same uid) is replaced: a node that rejoins brings it again."""
        for device in devices:
            if device.uid in self._by_uid:
                self.devices = [d for d in self.devices if d.uid != device.uid]
            self.devices.append(device)
            self._by_uid[device.uid] = device
            if sampler is not None:
                self._samplers[device.uid] = sampler

    @classmethod
    def build(
        cls,
        farm_files: Sequence[str | Path] = (),
        node: str | None = None,
        include_local: bool = True,
        plugins: Sequence[DevicePlugin] | None = None,
        emulated: EmulatedPlugin | None = None,
    ) -> Inventory:
        """Read farm files (raising `FarmFileError` before touching any device), then discover.

        `node` names this machine's node (default: the hostname). `plugins` replaces the
        installed entry-point plugins (tests); `emulated` supplies a configured model.
        """
        farm = load_farm(farm_files)
        emulated = emulated or EmulatedPlugin()
        try:
            emulated.declare(farm.devices)
        except UnknownChipError as exc:  # load_farm checked chips; only a bad `emulated` gets here
            raise FarmFileError("<farm>", "", str(exc)) from None
        nodes = list(farm.nodes)
        devices: list[Device] = []
        by_name: dict[str, DevicePlugin] = {emulated.name: emulated}
        if include_local:
            local = node or socket.gethostname() or "localhost"
            found = plugins if plugins is not None else load_plugins()
            local_devices: list[Device] = []
            for plugin in found:
                if plugin.name == emulated.name:
                    continue
                by_name[plugin.name] = plugin
                try:
                    local_devices.extend(plugin.discover(local))
                except Exception as exc:  # a plugin must not raise here; if it does, skip it
                    log.warning("device plugin %s raised during discovery: %s", plugin.name, exc)
            if not any(n.name == local for n in nodes):
                nodes.insert(0, Node(name=local, local=True))
            devices.extend(local_devices)
        devices.extend(emulated.devices)
        seen: set[str] = set()
        for device in devices:
            if device.uid in seen:
                for plugin in by_name.values():  # release what discovery opened (NVML, ...)
                    plugin.close()
                raise FarmFileError(
                    device.attributes.get("farm_file", "<farm>"), f"node {device.node!r}",
                    f"device id {device.id!r} is declared here and also exists on this machine "
                    f"(node {device.node!r}); rename the node or give the device another id",
                )
            seen.add(device.uid)
        return cls(devices, nodes, by_name, emulated, farm.names)

    def only_node(self, name: str) -> Inventory:
        """The same inventory narrowed to one node's devices (a cluster node that joins with a
        farm file describing the whole farm takes only its own part of it)."""
        devices = [d for d in self.devices if d.node == name]
        nodes = [n for n in self.nodes if n.name == name]
        return Inventory(devices, nodes, self._plugins, self.emulated, self.farm_names)

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, uid: str) -> Device:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise KeyError(f"no device {uid!r} in the inventory") from None

    def plugin_for(self, device: Device) -> DevicePlugin:
        try:
            return self._plugins[device.plugin]
        except KeyError:
            raise KeyError(f"no plugin {device.plugin!r} for device {device.uid}") from None

    def sample(self, device: Device) -> Telemetry:
        """One reading; a plugin that fails yields an unhealthy reading with the reason, not an error."""
        try:
            sampler = self._samplers.get(device.uid)
            if sampler is not None:
                return sampler(device)
            return self.plugin_for(device).sample(device)
        except Exception as exc:
            log.warning("sampling %s failed: %s", device.uid, exc)
            return Telemetry(device.uid, healthy=False, modelled=device.emulated,
                             reasons={"telemetry": f"sampling failed: {exc}"})

    def sample_all(self) -> list[tuple[Device, Telemetry]]:
        return [(device, self.sample(device)) for device in self.devices]

    def close(self) -> None:
        for plugin in self._plugins.values():
            try:
                plugin.close()
            except Exception as exc:
                log.debug("closing plugin %s: %s", plugin.name, exc)

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
