"""Modelled device time for emulated devices, from the catalog's sourced peak figures."""

from __future__ import annotations

import pytest

from kcloud.devices.catalog import load_catalog
from kcloud.runtimes import DEFAULT_EFFICIENCY, chip_efficiency, modelled_device_seconds
from kcloud.runtimes.modelled import RESNET50_OPS_PER_SAMPLE, roofline

CATALOG = load_catalog()


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


def test_each_chip_with_an_mlperf_result_gets_its_own_factor():
    # chips.md, MLPerf Inference closed, ResNet-50 Offline: ATOM 7,245.87/s on 128 INT8 TOPS,
    # Warboy 2,758.44/s on 64 INT8 TOPS.
    for key in ("rebellions-atom-ca02", "rebellions-atom-ca12", "rebellions-atom-ca22"):
        value, basis = chip_efficiency(CATALOG.get(key))
        assert value == pytest.approx(7245.87 * RESNET50_OPS_PER_SAMPLE / 128e12)  # 0.464
        assert basis == "MLPerf v3.0 ResNet-50 Offline 7,245.87 samples/s × 8.2 G / 128 INT8 TOPS = 0.46"
    value, basis = chip_efficiency(CATALOG.get("furiosa-warboy"))
    assert value == pytest.approx(2758.44 * RESNET50_OPS_PER_SAMPLE / 64e12)  # 0.353
    assert basis == "MLPerf v2.0 ResNet-50 Offline 2,758.44 samples/s × 8.2 G / 64 INT8 TOPS = 0.35"


def test_a_chip_without_both_figures_gets_the_default_labelled_as_such():
    value, basis = chip_efficiency(CATALOG.get("furiosa-rngd"))
    assert value == DEFAULT_EFFICIENCY and basis.startswith("default 0.4")
    assert "no MLPerf ResNet-50 result for furiosa-rngd" in basis
    # Sapeon published an MLPerf result but no INT8 TOPS: nothing to divide it by.
    value, basis = chip_efficiency(CATALOG.get("sapeon-x220-enterprise"))
    assert value == DEFAULT_EFFICIENCY and "no INT8 TOPS" in basis
    # the ATOM-Max card carries several ATOM dies: the one-chip result is not its own
    assert chip_efficiency(CATALOG.get("rebellions-atom-ca25"))[1].startswith("default")


def test_the_default_stays_near_the_mean_of_the_catalogs_derived_factors():
    """The default is documented as the mean of the MLPerf-derived factors: a new or corrected
    catalog result that moves that mean must move the default too."""
    derived = {spec.chip: chip_efficiency(spec)[0] for spec in CATALOG
               if not chip_efficiency(spec)[1].startswith("default")}
    assert set(derived) >= {"ATOM", "Warboy"}
    assert abs(sum(derived.values()) / len(derived) - DEFAULT_EFFICIENCY) <= 0.05


def test_the_chips_own_factor_is_used_unless_a_what_if_is_given():
    atom = CATALOG.get("rebellions-atom-ca22")  # 32 FP16 TFLOPS
    own = modelled_device_seconds(1e9, 4, atom)
    assert own.seconds == pytest.approx(1e9 * 4 / (32e12 * chip_efficiency(atom)[0]))
    assert "efficiency 0.46 (MLPerf v3.0 ResNet-50 Offline" in own.basis
    what_if = modelled_device_seconds(1e9, 4, atom, efficiency=0.5)
    assert what_if.seconds == pytest.approx(1e9 * 4 / (32e12 * 0.5))
    assert "efficiency 0.5 (0.5 given as a what-if" in what_if.basis


def test_a_model_of_large_weights_and_few_flops_is_memory_bound_on_a_low_bandwidth_chip():
    warboy = CATALOG.get("furiosa-warboy")  # 64 INT8 TOPS, 66 GB/s
    factor = chip_efficiency(warboy)[0]
    weights = 400_000_000  # FP32 bytes; Warboy reads them as INT8: 100 MB a batch
    one = modelled_device_seconds(1e6, 1, warboy, weight_bytes=weights)
    assert one.bound == "memory"
    assert one.seconds == pytest.approx(100e6 / (66e9 * factor))  # 4.3 ms, not the 44 ns of compute
    assert "memory bound at 1 row" in one.basis and "memory_bandwidth_gbps=66" in one.basis
    assert "100 MB of INT8 weights" in one.basis
    # the weights are read once per batch: many rows cost no more until compute catches up
    batch = modelled_device_seconds(1e6, 64, warboy, weight_bytes=weights)
    assert batch.seconds == pytest.approx(one.seconds)
    many = modelled_device_seconds(1e6, 200_000, warboy, weight_bytes=weights)
    assert many.bound == "compute" and many.seconds == pytest.approx(1e6 * 200_000 / (64e12 * factor))


def test_weights_are_read_at_the_precisions_width():
    rngd = CATALOG.get("furiosa-rngd")  # BF16, FP8 and INT8 figures; 1,500 GB/s
    memory = {precision: roofline(rngd, 1.0, weight_bytes=4_000_000, precision=precision).memory_s_per_batch
              for precision in ("fp32", "bf16", "int8", "fp8", None)}
    assert memory["fp32"] == pytest.approx(4e6 / (1500e9 * DEFAULT_EFFICIENCY))
    assert memory["bf16"] == pytest.approx(memory["fp32"] / 2)
    assert memory["int8"] == pytest.approx(memory["fp32"] / 4) == pytest.approx(memory["fp8"])
    # without a precision the chip runs at its default figure (BF16 here), and reads BF16 weights
    assert memory[None] == pytest.approx(memory["bf16"])
    assert "of BF16 weights" in roofline(rngd, 1.0, weight_bytes=4_000_000).basis


def test_unknown_bandwidth_or_weights_leave_the_compute_term_and_say_so():
    t4 = CATALOG.get("nvidia-t4")  # 65 FP16 TFLOPS, bandwidth not in the catalog
    modelled = modelled_device_seconds(1e9, 2, t4, weight_bytes=10**9)
    assert modelled.seconds == pytest.approx(1e9 * 2 / (65e12 * DEFAULT_EFFICIENCY))
    assert "memory bandwidth unknown: compute term only" in modelled.basis
    no_weights = modelled_device_seconds(1e9, 2, CATALOG.get("furiosa-rngd"))
    assert "weight bytes unknown: compute term only" in no_weights.basis


def test_a_model_without_flops_takes_no_modelled_time():
    noop = modelled_device_seconds(0.0, 64, load_catalog().get("furiosa-rngd"))  # e.g. the identity model
    assert noop.seconds == 0.0


@pytest.mark.parametrize("kwargs", [{"efficiency": 0}, {"efficiency": 1.5}, {"efficiency": float("nan")},
                                    {"rows": -1}, {"flops_per_sample": -1.0}, {"weight_bytes": -1}])
def test_bad_parameters_are_refused(kwargs):
    args = {"flops_per_sample": 1e9, "rows": 1, "spec": load_catalog().get("furiosa-rngd"), **kwargs}
    keywords = {k: args.pop(k) for k in ("efficiency", "weight_bytes") if k in args}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        modelled_device_seconds(args["flops_per_sample"], args["rows"], args["spec"], **keywords)
