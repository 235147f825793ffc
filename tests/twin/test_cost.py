"""`kcloud twin cost`: the sourced price table, $ and J per inference, and the '70 % cheaper' check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kcloud.cli import app
from kcloud.devices.catalog import load_catalog
from kcloud.farm.profiles import MeasuredProfileFile, ProfileBook, save_measured_profile
from kcloud.models.repository import ModelRepository
from kcloud.twin.cost import cost_report, instance_cost
from kcloud.twin.prices import PriceTableError, load_price_table, parse_price_table
from tiny_models import build_model

MODEL = "tiny"
FLOPS = 1e9

GOOD_ROW = """
[[instance]]
key = "box"
provider = "Test"
instance_type = "t.small"
region = "here"
accelerator = "nvidia-l4"
accelerator_count = 2
currency = "USD"
price_per_hour = 1.0
source = "a test"
as_of = 2026-01-01
"""


def _table(text: str, tmp_path: Path) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A KCLOUD_HOME with a one-model repository and no measured profiles."""
    home = tmp_path / "home"
    build_model(ModelRepository(home / "models"), MODEL)
    monkeypatch.setenv("KCLOUD_HOME", str(home))
    return home


# ------------------------------------------------------------------------------- the price table
def test_bundled_table_loads_and_every_row_is_sourced_and_dated() -> None:
    table = load_price_table()
    rows = [*table.instance, *table.energy, *table.exchange]
    assert {"aws-inf2.xlarge", "aws-g6.xlarge", "aws-p5.48xlarge", "aws-c7i.xlarge"} <= {
        r.key for r in table.instance
    }
    assert table.energy and table.exchange
    for row in rows:
        assert row.source.strip() and row.as_of.year >= 2020
    for row in table.instance:
        assert row.price_per_hour is not None or row.note  # a gap is explained


def test_a_row_without_a_source_is_refused_naming_the_row(tmp_path: Path) -> None:
    text = GOOD_ROW.replace('source = "a test"\n', "")
    with pytest.raises(PriceTableError) as exc:
        load_price_table(_table(text, tmp_path))
    message = str(exc.value)
    assert "instance[0] (box)" in message and "source: missing" in message and "prices.toml" in message


def test_bad_toml_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = _table(GOOD_ROW + "\nprice_per_hour = = 3\n", tmp_path)
    with pytest.raises(PriceTableError) as exc:
        load_price_table(path)
    assert str(path) in str(exc.value) and "not valid TOML" in str(exc.value) and "line" in str(exc.value)


def test_a_negative_price_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match=r"instance\[0\] \(box\): price_per_hour: .*greater than 0"):
        load_price_table(_table(GOOD_ROW.replace("1.0", "-0.5"), tmp_path))


def test_an_unknown_accelerator_key_and_an_unexplained_gap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="did you mean: nvidia-l4"):
        parse_price_table(GOOD_ROW.replace('"nvidia-l4"', '"nvidia-l44"'))
    with pytest.raises(PriceTableError, match="needs a note"):
        parse_price_table(GOOD_ROW.replace("price_per_hour = 1.0\n", ""))


# ---------------------------------------------------------------------------------- the figures
def test_a_measured_profile_is_costed_and_labelled_measured(tmp_path: Path) -> None:
    save_measured_profile(
        MeasuredProfileFile(
            chip_key="nvidia-l4",
            model=MODEL,
            precision="fp16",
            latency_by_batch=[(1, 0.001), (10, 0.005)],  # best: 2,000 samples/s
            power_by_util=[(0.0, 20.0), (1.0, 60.0)],
            source="bench run test-1",
        ),
        tmp_path,
    )
    table = parse_price_table(GOOD_ROW)
    row = instance_cost(
        table.instance[0],
        table,
        model=MODEL,
        flops_per_sample=FLOPS,
        precision=None,
        book=ProfileBook.load(tmp_path),
        catalog=load_catalog(),
        energy=None,
    )
    assert row.label == "measured" and "bench run test-1" in row.basis
    assert row.samples_per_second == pytest.approx(2000)
    assert row.usd_per_million == pytest.approx(1.0 / (2 * 2000 * 3600) * 1e6)
    assert row.joules_per_inference == pytest.approx(60.0 / 2000)
    assert "no energy price" in row.unknown


def test_a_chip_without_catalog_figures_gives_none_with_the_reason() -> None:
    table = parse_price_table(GOOD_ROW.replace('"nvidia-l4"', '"sapeon-x330"'))
    report = cost_report(table, model=MODEL, flops_per_sample=FLOPS, book=ProfileBook())
    (row,) = report.rows
    assert row.usd_per_million is None and row.joules_per_inference is None
    assert any("sapeon-x330 has no" in reason for reason in row.unknown)
    assert any("has no TDP" in reason for reason in row.unknown)
    assert report.comparison.verdict == "undecided"


