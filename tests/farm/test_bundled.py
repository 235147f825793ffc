"""The models `kcloud up` serves by itself are deployments of the control plane (one owner of replicas).

`ControlPlaneService.serve_bundled` makes the bundled deployments match each start; a real
reconciler, executor and router (threads) then start them, on both databases.
"""

from __future__ import annotations

import asyncio

import pytest
from test_reconciler import Farm

from kcloud.farm.service import BundledModel, ConflictError
from kcloud.farm.spec import DeploymentCreate


def _on_cpu(farm: Farm, name: str, replicas: int, threads: int | None = 1) -> BundledModel:
    cpu = next(d for d in farm.service.devices if d.spec.kind == "cpu" and not d.emulated)
    return BundledModel(name, replicas, node=cpu.node, chip=cpu.spec.key, threads=threads)


def test_bundled_models_start_on_the_cpu_and_count_in_placement(database, repository, inventory):
    async def scenario() -> None:
        farm = Farm(database, repository, inventory)
        try:
            assert farm.service.serve_bundled([_on_cpu(farm, "small", 2), _on_cpu(farm, "cpu-only", 1)]) == {}
            await farm.settle()
            cpu = next(d for d in farm.service.devices if d.spec.kind == "cpu" and not d.emulated)
            assert set(farm.running("small").values()) == {cpu.uid}  # pinned, though NPUs fit better
            assert len(farm.running("small")) == 2 and len(farm.running("cpu-only")) == 1
            assert {r.worker.threads for r in farm.router.replicas("small")} == {1}
            listed = {d.name: d for d in farm.service.list_deployments()}
            assert listed["small"].tenant is None and listed["small"].status == "ready"
            # the control plane (and so placement) counts the replicas they hold on the CPU
            cpu_view = next(v for v in farm.service.list_devices() if v.uid == cpu.uid)
            assert cpu_view.replicas == 3
        finally:
            await farm.close()

    asyncio.run(scenario())


def test_the_next_start_updates_replaces_and_removes_bundled_deployments(database, repository, inventory):
    async def scenario() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.serve_bundled([_on_cpu(farm, "small", 1), _on_cpu(farm, "cpu-only", 1)])
            await farm.settle()
            (kept,) = farm.running("small")
            # next start: small gets 2 replicas (same layout: its first replica stays), cpu-only's
            # threads change (replaced), and nothing else is bundled any more
            next_start = [_on_cpu(farm, "small", 2), _on_cpu(farm, "cpu-only", 1, threads=2)]
            assert farm.service.serve_bundled(next_start) == {}
            await farm.settle()
            assert kept in farm.running("small") and len(farm.running("small")) == 2
            assert {r.worker.threads for r in farm.router.replicas("cpu-only")} == {2}
            farm.service.serve_bundled([_on_cpu(farm, "small", 2)])
            await farm.settle()
            assert not farm.running("cpu-only")
            assert [d.name for d in farm.service.list_deployments()] == ["small"]
            kinds = [e.kind for e in farm.service.events(deployment="cpu-only")]
            assert kinds[-1] == "deployment.deleted"
        finally:
            await farm.close()

    asyncio.run(scenario())


def test_names_are_shared_by_no_two_deployments(database, repository, inventory):
    async def scenario() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.serve_bundled([_on_cpu(farm, "small", 1)])
            with pytest.raises(ConflictError, match="bundled model"):
                farm.service.create(DeploymentCreate(model="small", replicas=1))
            farm.service.create(DeploymentCreate(model="small", name="cpu-only", replicas=1))
            # an API deployment keeps its name: the bundled model of that name is not served
            refused = farm.service.serve_bundled([_on_cpu(farm, "small", 1), _on_cpu(farm, "cpu-only", 1)])
            assert set(refused) == {"cpu-only"} and "made through the API" in refused["cpu-only"]
            # a model that is not in the repository is named, not raised
            refused = farm.service.serve_bundled([_on_cpu(farm, "small", 1), _on_cpu(farm, "ghost", 1)])
            assert set(refused) == {"ghost"} and "ghost" in refused["ghost"]
        finally:
            await farm.close()

    asyncio.run(scenario())
