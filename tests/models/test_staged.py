"""Stage plans for pipeline deployments: memory split by weight share, the fewest stages that fit,
stage files cut once and kept, and a pipeline's placement one device per stage, all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiled_models import write_mlp_model
from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.farm.placement import FarmView, PlacementEngine, PlacementRequest
from kcloud.farm.stages import place_pipeline
from kcloud.models.partition import PartitionError
from kcloud.models.repository import ModelRepository
from kcloud.models.staged import StagePlan, fewest_stages, plan_stages, stage_partition

GIB = 2**30


def _atom(index: int) -> Device:
    """An emulated Rebellions ATOM (16 GiB, the catalog's figure), as a farm file declares it."""
    spec = load_catalog().get("rebellions-atom-ca22")
    return Device(
        id=f"atom{index}",
        node="n",
        plugin="emulated",
        vendor=spec.vendor,
        spec=spec,
        name=spec.key,
        emulated=True,
        memory_bytes=16 * GIB,
    )


@pytest.fixture
def mlp(tmp_path: Path):
    """y = relu(x @ W1) @ W2 declaring 20 GiB: its weights are 2 KiB (W1) and 1 KiB (W2)."""
    repo = ModelRepository(tmp_path / "repo")
    repo.add(write_mlp_model(tmp_path / "src", memory_bytes=20 * GIB))
    return repo.get("mlp")


def test_stage_memory_is_the_declared_memory_split_by_weight_share(mlp):
    plan = plan_stages(mlp, 2)
    assert plan.stages == 2 and len(plan.cuts) == 1
    assert plan.memory_bytes == (-(-20 * GIB * 2 // 3), -(-20 * GIB // 3))
    assert abs(sum(plan.cost_shares) - 1) < 1e-9 and plan.cost_basis.startswith("measured")
    assert StagePlan.from_json(plan.as_json()) == plan
    assert "2 stages (cost" in plan.summary()


def test_fewest_stages_that_fit_and_the_refusals(mlp):
    assert fewest_stages(mlp, 16 * GIB).stages == 2
    with pytest.raises(PartitionError, match=r"does not fit the largest device it may use \(1 GiB\)"):
        fewest_stages(mlp, 1 * GIB)  # W1 alone is 2/3 of 20 GiB
    with pytest.raises(PartitionError, match="cannot be split into 2 stages that each fit 10 GiB"):
        plan_stages(mlp, 2, memory_limit=10 * GIB)
    with pytest.raises(PartitionError, match="can be cut into at most 3 stages"):
        plan_stages(mlp, 4)


def test_stage_files_are_cut_once_and_recut_when_torn(mlp):
    plan = plan_stages(mlp, 2)
    parts = stage_partition(mlp, plan)
    paths = [stage.path for stage in parts.stages]
    assert all(p is not None and p.is_file() for p in paths)
    assert parts.graph_outputs == ("y",) and parts.stages[0].inputs == ("x",)
    stamp = paths[0].stat().st_mtime_ns
    assert [s.path for s in stage_partition(mlp, plan).stages] == paths
    assert paths[0].stat().st_mtime_ns == stamp  # kept, not cut again
    paths[1].unlink()
    again = stage_partition(mlp, plan)
    assert again.stages[1].path.is_file() and again.stages[1].outputs == ("y",)


def test_a_pipeline_replica_is_placed_whole_or_not_at_all():
    view = FarmView([_atom(i) for i in range(3)])
    plan = StagePlan(cuts=(1,), memory_bytes=(12 * GIB, 10 * GIB), cost_shares=(0.6, 0.4), cost_basis="test")
    result = place_pipeline(
        PlacementEngine(view), PlacementRequest("d", "m", count=2, memory_bytes=22 * GIB), plan
    )
    # Three 16 GiB devices hold one replica's two stages; the second replica's stage 0 takes the third
    # device, its stage 1 (10 GiB) finds no device with room, so stage 0 is given back.
    assert result.outcome == "partial" and result.placed == 1
    first, second = result.stage_devices(0)
    assert first != second
    assert sorted(view.memory_used / GIB) == [0.0, 10.0, 12.0]
    assert "no device for stage 1" in result.reason and "not enough free memory" in result.reason
    lines = {c.device_uid: c for c in result.candidates()}
    assert lines[first].reason.startswith("stage 0: chosen") and lines[second].reason.startswith(
        "stage 1: chosen"
    )


def test_stages_share_a_device_only_when_no_other_has_room():
    plan = StagePlan(cuts=(1,), memory_bytes=(4 * GIB, 4 * GIB), cost_shares=(0.5, 0.5), cost_basis="test")
    alone = FarmView([_atom(0)])
    result = place_pipeline(PlacementEngine(alone), PlacementRequest("d", "m", count=1), plan)
    assert result.placed == 1 and result.stage_devices(0) == ["n/atom0", "n/atom0"]
    [line] = [c for c in result.candidates() if c.chosen]
    assert (
        line.chosen == 2
        and "stage 1: chosen" in line.reason
        and "shares the device with an earlier stage" in line.reason
    )
    assert alone.memory_used[0] == 8 * GIB
    two = place_pipeline(
        PlacementEngine(FarmView([_atom(0), _atom(1)])), PlacementRequest("d", "m", count=1), plan
    )
    assert sorted(two.stage_devices(0)) == ["n/atom0", "n/atom1"] and not two.shared


def test_placing_no_pipeline_replica_records_nothing():
    plan = StagePlan(cuts=(1,), memory_bytes=(GIB, GIB), cost_shares=(0.5, 0.5), cost_basis="test")
    none = place_pipeline(PlacementEngine(FarmView([_atom(0)])), PlacementRequest("d", "m", count=0), plan)
    assert (none.outcome, none.reason, none.candidates()) == ("placed", "nothing to place", [])
