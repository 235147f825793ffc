"""Capacity accounting: sourced figures summed, unknowns counted and listed, never zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcloud.devices.inventory import Inventory
from kcloud.farm.capacity import Total, capacity_report

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"

FARM = """
[[nodes]]
name = "a"
devices = [ { chip = "furiosa-rngd", count = 2 }, { chip = "sapeon-x220-enterprise", count = 3 } ]

[[nodes]]
name = "b"
devices = [ { chip = "rebellions-atom-ca22", count = 4 }, { chip = "furiosa-warboy", count = 1 } ]
"""


@pytest.fixture
def report(tmp_path: Path):
    path = tmp_path / "farm.toml"
    path.write_text(FARM)
    return capacity_report(Inventory.build([path], include_local=False).devices)


def test_totals_sum_known_figures(report) -> None:
    # RNGD: 256 BF16 TFLOPS, 512 INT8 TOPS, 180 W; ATOM CA22: 32 FP16, 128 INT8, 90 W; Warboy: 64 INT8, 60 W
    half = report.totals["fp16_bf16_pflops"]
    assert half.known == pytest.approx((2 * 256 + 4 * 32) / 1000)
    assert (half.known_devices, half.unknown_devices) == (6, 4)  # 3 Sapeon + 1 Warboy unknown
    int8 = report.totals["int8_pops"]
    assert int8.known == pytest.approx((2 * 512 + 4 * 128 + 64) / 1000)
    assert int8.unknown_devices == 3
    tdp = report.totals["tdp_watts"]
    assert tdp.known == pytest.approx(2 * 180 + 4 * 90 + 60)
    assert report.devices == 10 and report.emulated == 10


def test_breakdowns(report) -> None:
    assert set(report.by_vendor) == {"furiosa", "sapeon", "rebellions"}
    assert set(report.by_node) == {"a", "b"}
    assert report.by_chip["furiosa-rngd"].devices == 2
    assert report.by_chip["furiosa-rngd"].totals["tdp_watts"].known == pytest.approx(360)
    assert report.by_node["b"].totals["int8_pops"].complete


def test_all_unknown_group_is_unknown_not_zero(report) -> None:
    sapeon = report.by_vendor["sapeon"].totals["int8_pops"]
    assert sapeon.known is None and sapeon.unknown_devices == 3
    assert sapeon.display() == "unknown (3 devices)"


def test_unknowns_are_listed_with_the_catalog_note(report) -> None:
    listed = report.unknown["int8_pops"]
    assert [u.uid for u in listed] == ["a/x220-enterprise0", "a/x220-enterprise1", "a/x220-enterprise2"]
    assert listed[0].note == "not published in the sources read"


def test_partial_total_reads_at_least(report) -> None:
    text = report.totals["int8_pops"].display()
    assert text.startswith("≥ 1.6") and "(3 devices unknown)" in text


def test_report_is_json_serialisable(report) -> None:
    document = json.loads(json.dumps(report.model_dump(mode="json")))
    assert document["totals"]["int8_pops"]["unknown_devices"] == 3
    assert document["by_vendor"]["sapeon"]["totals"]["tdp_watts"]["known"] is None
    assert document["totals"]["tdp_watts"]["text"].startswith("≥ 780 W")


def test_display_forms() -> None:
    assert Total(unit="W", known=90.0, known_devices=1).display() == "90 W"
    partial = Total(unit="W", known=1800.0, known_devices=2, unknown_devices=1)
    assert partial.display() == "≥ 1,800 W (1 device unknown)"
    assert Total(unit="W", unknown_devices=2).display() == "unknown (2 devices)"


def test_example_farm_totals_have_unknowns() -> None:
    report = capacity_report(Inventory.build([EXAMPLE], include_local=False).devices)
    assert len(report.by_vendor) >= 4
    assert not report.totals["fp16_bf16_pflops"].complete  # Sapeon's figures are not published
    assert report.totals["fp16_bf16_pflops"].known > 0
