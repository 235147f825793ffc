"""Building the product: the gateway, the control plane that owns its replicas, and tenancy.

This is the composition root. The packages below it (serving, farm, tenancy) know nothing of
each other's upper neighbours; here they are wired together: the control plane gets tenancy's
quota check and its caller, tenancy gets the control plane's database. Every replica, the
bundled models' included, is a deployment the control plane places and starts (one owner).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from kcloud.app.options import ServeOptions
from kcloud.bench.runner import default_out_dir
from kcloud.cluster.head import ClusterHead
from kcloud.console import Console
from kcloud.console import attach as attach_console
from kcloud.devices.device import Device
from kcloud.devices.inventory import Inventory
from kcloud.farm.controlplane import ControlPlane
from kcloud.farm.controlplane import attach as attach_control_plane
from kcloud.farm.reconciler import PassReport
from kcloud.farm.service import BundledModel
from kcloud.models.builtin import BUILTINS, builtin_names, ensure_builtin_models
from kcloud.models.repository import ModelEntry, ModelRepository, default_repository_path
from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.serving.engine_metrics import EngineMetrics
from kcloud.serving.gateway import create_app
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.router import Router
from kcloud.serving.trace import TraceRecorder
from kcloud.store.db import MEMORY_URL
from kcloud.tenancy.context import audit_current, current_principal
from kcloud.tenancy.holdings import enforce_deployment_quota
from kcloud.tenancy.service import Tenancy
from kcloud.tenancy.service import attach as attach_tenancy
from kcloud.twin.results import default_twin_dir


class NoLocalCpuError(RuntimeError):
    """The inventory has no CPU device of this machine to place the bundled models on."""


@dataclass
class Stack:
    """Everything `build_stack` started, for the steps after it (printing, serving, shutdown)."""

    router: Router
    app: FastAPI
    inventory: Inventory
    metrics: ServingMetrics
    device: Device
    repository: ModelRepository
    control_plane: ControlPlane
    #: The bundled models served, and how many replicas each started with.
    entries: list[ModelEntry] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)
    tenancy: Tenancy | None = None
    #: The Ray head, when this stack is the head of a cluster (`kcloud cluster start`).
    cluster: ClusterHead | None = None
    #: Whether the control plane's admin API (`/api/v1`) is on the app.
    admin_api: bool = False
    #: The web console at /ui, when it is on the app.
    console: Console | None = None

    async def close(self) -> None:
        """Write the usage still in memory, stop reconciling, drain the replicas, close the devices."""
        if self.console is not None:
            await self.console.close()
        if self.tenancy is not None:  # while the database is still open
            await asyncio.to_thread(self.tenancy.close)
        await self.control_plane.close()  # stops reconciling before the replicas stop
        await self.router.close()
        if self.router.engine_metrics is not None:
            await self.router.engine_metrics.stop()
        if self.cluster is not None:  # after the replicas: their actors live on its nodes
            await self.cluster.close()
        self.inventory.close()


def build_inventory(farm_files: Sequence[Path]) -> Inventory:
    """This machine's devices plus the emulated ones the farm files declare."""
    return Inventory.build(list(farm_files), include_local=True)


def prepare_repository(
    *, progress: bool = True, root: Path | None = None, models: Sequence[str] | None = None
) -> ModelRepository:
    """The repository (default: under KCLOUD_HOME), with the bundled models built into it.

    `models` (`kcloud up --model`) limits the build to the built-ins among them: serving only
    MiniLM should not wait half a minute for the chat model's conversion. A named built-in this
    installation cannot build fails here, with what to install. The no-op model is bundled too:
    it is how a user (and the benchmark) sees what the gateway costs by itself.
    """
    repository = ModelRepository(root or default_repository_path())
    include = builtin_names() if models is None else [name for name in models if name in BUILTINS]
    ensure_builtin_models(repository, include=include, progress=progress)
    return repository


def local_cpu(inventory: Inventory) -> Device:
    """The (first) real CPU of this machine: where the embedded default serves."""
    for device in inventory:
        if device.spec.kind == "cpu" and not device.emulated and device.healthy:
            return device
    raise NoLocalCpuError("no healthy CPU device found on this machine (see `kcloud devices list`)")


