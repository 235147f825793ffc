"""Rebellions ATOM / REBEL NPUs: `rbln-smi -j` for discovery and telemetry, `rebel` as fallback.

`rbln-smi` ships with the RBLN driver; its JSON output (`-j`) carries per device the name
(`RBLN-CA22`), kernel device (`rbln0`), status, temperature (`"29C"`), card power
(`"18109794uW"`), memory used/total (bytes as decimal strings) and utilisation (percent).
Format: docs.rbln.ai/latest/software/system_management/management_tools/rbln_smi.html; the
recorded sample the tests parse is `tests/devices/samples/rbln-smi-j.json`.

Where only the Python SDK is installed (`import rebel`), `rebel.device_count()` and
`rebel.get_npu_name(i)` still list the devices, but without telemetry.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

from kcloud.devices.catalog import match_spec
from kcloud.devices.device import Device, Telemetry
from kcloud.devices.plugin import DevicePlugin

log = logging.getLogger(__name__)

SMI_TIMEOUT_S = 5.0
#: One `rbln-smi` run serves every device sampled within this window (a scrape samples all).
SNAPSHOT_TTL_S = 1.0
_POWER = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(uW|µW|mW|W)?\s*", re.IGNORECASE)
_POWER_SCALE = {"uw": 1e-6, "µw": 1e-6, "mw": 1e-3, "w": 1.0}
_TEMPERATURE = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?)\s*°?C?\s*", re.IGNORECASE)


def parse_power_watts(text: Any) -> float | None:
    """`"18109794uW"` → 18.109794; `"43.9W"` → 43.9; anything else → None."""
    match = _POWER.fullmatch(str(text))
    if not match:
        return None
    return float(match.group(1)) * _POWER_SCALE[(match.group(2) or "W").lower()]


def parse_temperature_celsius(text: Any) -> float | None:
    match = _TEMPERATURE.fullmatch(str(text))
    return float(match.group(1)) if match else None


def parse_utilization_ratio(text: Any) -> float | None:
    """rbln-smi reports percent (`"4.4"`); kcloud reports a ratio (0.044)."""
    try:
        return float(text) / 100
    except (TypeError, ValueError):
        return None


def _int_or_none(text: Any) -> int | None:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return None


def _device_id(entry: Mapping[str, Any]) -> str:
    return str(entry.get("device") or f"rbln{entry.get('npu', '?')}")


def devices_from_smi(payload: Mapping[str, Any], node: str, plugin: str = "rebellions") -> list[Device]:
    """Devices described by one `rbln-smi -j` document."""
    kmd = str(payload.get("KMD_version", ""))
    devices = []
    for entry in payload.get("devices", []):
        name = str(entry.get("name", "")).strip()
        pci = entry.get("pci") or {}
        memory = entry.get("memory") or {}
        attributes = {
            "uuid": str(entry.get("uuid", "")),
            "serial": str(entry.get("sid", "")),
            "npu": str(entry.get("npu", "")),
            "status": str(entry.get("status", "")),
            "firmware": str(entry.get("fw_ver", "")),
            "kmd_version": kmd,
            "pci_bus_id": str(pci.get("bus_id", "")),
            "numa_node": str(pci.get("numa_node", "")),
        }
        devices.append(
            Device(
                id=_device_id(entry),
                node=node,
                plugin=plugin,
                vendor="rebellions",
                spec=match_spec("rebellions", name),
                name=name or "unknown RBLN device",
                healthy=str(entry.get("status", "")).lower() == "normal",
                memory_bytes=_int_or_none(memory.get("total")),
                runtimes=RebellionsPlugin.runtimes,
                attributes={k: v for k, v in attributes.items() if v},
            )
        )
    return devices


def telemetry_from_smi(entry: Mapping[str, Any], device_uid: str) -> Telemetry:
    """One device's reading from its entry in an `rbln-smi -j` document."""
    reasons: dict[str, str] = {}

    def field(name: str, raw: Any, parse: Any) -> Any:
        value = parse(raw) if raw is not None else None
        if value is None:
            reasons[name] = f"rbln-smi gave no readable value ({raw!r})"
        return value

    memory = entry.get("memory") or {}
    status = str(entry.get("status", ""))
    if status.lower() != "normal":
        reasons["healthy"] = f"rbln-smi status {status!r}"
    reasons["energy_joules"] = "rbln-smi reports power, not an energy counter"
    return Telemetry(
        device_uid=device_uid,
        utilization=field("utilization", entry.get("util"), parse_utilization_ratio),
        power_watts=field("power_watts", entry.get("card_power"), parse_power_watts),
        energy_joules=None,
        memory_used_bytes=field("memory_used_bytes", memory.get("used"), _int_or_none),
        temperature_celsius=field("temperature_celsius", entry.get("temperature"), parse_temperature_celsius),
        healthy=status.lower() == "normal",
        reasons=reasons,
    )


