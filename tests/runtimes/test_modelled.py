"""Modelled device time for emulated devices, from the catalog's sourced peak figures."""

from __future__ import annotations

import pytest

from kcloud.devices.catalog import load_catalog
from kcloud.runtimes import DEFAULT_EFFICIENCY, modelled_device_seconds
from kcloud.runtimes.modelled import RESNET50_OPS_PER_SAMPLE


def test_float_peak_is_used_when_the_catalog_has_one():
    rngd = load_catalog().get("furiosa-rngd")  # 256 BF16 TFLOPS, no FP16 figure
    modelled = modelled_device_seconds(1e9, 32, rngd)
    assert modelled.modelled
    assert modelled.seconds == pytest.approx(1e9 * 32 / (256e12 * DEFAULT_EFFICIENCY))
    assert "bf16_tflops=256" in modelled.basis


def test_int8_tops_stand_in_without_a_float_figure():
    warboy = load_catalog().get("furiosa-warboy")  # 64 INT8 TOPS only
    modelled = modelled_device_seconds(2e6, 10, warboy, efficiency=0.5)
    assert modelled.seconds == pytest.approx(2e6 * 10 / (64e12 * 0.5))
    assert "int8_tops=64" in modelled.basis and "no float figure" in modelled.basis


def test_unknowns_give_none_with_a_reason():
    sapeon = load_catalog().get("sapeon-x220-enterprise")  # no compute figure published
    unknown_chip = modelled_device_seconds(1e9, 1, sapeon)
    assert unknown_chip.seconds is None and "sapeon-x220-enterprise" in unknown_chip.reason
    no_flops = modelled_device_seconds(None, 1, load_catalog().get("furiosa-rngd"))
    assert no_flops.seconds is None and "flops_per_sample" in no_flops.reason


def test_default_efficiency_matches_the_mlperf_derivation():
    # chips.md, MLPerf Inference closed, ResNet-50 Offline: ATOM 7,245.87/s on 128 INT8 TOPS,
    # Warboy 2,758.44/s on 64 INT8 TOPS.
    atom = 7245.87 * RESNET50_OPS_PER_SAMPLE / 128e12
    warboy = 2758.44 * RESNET50_OPS_PER_SAMPLE / 64e12
    assert pytest.approx((atom + warboy) / 2, abs=0.01) == DEFAULT_EFFICIENCY


def test_a_model_without_flops_takes_no_modelled_time():
    noop = modelled_device_seconds(0.0, 64, load_catalog().get("furiosa-rngd"))  # e.g. the identity model
    assert noop.seconds == 0.0


@pytest.mark.parametrize("kwargs", [{"efficiency": 0}, {"efficiency": 1.5}, {"rows": -1},
                                    {"flops_per_sample": -1.0}])
def test_bad_parameters_are_refused(kwargs):
    args = {"flops_per_sample": 1e9, "rows": 1, "spec": load_catalog().get("furiosa-rngd"), **kwargs}
    efficiency = args.pop("efficiency", DEFAULT_EFFICIENCY)
    with pytest.raises(ValueError):
        modelled_device_seconds(args["flops_per_sample"], args["rows"], args["spec"], efficiency=efficiency)
