"""`kcloud twin plan`: devices for a load under an SLO and their cost; a farm's capacity; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kcloud.cli import app
from kcloud.models.repository import ModelRepository
from tiny_models import build_model

PRICES = """
[[instance]]
key = "rngd-box"
provider = "Test"
instance_type = "rngd.x4"
region = "here"
accelerator = "furiosa-rngd"
accelerator_count = 4
currency = "USD"
price_per_hour = 4.0
source = "a test"
as_of = 2026-01-01

[[instance]]
key = "l4-box"
provider = "Test"
instance_type = "l4.x1"
region = "here"
accelerator = "nvidia-l4"
accelerator_count = 1
currency = "USD"
price_per_hour = 0.5
source = "a test"
as_of = 2026-01-01
"""
FARM = """
[farm]
name = "plan-test"

[[nodes]]
name = "a"
devices = [{ chip = "furiosa-rngd", count = 2 }, { chip = "sapeon-x220-enterprise", count = 1 }]
"""


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    build_model(ModelRepository(root / "models"), "tiny", flops_per_sample=2e9)
    (root / "prices.toml").write_text(PRICES)
    (root / "farm.toml").write_text(FARM)
    (root / "profiles").mkdir()
    return root


def plan(where: Path, *args: str):
    return CliRunner().invoke(
        app,
        [
            "twin",
            "plan",
            "--model",
            "tiny",
            "--repo",
            str(where / "models"),
            "--profiles",
            str(where / "profiles"),
            *args,
        ],
        env={"COLUMNS": "200"},
    )


def test_sizing_finds_the_fewest_devices_of_each_chip_and_the_cheapest(where: Path) -> None:
    done = plan(where, "--rate", "150000", "--p99-ms", "50", "--prices", str(where / "prices.toml"), "--json")
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["modelled"] is True and found["slo"] == {"p99_ms": 50.0, "rate": 150000.0}
    chips = {c["chip"]: c for c in found["chips"]}
    rngd = chips["furiosa-rngd"]
    # one modelled RNGD carries ~51k/s of a 2 GFLOP model (FP16 peak × 0.4): three are too few
    assert rngd["devices"] >= 3 and rngd["instances"] == -(-rngd["devices"] // 4)
    assert rngd["usd_per_hour"] == rngd["instances"] * 4.0
    assert rngd["p99_ms"] <= 50 and 0 < rngd["p99_margin"] < 1 and rngd["capacity_margin"] >= 0
    assert found["cheapest"] in chips and chips[found["cheapest"]]["usd_per_hour"] == min(
        c["usd_per_hour"] for c in found["chips"] if c["usd_per_hour"] is not None
    )


def test_the_table_names_the_cheapest_plan(where: Path) -> None:
    done = plan(where, "--rate", "1000", "--p99-ms", "50", "--prices", str(where / "prices.toml"))
    assert done.exit_code == 0, done.output
    assert "MODELLED" in done.output and "cheapest: 1 × nvidia-l4" in done.output


def test_an_slo_nobody_can_meet_says_so_with_the_best_achievable(where: Path) -> None:
    done = plan(
        where,
        "--rate",
        "1000",
        "--p99-ms",
        "0.001",
        "--prices",
        str(where / "prices.toml"),
        "--chip",
        "furiosa-rngd",
        "--max-devices",
        "4",
        "--json",
    )
    assert done.exit_code == 0, done.output
    (rngd,) = json.loads(done.output)["chips"]
    assert (
        rngd["devices"] is None
        and "no count up to 4 devices meets" in rngd["why"]
        and "best p99" in rngd["why"]
    )
    assert json.loads(done.output)["cheapest"] is None


def test_a_farms_capacity_under_the_slo_leaves_out_what_it_cannot_model(where: Path) -> None:
    done = plan(where, "--farm", str(where / "farm.toml"), "--p99-ms", "20", "--json")
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["devices"] == 2  # the Sapeon card has no figures: left out
    assert found["rate"] > 0 and found["p99_at_rate_ms"] <= 20
    assert found["devices_without_power"] == 1 and found["mean_power_w"] > 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--p99-ms", "10"], "either --rate"),
        (["--p99-ms", "10", "--rate", "5", "--farm", "f.toml"], "either --rate"),
        (["--p99-ms", "0", "--rate", "5"], "--p99-ms must be > 0"),
        (["--p99-ms", "10", "--rate", "-5"], "--rate must be > 0"),
        (["--p99-ms", "10", "--rate", "5", "--chip", "no-such-chip"], "no-such-chip"),
    ],
)
def test_bad_plan_options_are_refused(where: Path, args: list[str], error: str) -> None:
    done = plan(where, *args)
    assert done.exit_code == 2 and error in done.output, done.output


def test_an_unknown_model_is_refused(where: Path) -> None:
    done = CliRunner().invoke(
        app,
        [
            "twin",
            "plan",
            "--model",
            "nope",
            "--repo",
            str(where / "models"),
            "--rate",
            "5",
            "--p99-ms",
            "10",
        ],
    )
    assert done.exit_code == 2 and "model 'nope' not found" in done.output
