"""The router over real replicas: least-loaded spread, retry on a killed worker, readiness."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
from synthetic_models import add_model, build_double, build_slow, cpu_device

from kcloud.models.errors import ModelNotFoundError
from kcloud.models.pipeline import InputError
from kcloud.models.repository import ModelRepository
from kcloud.serving.errors import (
    ModelNotReadyError,
    QueueFullError,
    ReplicaDiedError,
    ServingError,
)
from kcloud.serving.replica import create_replica
from kcloud.serving.router import Router

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("router")
    repository = ModelRepository(base / "repo")
    add_model(repository, "double", build_double(base / "double.onnx"), 4,
              max_batch_size=8, max_queue_delay_ms=5)
    add_model(repository, "slow", build_slow(base / "slow.onnx", layers=8), 512,
              max_batch_size=16, max_queue_delay_ms=1, queue_limit=256)
    return repository


async def router_with(repo, model: str, count: int, isolation: str = "thread") -> Router:
    router = Router(repo)
    replicas = [create_replica(repo.get(model), cpu_device(), isolation=isolation, threads=1,
                               replica_id=f"{model}-{i}") for i in range(count)]
    await asyncio.gather(*(r.start() for r in replicas))
    for replica in replicas:
        router.add_replica(replica)
    return router


async def test_requests_spread_over_the_least_loaded_replicas(repo):
    router = await router_with(repo, "double", 2)
    try:
        inputs = [np.full((1, 4), i, np.float32) for i in range(64)]
        outcomes = await asyncio.gather(*(router.infer("double", None, {"x": x}) for x in inputs))
        for x, outcome in zip(inputs, outcomes, strict=True):
            np.testing.assert_array_equal(outcome.outputs["y"], 2 * x)
        spread = collections.Counter(o.replica_id for o in outcomes)
        assert set(spread) == {"double-0", "double-1"} and min(spread.values()) >= 24, spread
    finally:
        await router.close()


async def test_a_loaded_replica_is_avoided(repo):
    router = await router_with(repo, "slow", 2)
    try:
        busy, idle = router.replicas("slow")
        rows = busy.pipeline.prepare({"x": np.ones((16, 512), np.float32)})
        backlog = [asyncio.ensure_future(busy.infer(rows, deadline=None)) for _ in range(8)]
        await asyncio.sleep(0)
        assert busy.load == 128
        outcomes = await asyncio.gather(
            *(router.infer("slow", 1, {"x": np.ones((1, 512), np.float32)}) for _ in range(3)))
        assert {o.replica_id for o in outcomes} == {idle.id}
        await asyncio.gather(*backlog)
    finally:
        await router.close()


async def test_killed_worker_loses_no_request(repo, caplog):
    """SIGKILL one of two worker processes under load: every request ends, answered by the
    survivor after a retry or with an explicit serving error; none is lost or hangs."""
    router = await router_with(repo, "slow", 2, isolation="process")
    died = []
    router.on_replica_died.append(died.append)
    victim, survivor = router.replicas("slow")
    total = 300
    done = collections.Counter()
    answered_after_kill = collections.Counter()
    killed = asyncio.Event()

    async def client(i: int) -> None:
        x = np.full((1, 512), i / total, np.float32)
        started_after_kill = killed.is_set()
        try:
            outcome = await router.infer("slow", None, {"x": x})
        except ServingError as exc:
            done[type(exc).__name__] += 1
            return
        assert outcome.outputs["y"].shape == (1, 512)
        done["ok"] += 1
        if started_after_kill:
            answered_after_kill[outcome.replica_id] += 1

    async def killer() -> None:
        async with asyncio.timeout(20):
            # Kill only while requests wait in the victim's queue: they can end only by a retry
            # (sent to a dead worker, or failed by the death), whatever the worker had computed.
            while victim.batcher.rows_per_second is None or victim.batcher.queued < 4:
                await asyncio.sleep(0.001)
        os.kill(victim.pid, signal.SIGKILL)
        killed.set()

    try:
        async with asyncio.timeout(60):
            kill = asyncio.ensure_future(killer())
            clients = []
            sent_after_kill = 0
            # At most 32 in flight, like a closed-loop load generator; at least `total` requests,
            # and 32 more once the kill happened, so that some are sent to the survivor alone.
            while len(clients) < total or sent_after_kill < 32:
                sent_after_kill += killed.is_set()
                clients.append(asyncio.ensure_future(client(len(clients))))
                if len(clients) >= 32:
                    await clients[-32]
            await asyncio.gather(kill, *clients)
        print(f"kill under load: {dict(done)}, answered after the kill: {dict(answered_after_kill)}, "
              f"retried: {len([r for r in caplog.records if r.getMessage().startswith('retrying')])}")
        assert sum(done.values()) == len(clients), done
        assert set(done) <= {"ok", QueueFullError.__name__, ReplicaDiedError.__name__}, done
        # only requests on the victim could fail, and retries save them
        assert done["ok"] >= len(clients) - 32, done
        retries = [r for r in caplog.records if r.getMessage().startswith("retrying a request")]
        assert retries, "the kill hit no request: nothing was retried"
        assert not victim.alive and survivor.alive
        assert died == [victim]
        assert answered_after_kill[survivor.id] > 0 and answered_after_kill[victim.id] == 0
        assert router.is_ready("slow")
        outcome = await router.infer("slow", None, {"x": np.ones((1, 512), np.float32)})
        assert outcome.replica_id == survivor.id
    finally:
        await router.close()


async def test_no_live_replica_is_not_ready(repo):
    router = await router_with(repo, "double", 1, isolation="process")
    try:
        (replica,) = router.replicas()
        died = asyncio.Event()
        router.on_replica_died.append(lambda r: died.set())
        os.kill(replica.pid, signal.SIGKILL)
        await asyncio.wait_for(died.wait(), timeout=10)
        assert not router.is_ready("double")
        assert [e.name for e in router.served_models()] == ["double"]  # still served, awaiting a new replica
        with pytest.raises(ModelNotReadyError):
            await router.infer("double", None, {"x": np.ones((1, 4), np.float32)})
    finally:
        await router.close()


async def test_entries_versions_and_unknown_models(repo):
    router = await router_with(repo, "double", 1)
    try:
        assert [(e.name, e.version) for e in router.served_models()] == [("double", 1)]
        assert router.served("double").version == 1 and router.served("double", 1).name == "double"
        assert router.is_ready("double") and router.is_ready("double", 1)
        assert not router.is_ready("double", 2) and not router.is_ready("nope")
        with pytest.raises(ModelNotFoundError, match=r"not served.*double"):
            router.served("nope")
        with pytest.raises(ModelNotFoundError, match="no served version 2"):
            await router.infer("double", 2, {"x": np.ones((1, 4), np.float32)})
        with pytest.raises(ModelNotFoundError):
            router.served("slow")  # in the repository, but no replica serves it
    finally:
        await router.close()


async def test_bad_input_never_reaches_a_queue(repo):
    router = await router_with(repo, "double", 1)
    try:
        (replica,) = router.replicas()
        bad_inputs = ({"x": np.ones((1, 5), np.float32)}, {"x": np.ones((1, 4), np.int32)}, {},
                      {"x": np.ones((1, 4), np.float32), "extra": np.ones(1)},
                      {"x": np.ones((9, 4), np.float32)})  # wider, wrong type, none, extra, over max batch
        for bad in bad_inputs:
            with pytest.raises(InputError):
                await router.infer("double", None, bad)
        assert replica.load == 0 and replica.batcher.rows_per_second is None  # nothing was computed
        ok = await router.infer("double", None, {"x": np.ones((1, 4), np.float32)})
        assert ok.outputs["y"][0, 0] == 2
    finally:
        await router.close()


async def test_remove_replica_stops_it_and_the_model_goes(repo):
    router = await router_with(repo, "double", 1)
    (replica,) = router.replicas()
    removed = await router.remove_replica(replica.id)
    assert removed is replica and not replica.alive
    assert router.served_models() == [] and await router.remove_replica(replica.id) is None
    with pytest.raises(ModelNotFoundError):
        await router.infer("double", None, {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(ValueError, match="already routed"):
        router.add_replica(replica)
        router.add_replica(replica)
    await router.close()


async def test_a_replaced_replica_keeps_its_model_known_until_the_replacement(repo):
    """The control plane removes a dead replica before its replacement starts: meanwhile the model
    is served but not ready (503), not unknown (404)."""
    router = await router_with(repo, "double", 1)
    (replica,) = router.replicas()
    await router.remove_replica(replica.id, replaced=True)
    assert [e.name for e in router.served_models()] == ["double"]
    assert not router.is_ready("double")
    with pytest.raises(ModelNotReadyError):
        await router.infer("double", None, {"x": np.ones((1, 4), np.float32)})
    replacement = create_replica(repo.get("double"), cpu_device(), isolation="thread", threads=1,
                                 replica_id="double-new")
    await replacement.start()
    router.add_replica(replacement)
    assert router.is_ready("double")
    await router.remove_replica(replacement.id)  # stopped on purpose: now the model goes
    assert router.served_models() == []
    await router.close()
