"""The CPU plugin on this machine (real), and its RAPL counter against a powercap tree.

The powercap tree follows the kernel's documented layout
(Documentation/power/powercap/powercap.rst: `intel-rapl:N/energy_uj`, `max_energy_range_uj`);
this machine has none, so RAPL arithmetic is checked on a tree written to a temp dir.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from kcloud.devices.plugins.cpu import CpuPlugin, RaplEnergyCounter, cpu_model_name


def _domain(root: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def test_discovers_the_real_cpu() -> None:
    [device] = CpuPlugin().discover("node-a")
    assert device.uid == "node-a/cpu0"
    assert device.spec.key == "cpu-generic"
    assert device.name == cpu_model_name() and device.name
    assert device.memory_bytes == psutil.virtual_memory().total
    assert device.attributes["cores_logical"] == str(psutil.cpu_count())
    assert device.runtimes == ("onnxruntime-cpu",)
    assert not device.emulated


def test_samples_real_utilisation_and_memory() -> None:
    plugin = CpuPlugin()
    [device] = plugin.discover("node-a")
    reading = plugin.sample(device)
    assert reading.device_uid == device.uid
    assert reading.utilization is not None and 0.0 <= reading.utilization <= 1.0
    assert 0 < reading.memory_used_bytes <= device.memory_bytes
    assert not reading.modelled
    for field in ("energy_joules", "power_watts", "temperature_celsius"):
        assert (getattr(reading, field) is None) == (field in reading.reasons)


def test_without_powercap_energy_is_null_with_reason(tmp_path: Path) -> None:
    plugin = CpuPlugin(powercap_root=tmp_path / "absent")
    [device] = plugin.discover("n")
    reading = plugin.sample(device)
    assert reading.energy_joules is None and reading.power_watts is None
    assert "no RAPL powercap on this machine" in reading.reasons["energy_joules"]


def test_rapl_sums_packages_and_survives_a_wrap(tmp_path: Path) -> None:
    pkg0 = _domain(tmp_path, "intel-rapl:0", 900_000)
    _domain(tmp_path, "intel-rapl:1", 100_000)
    _domain(tmp_path, "intel-rapl:0:0", 5_000)  # a sub-domain: part of package 0, not added
    counter = RaplEnergyCounter(tmp_path)
    assert counter.read_joules() == pytest.approx(1.0)
    (pkg0 / "energy_uj").write_text("200000\n")  # wrapped at 1 J: +0.3 J
    assert counter.read_joules() == pytest.approx(1.3)
    (pkg0 / "energy_uj").write_text("700000\n")  # +0.5 J
    assert counter.read_joules() == pytest.approx(1.8)


def test_rapl_power_from_energy_differences(tmp_path: Path) -> None:
    pkg = _domain(tmp_path, "intel-rapl:0", 0, max_uj=10**12)
    plugin = CpuPlugin(powercap_root=tmp_path)
    [device] = plugin.discover("n")
    (pkg / "energy_uj").write_text(f"{5_000_000}\n")
    reading = plugin.sample(device)
    assert reading.energy_joules == pytest.approx(5.0)
    assert reading.power_watts is not None and reading.power_watts > 0
    assert "power_watts" not in reading.reasons


def test_rapl_permission_denied_is_a_reason(tmp_path: Path) -> None:
    _domain(tmp_path, "intel-rapl:0", 1)

    def denied(path: Path) -> str:  # root reads anything, so the kernel's refusal is simulated
        raise PermissionError(13, "Permission denied", str(path))

    counter = RaplEnergyCounter(tmp_path, read=denied)
    assert counter.read_joules() is None
    assert "permission denied" in counter.unavailable_reason


def test_a_sample_waits_at_most_the_window_whatever_the_clock_said_before() -> None:
    """A previous sample stamped ahead of the clock (a test once patched `time.monotonic` for the
    whole process) made the next one sleep for the difference: an hour, holding the lock."""
    plugin = CpuPlugin()
    [device] = plugin.discover("node-a")
    _, busy, total = plugin._last_times  # type: ignore[misc]
    plugin._last_times = (time.monotonic() + 3600.0, busy, total)
    started = time.monotonic()
    plugin.sample(device)
    assert time.monotonic() - started < 5.0
