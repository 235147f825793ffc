"""The reconciler drives a real LocalExecutor and Router until what runs matches the database.

Replicas here run in threads (`isolation="thread"`, the same code path minus the process) to
keep the suite fast; test_failover.py runs worker processes and kills them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from kcloud.devices.device import Device, Telemetry
from kcloud.devices.inventory import Inventory
from kcloud.farm.executor import LocalExecutor
from kcloud.farm.profiles import ProfileBook
from kcloud.farm.reconciler import Reconciler
from kcloud.farm.service import START_FAILURE_BACKOFF_S, ControlPlaneService
from kcloud.farm.spec import Constraints, DeploymentCreate, DeploymentUpdate
from kcloud.models.repository import ModelRepository
from kcloud.serving.router import Router


class Farm:
    """A service, router, executor and reconciler over one database: one `kcloud up` process."""

    def __init__(
        self,
        database,
        repository: ModelRepository,
        inventory: Inventory,
        sample: Callable[[Device], Telemetry] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = ControlPlaneService(
            database, repository, inventory.devices, profiles=ProfileBook(), clock=clock
        )
        self.service.sync_inventory()
        self.router = Router(repository)
        self.executor = LocalExecutor(
            self.router, emulation=inventory.emulated, isolation="thread", threads=1
        )
        self.reconciler = Reconciler(self.service, self.executor, sample=sample, health_interval_s=0.0)

    async def settle(self) -> None:
        await self.reconciler.settle(60)

    def running(self, name: str) -> dict[str, str]:
        """replica id -> device uid of the replicas the router serves for `name`."""
        return {r.id: r.device.uid for r in self.router.replicas(name) if r.alive}

    async def close(self) -> None:
        await self.reconciler.stop()
        await self.router.close()


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_desired_state_is_reached_on_scale_up_down_and_delete(database, repository, inventory):
    async def body() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.create(DeploymentCreate(model="small", name="svc", replicas=2))
            await farm.settle()
            assert sorted(farm.running("svc").values()) == ["npu-a/rngd0", "npu-a/rngd1"]
            # Served as the deployment; the model version behind it keeps its own name.
            assert {(r.served.name, r.entry.name) for r in farm.router.replicas("svc")} == {("svc", "small")}
            outcome = await farm.router.infer("svc", None, {"x": np.ones((1, 4), np.float32)})
            assert outcome.outputs["y"].tolist() == [[2.0] * 4]
            assert farm.service.get("svc").status == "ready"

            farm.service.scale("svc", 3)
            await farm.settle()
            assert len(farm.running("svc")) == 3
            farm.service.scale("svc", 1)
            await farm.settle()
            assert len(farm.running("svc")) == 1
            assert len(farm.service.get("svc").replica_list) == 1

            farm.service.delete("svc")
            await farm.settle()
            assert farm.router.replicas() == []
        finally:
            await farm.close()

    run(body)


def test_a_restart_restores_every_deployment_on_its_devices(database, repository, inventory):
    async def body() -> None:
        first = Farm(database, repository, inventory)
        first.service.create(DeploymentCreate(model="small", name="svc", replicas=2))
        first.service.create(DeploymentCreate(model="cpu-only", name="cpu", replicas=1))
        await first.settle()
        before = {**first.running("svc"), **first.running("cpu")}
        await first.close()  # the process ends: its replicas stop, the database keeps them

        second = Farm(database, repository, inventory)
        try:
            await second.settle()
            assert {**second.running("svc"), **second.running("cpu")} == before
            kinds = [e.kind for e in second.service.events(deployment="svc")]
            assert kinds.count("replica.restoring") == 2
            assert second.service.get("svc").status == "ready"
        finally:
            await second.close()

    run(body)


def test_a_drained_device_hands_its_replica_over_before_it_stops(database, repository, inventory):
    async def body() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.create(DeploymentCreate(model="small", name="svc", replicas=2))
            await farm.settle()
            farm.service.drain("npu-a/rngd0", "maintenance")
            await farm.settle()
            devices = sorted(farm.running("svc").values())
            assert "npu-a/rngd0" not in devices and len(devices) == 2
            kinds = [e.kind for e in farm.service.events()]
            assert kinds.index("replica.evicting") < kinds.index("replica.stopping")
            trigger = farm.service.explain("svc").placements[0].trigger
            assert trigger == "drain"
            drained = next(d for d in farm.service.list_devices() if d.uid == "npu-a/rngd0")
            assert drained.drained and drained.replicas == 0

            farm.service.undrain("npu-a/rngd0")
            assert not next(d for d in farm.service.list_devices() if d.uid == "npu-a/rngd0").drained
        finally:
            await farm.close()

    run(body)


def test_a_device_telemetry_calls_unhealthy_loses_its_replicas(database, repository, inventory):
    broken: set[str] = set()

    def sample(device: Device) -> Telemetry:
        if device.uid in broken:  # what a plugin reports for a device that stopped answering
            return Telemetry(device.uid, healthy=False, reasons={"telemetry": "device did not answer"})
        return Telemetry(device.uid, healthy=True, modelled=device.emulated)

    async def body() -> None:
        farm = Farm(database, repository, inventory, sample=sample)
        try:
            farm.service.create(DeploymentCreate(model="small", name="svc", replicas=1))
            await farm.settle()
            (first,) = farm.running("svc").values()
            broken.add(first)
            await farm.settle()
            (now,) = farm.running("svc").values()
            assert now != first
            device = next(d for d in farm.service.list_devices() if d.uid == first)
            assert not device.healthy and device.health_reason == "telemetry: device did not answer"
            assert "device.unhealthy" in [e.kind for e in farm.service.events(device=first)]
        finally:
            await farm.close()

    run(body)


class BrokenModel:
    """A copy of the `small` model whose file can be broken and mended, and a deployment of it on
    the two FuriosaAI devices, on a clock the test moves."""

    def __init__(self, repository: ModelRepository, tmp_path: Path) -> None:
        self.repository = ModelRepository(tmp_path / "repo")
        shutil.copytree(repository.root / "small", self.repository.root / "small")
        self.file = self.repository.root / "small" / "1" / "model.onnx"
        self.good = self.file.read_bytes()
        self.now = [1000.0]

    async def deploy_broken(self, database, inventory) -> Farm:
        """A farm whose deployment `svc` failed to start on both devices (pending, backing off)."""
        farm = Farm(database, self.repository, inventory, clock=lambda: self.now[0])
        farm.service.create(
            DeploymentCreate(model="small", name="svc", replicas=1, constraints=Constraints(vendor="furiosa"))
        )
        self.file.write_bytes(b"not an onnx file")
        await farm.settle()
        return farm

    def mend(self) -> None:
        self.file.write_bytes(self.good)


def test_a_replica_that_cannot_start_is_placed_elsewhere_then_pending_then_retried(
    database, repository, inventory, tmp_path: Path
):
    model = BrokenModel(repository, tmp_path)

    async def body() -> None:
        farm = await model.deploy_broken(database, inventory)
        try:
            view = farm.service.get("svc")
            assert view.status == "pending"
            assert "2 recently failed to start this deployment" in view.reason
            failed = [e for e in farm.service.events() if e.kind == "replica.failed"]
            assert {e.device for e in failed} == {"npu-a/rngd0", "npu-a/rngd1"}

            # Fixed, and the back-off over: the deployment is placed and started again.
            model.mend()
            model.now[0] += START_FAILURE_BACKOFF_S + 1
            await farm.settle()
            assert farm.service.get("svc").status == "ready"
        finally:
            await farm.close()

    run(body)


def test_a_device_that_comes_back_is_tried_again_before_the_back_off_ends(
    database, repository, inventory, tmp_path: Path
):
    """A failed start keeps a deployment off a device for the back-off; a device that went away
    and came back (a cluster node that left and rejoined) is not that device any more."""
    model = BrokenModel(repository, tmp_path)

    async def body() -> None:
        farm = await model.deploy_broken(database, inventory)
        try:
            assert farm.service.get("svc").status == "pending"
            model.mend()

            farm.service.update_health({"npu-a/rngd1": (False, "node n2 left the cluster")})
            farm.service.update_health({"npu-a/rngd1": (True, None)})  # it rejoined
            await farm.settle()  # the clock has not moved: rngd0 is still in its back-off
            assert farm.service.get("svc").status == "ready"
            assert list(farm.running("svc").values()) == ["npu-a/rngd1"]
        finally:
            await farm.close()

    run(body)


def test_an_update_replaces_replicas_with_the_new_constraints(database, repository, inventory):
    async def body() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.create(DeploymentCreate(model="small", name="svc", replicas=2))
            await farm.settle()
            old = set(farm.running("svc"))
            view = farm.service.update("svc", DeploymentUpdate(constraints=Constraints(vendor="rebellions")))
            assert view.generation == 2
            await farm.settle()
            now = farm.running("svc")
            assert not old & set(now)
            assert all(uid.split("/")[1].startswith("atom") for uid in now.values())
            assert farm.service.get("svc").status == "ready"
        finally:
            await farm.close()

    run(body)


@pytest.mark.parametrize("replicas", [0])
def test_scale_to_zero_is_ready_with_nothing_running(database, repository, inventory, replicas):
    async def body() -> None:
        farm = Farm(database, repository, inventory)
        try:
            farm.service.create(DeploymentCreate(model="small", name="svc", replicas=replicas))
            await farm.settle()
            view = farm.service.get("svc")
            assert (view.status, view.reason, view.replica_list) == ("ready", "scaled to zero", [])
        finally:
            await farm.close()

    run(body)


def test_overlapping_replica_starts_leave_ctrl_c_with_the_server():
    """Starts overlap; the server's SIGINT handler must be back once the last one is done.

    (Restoring per start, in the wrong order, left SIGINT ignored: `kcloud up` then ignored Ctrl-C.)
    """
    import signal

    from kcloud.farm.executor import _children_ignore_sigint

    def server_handler(signum, frame):  # stands in for uvicorn's
        raise AssertionError("not called here")

    previous = signal.signal(signal.SIGINT, server_handler)
    try:
        first, second = _children_ignore_sigint(), _children_ignore_sigint()
        first.__enter__()
        second.__enter__()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        first.__exit__(None, None, None)  # the first to start finishes first
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the second is still spawning
        second.__exit__(None, None, None)
        assert signal.getsignal(signal.SIGINT) is server_handler
    finally:
        signal.signal(signal.SIGINT, previous)
