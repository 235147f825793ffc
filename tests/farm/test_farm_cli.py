"""`kcloud farm`: capacity summary through CliRunner and as the installed script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from kcloud.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"
runner = CliRunner()


def test_summary_shows_unknowns_as_unknown() -> None:
    result = runner.invoke(app, ["farm", "--farm", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "k-cloud-phase1" in out
    assert "≥" in out and "devices unknown" in out
    assert "unknown (16 devices)" in out  # Sapeon X220: no published compute figures
    for heading in ("by vendor", "by chip", "by node"):
        assert heading in out


def test_json_report() -> None:
    result = runner.invoke(app, ["farm", "--json", "--no-local", "--farm", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["devices"] == report["emulated"] == 56
    assert {"sapeon", "rebellions", "furiosa", "deepx"} <= set(report["by_vendor"])
    assert report["by_vendor"]["sapeon"]["totals"]["int8_pops"]["known"] is None
    assert report["totals"]["int8_pops"]["unknown_devices"] == 18
    assert len(report["unknown"]["int8_pops"]) == 18
    assert report["farms"] == ["k-cloud-phase1"]


def test_bad_farm_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "g1"\ndevices = [ { chip = "nvidia-h1000" } ]\n')
    result = runner.invoke(app, ["farm", "--farm", str(bad)])
    assert result.exit_code == 2
    assert "unknown chip 'nvidia-h1000'" in result.stderr and str(bad) in result.stderr


def test_installed_script_prints_totals() -> None:
    script = Path(sys.executable).with_name("kcloud")
    command = str(script) if script.exists() else (shutil.which("kcloud") or "kcloud")
    done = subprocess.run([command, "farm", "--farm", str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "FP16/BF16" in done.stdout and "≥" in done.stdout