class RebellionsPlugin(DevicePlugin):
    name = "rebellions"
    vendor = "rebellions"
    # Ray: RBLNAcceleratorManager, resource "RBLN", visibility variable RBLN_DEVICES holding
    # comma-separated device numbers (ray-project/ray python/ray/_private/accelerators/rbln.py
    # @ 0718d5b0: RBLN_RT_VISIBLE_DEVICES_ENV_VAR = "RBLN_DEVICES").
    # Kubernetes: "rebellions.ai/npu", the RBLN device plugin's generic name and its default from
    # v0.4.0 (docs.rbln.ai, Kubernetes); it covers ATOM and REBEL, where "rebellions.ai/ATOM" and
    # "rebellions.ai/REBEL" name one product each.
    ray_resource = "RBLN"
    k8s_resource = "rebellions.ai/npu"
    visible_devices_env = "RBLN_DEVICES"
    runtimes = ("rebel",)

    def __init__(self, smi_path: str | None = None, rebel_module: Any = None) -> None:
        """`smi_path` defaults to `rbln-smi` on PATH; `rebel_module` to `import rebel`."""
        self._smi_path = smi_path
        self._rebel = rebel_module
        self._lock = threading.Lock()
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._source: str | None = None  # "rbln-smi" or "rebel"

    def _smi(self) -> str | None:
        return self._smi_path or shutil.which("rbln-smi")

    def _run_smi(self) -> dict[str, Any]:
        smi = self._smi()
        if smi is None:
            raise FileNotFoundError("rbln-smi not found on PATH")
        done = subprocess.run([smi, "-j"], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=True)
        payload = json.loads(done.stdout)
        if not isinstance(payload, dict):
            raise ValueError("rbln-smi -j did not print a JSON object")
        return payload

    def _fresh_payload(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_TTL_S:
                self._snapshot = (now, self._run_smi())
            return self._snapshot[1]

    def _rebel_module(self) -> Any:
        if self._rebel is None:
            self._rebel = importlib.import_module("rebel")
        return self._rebel

    def discover(self, node: str) -> list[Device]:
        if self._smi() is not None:
            try:
                devices = devices_from_smi(self._fresh_payload(), node, self.name)
                self._source = "rbln-smi"
                return devices
            except Exception as exc:
                log.warning("rebellions: rbln-smi -j failed (%s); trying the rebel SDK", exc)
        try:
            rebel = self._rebel_module()
            count = int(rebel.device_count())
            devices = [
                Device(
                    id=f"rbln{index}",
                    node=node,
                    plugin=self.name,
                    vendor=self.vendor,
                    spec=match_spec(self.vendor, str(rebel.get_npu_name(index))),
                    name=str(rebel.get_npu_name(index)),
                    runtimes=self.runtimes,
                    attributes={"source": "rebel SDK (no rbln-smi: no telemetry)"},
                )
                for index in range(count)
            ]
            self._source = "rebel"
            return devices
        except Exception as exc:  # no SDK here: no devices
            log.debug("rebellions: no devices (%s)", exc)
            return []

    def sample(self, device: Device) -> Telemetry:
        if self._source != "rbln-smi":
            return Telemetry(
                device.uid,
                healthy=device.healthy,
                reasons={"telemetry": "rbln-smi not found; the rebel SDK gives no telemetry"},
            )
        try:
            payload = self._fresh_payload()
        except Exception as exc:
            return Telemetry(device.uid, healthy=False, reasons={"telemetry": f"rbln-smi -j failed: {exc}"})
        for entry in payload.get("devices", []):
            if _device_id(entry) == device.id:
                return telemetry_from_smi(entry, device.uid)
        return Telemetry(device.uid, healthy=False, reasons={"device": "no longer listed by rbln-smi"})
