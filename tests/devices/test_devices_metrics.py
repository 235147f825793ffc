"""Prometheus exposition, scraped through a real registry and parsed back with prometheus-client."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kcloud.devices.inventory import Inventory
from kcloud.devices.metrics import LABELS, register_device_metrics
from kcloud.devices.plugins.cpu import CpuPlugin
from kcloud.devices.plugins.emulated import EmulatedPlugin

FARM = """
[farm]
name = "metrics-test"

[[nodes]]
name = "gwangju-1"
devices = [ { chip = "furiosa-rngd", count = 2 }, { chip = "sapeon-x220-enterprise", count = 1 } ]
"""


class Clock:
    now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scrape(tmp_path: Path):
    farm = tmp_path / "farm.toml"
    farm.write_text(FARM)
    clock = Clock()
    inventory = Inventory.build(
        [farm], node="local-1", plugins=[CpuPlugin()], emulated=EmulatedPlugin(clock=clock, window_s=10.0)
    )
    registry = CollectorRegistry()
    register_device_metrics(inventory, registry)

    def run() -> dict[str, list]:
        text = generate_latest(registry).decode()
        return {family.name: family for family in text_string_to_metric_families(text)}

    clock.now += 100
    inventory.emulated.record_work("gwangju-1/rngd0", 4.0)
    return run, inventory


def _sample(family, **labels):
    matches = [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (labels, family.samples)
    return matches[0]


def test_families_types_and_labels(scrape) -> None:
    run, _ = scrape
    families = run()
    gauges = (
        "kcloud_device_power_watts", "kcloud_device_utilization_ratio", "kcloud_device_memory_used_bytes",
        "kcloud_device_temperature_celsius", "kcloud_device_healthy",
    )
    for name in gauges:
        assert families[name].type == "gauge", name
    energy = families["kcloud_device_energy_joules"]
    assert energy.type == "counter"
    allowed = {"kcloud_device_energy_joules_total", "kcloud_device_energy_joules_created"}
    assert {s.name for s in energy.samples} <= allowed
    for family in families.values():
        if family.name != "kcloud_device_info":
            for sample in family.samples:
                assert set(sample.labels) == set(LABELS)


def test_emulated_values_are_labelled_modelled(scrape) -> None:
    run, _ = scrape
    families = run()
    busy = _sample(families["kcloud_device_utilization_ratio"], node="gwangju-1", device="rngd0")
    assert busy.value == pytest.approx(0.4)
    assert busy.labels == {
        "node": "gwangju-1", "device": "rngd0", "vendor": "furiosa", "chip": "furiosa-rngd",
        "emulated": "true", "modelled": "true",
    }
    power = _sample(families["kcloud_device_power_watts"], device="rngd0")
    assert power.value == pytest.approx(54 + (180 - 54) * 0.4)
    idle = _sample(families["kcloud_device_power_watts"], device="rngd1")
    assert idle.value == pytest.approx(54.0)
    energy = _sample(families["kcloud_device_energy_joules"], device="rngd1")
    assert energy.name == "kcloud_device_energy_joules_total"
    assert energy.value == pytest.approx(54.0 * 100)


def test_null_readings_are_omitted_not_zero(scrape) -> None:
    run, _ = scrape
    families = run()
    power_devices = {s.labels["device"] for s in families["kcloud_device_power_watts"].samples}
    assert "x220-enterprise0" not in power_devices  # Sapeon has no sourced TDP: no modelled power
    assert "x220-enterprise0" in {s.labels["device"] for s in families["kcloud_device_healthy"].samples}
    temps = families.get("kcloud_device_temperature_celsius")
    assert temps is None or all(s.labels["emulated"] == "false" for s in temps.samples)


def test_real_cpu_is_not_modelled(scrape) -> None:
    run, _ = scrape
    families = run()
    cpu = _sample(families["kcloud_device_utilization_ratio"], node="local-1", device="cpu0")
    assert cpu.labels["emulated"] == "false" and cpu.labels["modelled"] == "false"
    assert 0.0 <= cpu.value <= 1.0
    memory = _sample(families["kcloud_device_memory_used_bytes"], device="cpu0")
    assert memory.value > 0
    info = _sample(families["kcloud_device_info"], device="cpu0")
    assert info.labels["kind"] == "cpu" and info.value == 1.0


def test_registering_does_not_sample(tmp_path: Path) -> None:
    class Counting(CpuPlugin):
        samples = 0

        def sample(self, device):
            Counting.samples += 1
            return super().sample(device)

    inventory = Inventory.build(node="n", plugins=[Counting()])
    registry = CollectorRegistry()
    register_device_metrics(inventory, registry)
    assert Counting.samples == 0
    generate_latest(registry)
    assert Counting.samples == 1
