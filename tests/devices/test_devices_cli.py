"""`kcloud devices`: through typer's CliRunner, and once as the installed `kcloud` script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kcloud.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"
runner = CliRunner()


def _kcloud_script() -> str:
    script = Path(sys.executable).with_name("kcloud")
    return str(script) if script.exists() else (shutil.which("kcloud") or "kcloud")


def test_json_lists_the_real_cpu_with_real_figures() -> None:
    result = runner.invoke(app, ["devices", "--json", "--node", "test-host"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    [cpu] = [d for d in document["devices"] if d["plugin"] == "cpu"]
    assert cpu["uid"] == "test-host/cpu0" and cpu["emulated"] is False
    assert cpu["name"] and cpu["memory_bytes"] > 0
    telemetry = cpu["telemetry"]
    assert telemetry["modelled"] is False
    assert 0.0 <= telemetry["utilization"] <= 1.0
    assert telemetry["memory_used_bytes"] > 0
    for field in ("power_watts", "energy_joules", "temperature_celsius"):
        assert telemetry[field] is not None or field in telemetry["reasons"]
    assert cpu["spec"]["key"] == "cpu-generic"


def test_json_with_example_farm_flags_every_emulated_device() -> None:
    result = runner.invoke(app, ["devices", "--json", "--farm", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    emulated = [d for d in document["devices"] if d["plugin"] == "emulated"]
    assert len({d["vendor"] for d in emulated}) >= 4
    assert all(d["emulated"] and d["telemetry"]["modelled"] for d in emulated)
    rngd = next(d for d in emulated if d["spec"]["key"] == "furiosa-rngd")
    assert rngd["spec"]["int8_tops"] == {"value": 512.0, "source": rngd["spec"]["int8_tops"]["source"],
                                          "confidence": "vendor", "note": None}
    sapeon = next(d for d in emulated if d["spec"]["key"] == "sapeon-x220-enterprise")
    assert sapeon["telemetry"]["power_watts"] is None and "power_watts" in sapeon["telemetry"]["reasons"]
    assert document["farms"] == ["k-cloud-phase1"]


def test_table_shows_flags_and_nulls() -> None:
    result = runner.invoke(app, ["devices", "--farm", str(EXAMPLE), "--no-local"])
    assert result.exit_code == 0, result.output
    assert "emulated" in result.stdout and "gwangju-1" in result.stdout
    assert "*" in result.stdout and "—" in result.stdout  # modelled marks, and nulls as a dash
    assert "real" not in result.stdout.split("┡")[1]  # --no-local: no real device rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[nodes]]\nname = "g1"\ndevices = [ { chip = "furiosa-rngd", count = 0 } ]\n',
            "count must be at least 1",
        ),
        ('[[nodes]\n', "TOML syntax error"),
    ],
)
def test_bad_farm_file_is_one_red_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = runner.invoke(app, ["devices", "--farm", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output


def test_installed_script_lists_devices_as_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [_kcloud_script(), "devices", "--json", "--farm", str(EXAMPLE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    devices = json.loads(done.stdout)["devices"]
    assert any(d["plugin"] == "cpu" and not d["emulated"] for d in devices)
    assert sum(d["emulated"] for d in devices) == 56