def test_the_comparison_needs_both_sides_and_states_its_assumptions() -> None:
    report = cost_report(load_price_table(), model=MODEL, flops_per_sample=FLOPS, book=ProfileBook())
    comparison = report.comparison
    assert comparison.verdict in {"reproduced", "not reproduced", "refuted"}
    assert comparison.npu == "aws-inf2.xlarge" and comparison.saving is not None
    # both modelled, and both chips without an MLPerf result: each side names the default factor
    assert any(
        "both sides modelled with the same factor" in line
        and "NPU aws-inferentia2 with efficiency factor 0.4 (default 0.4" in line
        and "GPU nvidia-l4 with efficiency factor 0.4 (default 0.4" in line
        for line in comparison.assumptions
    )
    assert any("100% utilisation" in line for line in comparison.assumptions)
    half = cost_report(
        load_price_table(), model=MODEL, flops_per_sample=FLOPS, book=ProfileBook(), utilisation=0.5
    )
    by_key = {r.key: r for r in half.rows}
    assert by_key["aws-g6.xlarge"].usd_per_million == pytest.approx(
        2 * {r.key: r for r in report.rows}["aws-g6.xlarge"].usd_per_million
    )


def test_each_side_is_modelled_with_its_chips_own_factor_and_says_where_it_came_from() -> None:
    atom_row = GOOD_ROW.replace('"box"', '"npu-box"').replace('"nvidia-l4"', '"rebellions-atom-ca22"')
    report = cost_report(parse_price_table(atom_row + GOOD_ROW), model=MODEL, flops_per_sample=FLOPS)
    npu = {r.key: r for r in report.rows}["npu-box"]
    assert npu.label == "modelled" and npu.efficiency == pytest.approx(0.464, abs=0.001)
    assert npu.efficiency_basis.startswith("MLPerf v3.0 ResNet-50 Offline 7,245.87 samples/s")
    assert "efficiency 0.46 (MLPerf v3.0" in npu.basis
    assert report.efficiency is None  # no what-if: every chip its own
    assert any(
        "each with its chip's own factor" in line
        and "NPU rebellions-atom-ca22 with efficiency factor 0.46 (MLPerf v3.0 ResNet-50 Offline" in line
        and "GPU nvidia-l4 with efficiency factor 0.4 (default 0.4" in line
        for line in report.comparison.assumptions
    )


def test_a_what_if_efficiency_applies_to_every_chip_and_a_bad_one_is_refused() -> None:
    table = parse_price_table(GOOD_ROW)
    own = cost_report(table, model=MODEL, flops_per_sample=FLOPS).rows[0]
    half = cost_report(table, model=MODEL, flops_per_sample=FLOPS, efficiency=0.2).rows[0]
    assert half.samples_per_second == pytest.approx(own.samples_per_second / 2)  # 0.2 against L4's 0.4
    assert half.efficiency == 0.2 and "what-if" in half.efficiency_basis and "what-if" in half.basis
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="efficiency must be in"):
            cost_report(table, model=MODEL, flops_per_sample=FLOPS, efficiency=bad)


def test_the_models_weights_make_a_small_batch_memory_bound() -> None:
    table = parse_price_table(GOOD_ROW)  # L4: 300 GB/s
    compute_only = cost_report(table, model=MODEL, flops_per_sample=FLOPS, max_batch=1).rows[0]
    heavy = cost_report(
        table, model=MODEL, flops_per_sample=FLOPS, max_batch=1, weight_bytes=4 * 10**9
    ).rows[0]
    assert heavy.samples_per_second == pytest.approx(300e9 * 0.4 / 2e9)  # 2 GB of FP16 weights a batch
    assert heavy.samples_per_second < compute_only.samples_per_second
    assert "memory bound at every batch up to 1" in heavy.basis


# ------------------------------------------------------------------------------------- the CLI
def test_cli_prints_the_table_and_the_comparison(home: Path) -> None:
    result = CliRunner().invoke(app, ["twin", "cost", "--model", MODEL], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "inf2.xlarge" in result.output and "$/M inferences" in result.output
    assert "modelled" in result.output and "AWS yardstick" in result.output


def test_cli_json_parses(home: Path) -> None:
    result = CliRunner().invoke(app, ["twin", "cost", "--model", MODEL, "--json", "--utilisation", "0.5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == MODEL and data["utilisation"] == 0.5
    assert {row["key"] for row in data["rows"]} >= {"aws-inf2.xlarge", "aws-g6.xlarge"}
    assert data["comparison"]["verdict"] in {"reproduced", "not reproduced", "refuted", "undecided"}


def test_cli_unknown_model_is_a_clear_error_listing_the_known_ones(home: Path) -> None:
    result = CliRunner().invoke(app, ["twin", "cost", "--model", "nope"])
    assert result.exit_code == 2
    assert "'nope' not found" in result.output and MODEL in result.output
    assert "Traceback" not in result.output


def test_cli_efficiency_is_a_what_if_and_a_bad_one_is_a_clear_error(home: Path) -> None:
    result = CliRunner().invoke(app, ["twin", "cost", "--model", MODEL, "--json", "--efficiency", "0.25"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["efficiency"] == 0.25
    assert all(row["efficiency"] == 0.25 for row in data["rows"] if row["label"] == "modelled")
    own = json.loads(CliRunner().invoke(app, ["twin", "cost", "--model", MODEL, "--json"]).output)
    assert own["efficiency"] is None
    bad = CliRunner().invoke(app, ["twin", "cost", "--model", MODEL, "--efficiency", "1.5"])
    assert bad.exit_code == 2 and "--efficiency must be in (0, 1], got 1.5" in bad.output


def test_cli_refuses_a_bad_user_price_table(home: Path, tmp_path: Path) -> None:
    path = _table(GOOD_ROW.replace('source = "a test"\n', ""), tmp_path)
    result = CliRunner().invoke(app, ["twin", "cost", "--model", MODEL, "--prices", str(path)])
    assert result.exit_code == 2 and "source: missing" in result.output