def replica_layout(device: Device, replicas: int | None) -> tuple[int, int]:
    """(replicas, threads each): the device's measured-best layout, or `replicas` sharing the cores."""
    cores = host_cores()
    best_count, best_threads = default_layout(device, cores)
    if replicas is None:
        return best_count, best_threads
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    threads = max(1, cores // replicas) if device.spec.kind == "cpu" and not device.emulated else best_threads
    return replicas, threads


def served_entries(repository: ModelRepository, names: Sequence[str] | None) -> list[ModelEntry]:
    """The latest version of each model to serve (`names`, or every usable model)."""
    if names is None:
        return repository.list()
    return [repository.get(name) for name in names]


def bundled_models(entries: Sequence[ModelEntry], device: Device, replicas: int | None) -> list[BundledModel]:
    """The deployments `kcloud up` makes for the models it serves by itself, all on `device`."""
    count, threads = replica_layout(device, replicas)
    # A generative model's replica is an engine with its own threads: one (unless asked) on all the
    # cores, or the cores shared out among several.
    engines = replicas or 1
    return [BundledModel(e.name, engines, node=device.node, chip=device.spec.key,
                         threads=max(1, host_cores() // engines))
            if e.config.generative else
            BundledModel(e.name, count, node=device.node, chip=device.spec.key, threads=threads)
            for e in entries]


async def build_stack(
    options: ServeOptions,
    *,
    repository: ModelRepository,
    inventory: Inventory,
    on_plan: Callable[[Sequence[ModelEntry], Sequence[BundledModel]], None] | None = None,
    on_pass: Callable[[PassReport], None] | None = None,
    announce: Callable[[str], None] | None = None,
    strict: bool = False,
    cluster: ClusterHead | None = None,
) -> Stack:
    """Gateway, control plane and tenancy, ready to serve (must run on the loop that will serve).

    A bundled model that cannot start is left out and named in `stack.control_plane.not_served`;
    with `strict`, it stops the start instead (after the replicas already started are stopped).
    `on_plan` hears which models will be started, and how, before any starts; `on_pass` hears
    each reconciler pass of the start. With `cluster` (a started Ray head), replicas run as
    actors on the cluster's nodes and nodes that join bring their devices; the stack closes it.
    """
    metrics = ServingMetrics(CollectorRegistry())
    device = local_cpu(inventory)
    entries = served_entries(repository, options.models)
    bundled = bundled_models(entries, device, options.replicas)
    if on_plan is not None:
        on_plan(entries, bundled)
    # opened first: a trace file that cannot be written fails the start before anything runs
    trace = TraceRecorder(options.record_trace) if options.record_trace is not None else None
    engine_metrics = EngineMetrics(metrics.registry)
    engine_metrics.start()
    router = Router(repository, token_policy=options.token_policy, metrics=metrics,
                    engine_metrics=engine_metrics, trace=trace)
    app = create_app(router, inventory=inventory, max_body_bytes=options.max_body_bytes,
                     extra_routers=options.extra_routers, registry=metrics.registry, metrics=metrics)
    executor = cluster.executor(router, inventory, metrics) if cluster is not None else None
    try:
        control_plane = await attach_control_plane(
            app, router, inventory, options.db_url if options.control_plane else MEMORY_URL,
            repository=repository, metrics=metrics, isolation=options.isolation,
            admission=[enforce_deployment_quota], caller=current_principal, audit=audit_current,
            bundled=bundled, admin_api=options.control_plane,
            on_pass=on_pass, executor=executor,
            sample=cluster.membership.sample if cluster is not None else None,
        )
    except BaseException:
        await router.close()
        await engine_metrics.stop()
        if cluster is not None:
            await cluster.close()
        raise
    stack = Stack(router, app, inventory, metrics, device, repository, control_plane,
                  admin_api=options.control_plane, cluster=cluster)
    if cluster is not None:
        cluster.watch(control_plane.service, control_plane.reconciler.wake)
    try:
        if strict and control_plane.not_served:
            name, why = next(iter(control_plane.not_served.items()))
            raise RuntimeError(f"model {name} could not start: {why}")
        stack.entries = [e for e in entries if e.name not in control_plane.not_served]
        stack.replicas = {e.name: len(router.replicas(e.name)) for e in stack.entries}
        if options.tenancy:  # keys on every route; prints the admin key at a database's first start
            db = control_plane.db if options.control_plane else options.db_url
            stack.tenancy = attach_tenancy(app, db, inventory=inventory, insecure=options.insecure_no_auth,
                                           announce=announce)
        if options.control_plane and options.console:
            stack.console = attach_console(app, control_plane, metrics, engines=router.engine_metrics,
                                           caller=current_principal,
                                           bench_root=options.bench_results or default_out_dir(),
                                           twin_root=options.twin_results or default_twin_dir())
    except BaseException:
        await stack.close()
        raise
    return stack
