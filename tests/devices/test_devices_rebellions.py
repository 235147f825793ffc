"""Rebellions plugin against a recorded `rbln-smi -j` document (see samples/README.md for the
documents its format follows: docs.rbln.ai .../management_tools/rbln_smi.html)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kcloud.devices.plugins.rebellions import (
    RebellionsPlugin,
    devices_from_smi,
    parse_power_watts,
    parse_temperature_celsius,
    telemetry_from_smi,
)


@pytest.fixture
def smi_payload(samples: Path) -> dict:
    return json.loads((samples / "rbln-smi-j.json").read_text())


@pytest.fixture
def fake_smi(tmp_path: Path, samples: Path) -> Path:
    """An `rbln-smi` executable that prints the recorded document, so the subprocess path runs."""
    script = tmp_path / "rbln-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-j" ] || exit 64\ncat "{samples / "rbln-smi-j.json"}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_parses_devices_from_the_sample(smi_payload: dict) -> None:
    devices = devices_from_smi(smi_payload, "atom-node")
    assert [d.id for d in devices] == ["rbln0", "rbln1", "rbln2"]
    first = devices[0]
    assert first.uid == "atom-node/rbln0"
    assert first.vendor == "rebellions" and first.name == "RBLN-CA22"
    assert first.spec.key == "rebellions-atom-ca22"
    assert first.memory_bytes == 16_877_879_296
    assert first.attributes["pci_bus_id"] == "0000:51:00.0"
    assert first.attributes["kmd_version"] == "3.2.2"
    assert first.healthy and not first.emulated
    assert devices[2].spec.key == "rebellions-atom-ca12"
    assert not devices[2].healthy  # status "abnormal"


def test_parses_telemetry_in_base_units(smi_payload: dict) -> None:
    reading = telemetry_from_smi(smi_payload["devices"][0], "atom-node/rbln0")
    assert reading.power_watts == pytest.approx(61.25)  # "61250000uW"
    assert reading.temperature_celsius == 44.0  # "44C"
    assert reading.utilization == pytest.approx(0.875)  # "87.5" percent
    assert reading.memory_used_bytes == 4_294_967_296
    assert reading.energy_joules is None and "energy" in reading.reasons["energy_joules"]
    assert reading.healthy and not reading.modelled


def test_unreadable_values_are_null_with_reasons(smi_payload: dict) -> None:
    reading = telemetry_from_smi(smi_payload["devices"][2], "n/rbln2")
    assert reading.power_watts is None and "'N/A'" in reading.reasons["power_watts"]
    assert reading.temperature_celsius is None and "temperature_celsius" in reading.reasons
    assert not reading.healthy and "abnormal" in reading.reasons["healthy"]


@pytest.mark.parametrize(
    ("text", "watts"),
    [("18109794uW", 18.109794), ("43.9W", 43.9), ("500mW", 0.5), ("12", 12.0), ("N/A", None)],
)
def test_power_units(text: str, watts: float | None) -> None:
    assert parse_power_watts(text) == (pytest.approx(watts) if watts is not None else None)


def test_temperature_forms() -> None:
    assert parse_temperature_celsius("38C") == 38.0
    assert parse_temperature_celsius("40.98°C") == 40.98
    assert parse_temperature_celsius("hot") is None


def test_runs_rbln_smi_as_a_subprocess(fake_smi: Path) -> None:
    plugin = RebellionsPlugin(smi_path=str(fake_smi))
    devices = plugin.discover("atom-node")
    assert len(devices) == 3
    reading = plugin.sample(devices[1])
    assert reading.power_watts == pytest.approx(17.5)
    assert reading.utilization == 0.0


def test_finds_rbln_smi_on_path(fake_smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_smi.parent}:/usr/bin:/bin")  # the script itself needs `cat`
    assert [d.id for d in RebellionsPlugin().discover("n")] == ["rbln0", "rbln1", "rbln2"]


def test_no_rbln_smi_and_no_sdk_gives_no_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no rbln-smi
    monkeypatch.setitem(sys.modules, "rebel", None)  # `import rebel` raises ImportError
    assert RebellionsPlugin().discover("n") == []


def test_broken_rbln_smi_gives_no_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "rbln-smi"
    script.write_text("#!/bin/sh\necho 'driver not loaded' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setitem(sys.modules, "rebel", None)
    assert RebellionsPlugin(smi_path=str(script)).discover("n") == []


def test_rebel_sdk_alone_lists_devices_without_telemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rebel.device_count()` and `rebel.get_npu_name(i)`, as in the RBLN SDK."""
    monkeypatch.setenv("PATH", str(tmp_path))
    rebel = SimpleNamespace(device_count=lambda: 2, get_npu_name=lambda index: "RBLN-CA22")
    plugin = RebellionsPlugin(rebel_module=rebel)
    devices = plugin.discover("n")
    assert [d.id for d in devices] == ["rbln0", "rbln1"]
    assert devices[0].spec.key == "rebellions-atom-ca22"
    reading = plugin.sample(devices[0])
    assert reading.power_watts is None and "no telemetry" in reading.reasons["telemetry"]
