"""A graph split into stages (kcloud.models.partition) and run as a pipeline of workers gives the
unsplit graph's outputs; bad partition requests are refused with where the graph can be cut."""

from __future__ import annotations

import asyncio
import json
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.datasets import load_dataset
from kcloud.models.partition import MAX_CUT_WIDTH, PartitionError, partition
from kcloud.models.pipelines import graph_feeds
from kcloud.serving.pipeline_worker import PipelineWorker, StageIO
from kcloud.serving.worker import ProcessWorker, ThreadWorker


@pytest.fixture(scope="module")
def minilm(builtin_repository):
    return builtin_repository.get("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def digits(builtin_repository):
    return builtin_repository.get("digits-cnn")


def _cpu(index: int) -> Device:
    return Device(
        id=f"cpu{index}",
        node=platform.node() or "local",
        plugin="cpu",
        vendor="cpu",
        spec=load_catalog().get("cpu-generic"),
        name="host CPU",
    )


def _run_pipeline(parts, feeds, worker_class, micro_batch: int, requests=None):
    async def main():
        workers = [worker_class(stage.path, _cpu(i), threads=1) for i, stage in enumerate(parts.stages)]
        pipeline = PipelineWorker(
            workers,
            [StageIO(s.inputs, s.outputs) for s in parts.stages],
            parts.graph_outputs,
            micro_batch=micro_batch,
        )
        await pipeline.start()
        try:
            rows = next(iter(feeds.values())).shape[0]
            return await pipeline.run(feeds, requests or [(rows, None)])
        finally:
            await pipeline.close()

    return asyncio.run(main())


def _unsplit(path: Path, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("stages", [2, 3])
def test_minilm_in_stages_on_worker_processes_equals_the_whole_graph(minilm, tmp_path, stages):
    samples = load_dataset(minilm).inputs
    calibration = graph_feeds(minilm, samples[:16])[:2]
    parts = partition(minilm.weights_path, stages, tmp_path, feeds=calibration)
    assert len(parts.stages) == stages and parts.balance < 1.5
    assert parts.cost_basis.startswith("measured")
    assert abs(sum(s.cost_share for s in parts.stages) - 1) < 1e-9
    feeds = graph_feeds(minilm, samples[:10], batch=10)[0]
    computed = _run_pipeline(parts, feeds, ProcessWorker, micro_batch=3)  # 3+3+3+1 rows
    want = _unsplit(minilm.weights_path, feeds)
    np.testing.assert_allclose(computed.outputs["embedding"], want["embedding"], rtol=1e-5, atol=1e-5)


def test_digits_pipeline_leaves_out_expired_requests(digits, tmp_path):
    parts = partition(digits.weights_path, 2, tmp_path, feeds=None)
    assert parts.cost_basis.startswith("modelled")
    feeds = {"image": np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)}
    computed = _run_pipeline(parts, feeds, ThreadWorker, micro_batch=2, requests=[(2, 0.0), (3, None)])
    assert computed.live == [False, True]
    want = _unsplit(digits.weights_path, {"image": feeds["image"][2:]})
    np.testing.assert_array_equal(computed.outputs["label"], want["label"])
    np.testing.assert_allclose(computed.outputs["probabilities"], want["probabilities"], rtol=1e-6)


def test_memory_limit_shapes_the_split(minilm, tmp_path):
    whole = sum(s.weight_bytes for s in partition(minilm.weights_path, 1, tmp_path / "one").stages)
    limit = int(whole * 0.6)  # the 47 MB word-embedding table and a few layers
    calibration = graph_feeds(minilm, load_dataset(minilm).inputs[:16])[:2]
    free = partition(minilm.weights_path, 3, tmp_path / "free", feeds=calibration)
    assert max(s.weight_bytes for s in free.stages) > limit  # balanced by time alone, stage 0 is too big
    parts = partition(minilm.weights_path, 3, tmp_path / "three", feeds=calibration, memory_limit=limit)
    assert all(s.weight_bytes <= limit for s in parts.stages)
    with pytest.raises(PartitionError, match="no split into 2 stages keeps every stage within 1000 bytes"):
        partition(minilm.weights_path, 2, tmp_path / "tiny", memory_limit=1000)


def test_bad_partition_requests(digits, minilm, tmp_path):
    nodes = len(onnx.load(str(digits.weights_path)).graph.node)
    with pytest.raises(PartitionError, match=f"can be cut into at most {nodes} stages"):
        partition(digits.weights_path, nodes + 1, tmp_path / "many")
    with pytest.raises(PartitionError, match="at least 1 stage"):
        partition(digits.weights_path, 0, tmp_path / "none")
    with pytest.raises(PartitionError, match="cannot cut after 'no-such-node': no node of that name"):
        partition(minilm.weights_path, 2, tmp_path / "x", cut_after=["no-such-node"])
    wide = "encoder.layer.0.scores_36"  # inside attention: more than MAX_CUT_WIDTH tensors cross
    with pytest.raises(PartitionError, match=f"cannot cut after '{wide}': more than {MAX_CUT_WIDTH} tensors"):
        partition(minilm.weights_path, 2, tmp_path / "y", cut_after=[wide])
    with pytest.raises(PartitionError, match="3 stages need 2 cut"):
        partition(minilm.weights_path, 3, tmp_path / "z", cut_after=["embeddings.LayerNorm_10"])
    asked = partition(minilm.weights_path, 2, tmp_path / "ok", cut_after=["embeddings.LayerNorm_10"])
    assert asked.stages[0].last == 5


def test_cli_partition(builtin_repository, tmp_path):
    from typer.testing import CliRunner

    from kcloud.cli import app

    runner = CliRunner()
    base = ["models", "partition", "all-MiniLM-L6-v2", "--repo", str(builtin_repository.root)]
    done = runner.invoke(
        app, [*base, "--stages", "2", "--memory-limit", "80MB", "--out", str(tmp_path), "--json"]
    )
    assert done.exit_code == 0, done.output
    plan = json.loads(done.output)
    assert len(plan["stages"]) == 2 and all(s["weight_bytes"] <= 80e6 for s in plan["stages"])
    assert (tmp_path / "stage-1.onnx").is_file() and plan["cost_basis"].startswith("measured")
    for args, fragment in (
        (["--stages", "2", "--memory-limit", "lots"], "'lots' is not a size"),
        (
            ["--stages", "2", "--memory-limit", "1kB"],
            "no split into 2 stages keeps every stage within 1000 bytes",
        ),
        (["--stages", "100000"], "can be cut into at most"),
    ):
        bad = runner.invoke(app, [*base, *args, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and fragment in " ".join(bad.output.split()), bad.output
