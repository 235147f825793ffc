"""Prometheus exposition of device telemetry: one collector that samples on scrape.

Names follow DCGM's meanings in one vendor-neutral namespace and base units (W, J, bytes, °C,
ratio 0..1). Every sample carries `node, device, vendor, chip, emulated, modelled`, so an
emulated device or a modelled figure is labelled as such in every dashboard. A reading that is
`None` (sensor absent) is left out, never exported as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from kcloud.devices.device import Device, Telemetry

if TYPE_CHECKING:  # the inventory lives in kcloud.farm, which imports this package
    from kcloud.devices.inventory import Inventory

LABELS = ("node", "device", "vendor", "chip", "emulated", "modelled")
INFO_LABELS = ("node", "device", "vendor", "chip", "name", "kind", "plugin", "emulated")

_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("kcloud_device_power_watts", "power_watts", "Power draw in watts."),
    ("kcloud_device_utilization_ratio", "utilization", "Busy share of the device, 0 to 1."),
    ("kcloud_device_memory_used_bytes", "memory_used_bytes", "Device memory in use, bytes."),
    ("kcloud_device_temperature_celsius", "temperature_celsius", "Device temperature, degrees Celsius."),
)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _labels(device: Device, telemetry: Telemetry) -> list[str]:
    return [device.node, device.id, device.vendor, device.spec.key, _flag(device.emulated),
            _flag(telemetry.modelled)]


def device_metric_families(readings: Iterable[tuple[Device, Telemetry]]) -> list[Metric]:
    """Metric families for a set of readings (exposed for callers that sample themselves)."""
    gauges = {attr: GaugeMetricFamily(name, doc, labels=LABELS) for name, attr, doc in _GAUGES}
    energy = CounterMetricFamily(
        "kcloud_device_energy_joules", "Energy used since an arbitrary origin, joules.", labels=LABELS
    )
    healthy = GaugeMetricFamily("kcloud_device_healthy", "1 if the device is healthy, else 0.", labels=LABELS)
    info = GaugeMetricFamily(
        "kcloud_device_info", "Device description; value is always 1.", labels=INFO_LABELS
    )
    for device, telemetry in readings:
        labels = _labels(device, telemetry)
        for attr, family in gauges.items():
            value = getattr(telemetry, attr)
            if value is not None:
                family.add_metric(labels, float(value))
        if telemetry.energy_joules is not None:
            energy.add_metric(labels, float(telemetry.energy_joules))
        healthy.add_metric(labels, 1.0 if telemetry.healthy else 0.0)
        info.add_metric(
            [device.node, device.id, device.vendor, device.spec.key, device.name, device.spec.kind,
             device.plugin, _flag(device.emulated)],
            1.0,
        )
    return [*gauges.values(), energy, healthy, info]


class DeviceCollector(Collector):
    """Samples every device of an `Inventory` each time Prometheus scrapes."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would sample every device once just to learn names.
        yield from device_metric_families(())

    def collect(self) -> Iterator[Metric]:
        yield from device_metric_families(self._inventory.sample_all())


def register_device_metrics(inventory: Inventory, registry: CollectorRegistry) -> DeviceCollector:
    """Add a `DeviceCollector` for `inventory` to `registry` and return it."""
    collector = DeviceCollector(inventory)
    registry.register(collector)
    return collector
