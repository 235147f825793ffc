"""The holding check names the limit crossed and refuses what it cannot count."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kcloud.tenancy.quotas import HeldDevice, Holding, QuotaLimits, check_holding


def _holding(replicas: int, *devices: HeldDevice) -> Holding:
    holding = Holding()
    holding.add(replicas, list(devices))
    return holding


NPU = HeldDevice("n1/rbln0", "rebellions", 0.128)
NPU2 = HeldDevice("n1/rbln1", "rebellions", 0.128)
GPU = HeldDevice("n1/nvidia0", "nvidia", 0.989)
CPU = HeldDevice("n1/cpu0", "cpu", None)


def test_within_quota_passes():
    limits = QuotaLimits(max_replicas=3, max_devices=2, max_devices_per_vendor={"rebellions": 2}, max_pf=0.3)
    assert check_holding("acme", limits, _holding(3, NPU, NPU2)) is None


def test_each_limit_is_named_with_the_numbers():
    v = check_holding("acme", QuotaLimits(max_replicas=1), _holding(2, NPU))
    assert v is not None and v.limit == "max_replicas" and "2 replicas" in v.reason and "allows 1" in v.reason
    v = check_holding("acme", QuotaLimits(max_devices=1), _holding(2, NPU, GPU))
    assert v is not None and v.limit == "max_devices"
    one_npu = QuotaLimits(max_devices_per_vendor={"rebellions": 1})
    v = check_holding("acme", one_npu, _holding(2, NPU, NPU2, GPU))
    assert v is not None and v.limit == "max_devices_per_vendor.rebellions"
    assert "2 rebellions devices" in v.reason
    v = check_holding("acme", QuotaLimits(max_pf=1.0), _holding(2, NPU, GPU))
    assert v is not None and v.limit == "max_pf" and "1.117 FP16/BF16 PFLOPS" in v.reason


def test_replicas_sharing_a_device_count_it_once():
    assert check_holding("acme", QuotaLimits(max_devices=1), _holding(4, NPU, NPU)) is None


def test_unknown_compute_cannot_be_counted_against_a_pf_cap():
    v = check_holding("acme", QuotaLimits(max_pf=10), _holding(1, CPU))
    assert v is not None and "no FP16/BF16 PFLOPS figure" in v.reason and "n1/cpu0" in v.reason
    assert check_holding("acme", QuotaLimits(), _holding(1, CPU)) is None


@pytest.mark.parametrize("bad", [{"max_replicas": -1}, {"requests_per_second": 0}, {"burst": 0}, {"nope": 1}])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValidationError):
        QuotaLimits(**bad)
