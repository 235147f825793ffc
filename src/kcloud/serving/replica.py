"""`Replica`: one model version loaded on one device, with its batcher and worker.

The replica is where a request's rows meet a batch: it queues prepared requests in its
`Batcher`, turns each formed batch into ONNX feeds (`pipeline.collate`), has its `Worker`
compute them, cuts the outputs back per request (`pipeline.split`) and records what happened:
real queue and compute time for every device, and for emulated devices also the *modelled*
time the catalog chip would have taken, which it reports to the emulated device plugin so the
device's modelled utilisation, power and energy follow the work it was given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from kcloud.devices.device import Device
from kcloud.models.partition import Partition, Stage
from kcloud.models.pipeline import Pipeline, Prepared
from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.runtimes.modelled import ModelledTime, check_efficiency, modelled_device_seconds
from kcloud.runtimes.session import UnsupportedDeviceError, plan_for
from kcloud.serving.batcher import Batcher, Finish, Pending
from kcloud.serving.engine import EngineProcessFactory, EngineReplica, create_engine_replica, replica_id_for
from kcloud.serving.errors import DeadlineExceededError, ModelNotReadyError, ReplicaDiedError
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.pipeline_worker import PipelineWorker, StageIO
from kcloud.serving.served import ServedModel
from kcloud.serving.worker import ConnectionWorker, ProcessWorker, ThreadWorker, Worker

if TYPE_CHECKING:
    from kcloud.models.repository import ModelEntry

log = logging.getLogger(__name__)

Isolation = Literal["thread", "process"]
#: Makes the worker of a replica: (weights path, device, intra-op threads) -> worker, not started.
WorkerFactory = Callable[[Path, Device, int], Worker]

#: Batches a replica keeps on its worker: one computing, one waiting to start the moment it
#: is done (see `kcloud.serving.worker`).
PIPELINE_DEPTH = 2
#: How long `stop()` lets queued and computing requests finish before failing the rest.
DRAIN_TIMEOUT_S = 10.0


class WorkRecorder(Protocol):
    """What a replica needs of the emulated device plugin (`EmulatedPlugin.record_work`)."""

    def record_work(self, device_uid: str, busy_seconds: float) -> None: ...


@dataclass
class InferOutcome:
    """One request's answer and how it was produced."""

    outputs: dict[str, np.ndarray]  # public outputs of this request (after pipeline.split)
    prepared: Prepared  # .extra["tokens"] for text models (OpenAI usage)
    replica_id: str
    device_uid: str
    queue_s: float  # measured: queued -> batch dispatched
    compute_s: float  # measured: the batch's time in the worker (IPC included for processes)
    modelled_device_s: float | None  # MODELLED; emulated devices only, None otherwise
    batch_rows: int


@dataclass(frozen=True)
class _BatchAnswer:
    outputs: dict[str, np.ndarray]
    compute_s: float
    modelled: ModelledTime | None
    batch_rows: int


class Replica:
    """A model version served from one device. Create it with `create_replica`."""

    def __init__(
        self,
        replica_id: str,
        entry: ModelEntry,
        device: Device,
        pipeline: Pipeline,
        worker: Worker,
        *,
        metrics: ServingMetrics | None = None,
        emulation: WorkRecorder | None = None,
        efficiency: float | None = None,
        stage_devices: Sequence[tuple[Device, float]] = (),
        served_name: str | None = None,
    ) -> None:
        self.id = replica_id
        self.entry = entry
        #: What requests name it by (its deployment's name; by default the model's).
        self.served = ServedModel.of(entry, served_name)
        self.device = device
        self.pipeline = pipeline
        self.worker = worker
        self.metrics = metrics
        self.emulation = emulation
        check_efficiency(efficiency)
        #: A what-if fraction of peak for the modelled time; `None`: each chip's own factor.
        self.efficiency = efficiency
        #: A pipeline replica's devices with each stage's share of the work (`device` is the
        #: first); a replica on one device has just that device, all of the work.
        self.stage_devices = list(stage_devices) or [(device, 1.0)]
        self.on_death: list[Callable[[Replica], None]] = []
        self._started = False
        self._stopping = False
        self._death_reported = False
        self._depth_gauge: Any = None  # metrics.queue_depth child of this replica, once used
        self._batch_children: tuple[Any, Any, Any] | None = None  # queue, compute, rows histograms
        self._modelled_child: Any = None
        batching = entry.config.batching
        self.batcher = Batcher(
            self._execute,
            max_batch_size=batching.batch_rows(device.spec.kind),
            max_queue_delay_s=batching.max_queue_delay_ms / 1000.0,
            queue_limit=batching.queue_limit,
            queue_budget_s=batching.queue_budget_ms / 1000.0,
            name=replica_id,
            on_depth=self._record_depth,
            on_crash=lambda exc: self._worker_died(),
            pipeline_depth=PIPELINE_DEPTH,
        )
        self.worker.on_death = self._worker_died
        if device.emulated and emulation is None:
            log.warning("%s: emulated device %s has no plugin to record modelled work on",
                        self.id, device.uid)

    def __repr__(self) -> str:
        return f"Replica({self.id!r}, device={self.device.uid!r}, alive={self.alive}, load={self.load})"

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the worker's session and start batching; raises `WorkerStartError` on failure."""
        await self.worker.start()
        self.batcher.start()
        self._started = True
        log.info("%s: serving %s v%d on %s (%s, provider %s, pid %s)", self.id, self.served.name,
                 self.entry.version, self.device.uid, type(self.worker).__name__, self.worker.provider,
                 self.worker.pid)

    async def stop(self) -> None:
        """Take no new requests, let queued and computing ones finish (up to a timeout), then
        release the worker. Requests still queued after the timeout fail with ReplicaDiedError,
        which the router retries on another replica."""
        if self._stopping:
            return
        self._stopping = True
        if self._started and self.worker.alive and not await self.batcher.drain(DRAIN_TIMEOUT_S):
            log.warning("%s: stopped with requests still queued after %.0f s", self.id, DRAIN_TIMEOUT_S)
        self.batcher.close(ReplicaDiedError(f"replica {self.id} stopped"))
        await self.batcher.stop()
        await self.worker.close()
        if self.metrics is not None:
            with contextlib.suppress(KeyError):
                self.metrics.queue_depth.remove(self.served.name, self.id)

    # -- state ------------------------------------------------------------------------------
    @property
    def load(self) -> int:
        """Rows queued plus rows computing."""
        return self.batcher.load

    @property
    def alive(self) -> bool:
        return self._started and not self._stopping and self.worker.alive and self.batcher.running

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    @property
    def isolation(self) -> Isolation:
        return "process" if isinstance(self.worker, ConnectionWorker) else "thread"

    # -- requests ---------------------------------------------------------------------------
    async def infer(self, prepared: Prepared, *, deadline: float | None) -> InferOutcome:
        """Queue one prepared request and return its own outputs.

        Raises QueueFullError (429), DeadlineExceededError (504, never computed),
        ReplicaDiedError (the router retries elsewhere) or InferenceFailedError (500).
        """
        if not self._started:
            raise ModelNotReadyError(f"replica {self.id} is not started")
        if not self.alive:
            raise ReplicaDiedError(f"replica {self.id} is not alive")
        pending = self.batcher.submit(prepared, deadline)
        answer: _BatchAnswer = await self.batcher.result(pending)
        assert pending.dispatched is not None
        return InferOutcome(
            outputs=answer.outputs,
            prepared=prepared,
            replica_id=self.id,
            device_uid=self.device.uid,
            queue_s=pending.dispatched - pending.enqueued,
            compute_s=answer.compute_s,
            modelled_device_s=answer.modelled.seconds if answer.modelled else None,
            batch_rows=answer.batch_rows,
        )

    async def _execute(self, batch: list[Pending]) -> Finish:
        """Compute one batch; returns the step that resolves each request's future with its own
        outputs, which the batcher runs once the next batch is on the worker."""
        items = [pending.prepared for pending in batch]
        feeds = self.pipeline.collate(items)
        try:
            computed = await self.worker.run(feeds, [(p.rows, p.deadline) for p in batch])
        except ReplicaDiedError:
            self._worker_died()
            raise
        compute_s = computed.seconds

        def finish() -> None:
            computed_batch = batch
            if computed.live is not None:  # some deadlines passed while the batch waited on the worker
                computed_batch = [p for p, live in zip(batch, computed.live, strict=True) if live]
                for pending, live in zip(batch, computed.live, strict=True):
                    if not live and not pending.future.done():
                        pending.future.set_exception(DeadlineExceededError(
                            "deadline passed while waiting for the device; not computed"))
            if not computed_batch:
                return
            assert computed.outputs is not None
            parts = self.pipeline.split(computed.outputs, [p.prepared for p in computed_batch])
            if len(parts) != len(computed_batch):
                raise RuntimeError(f"{self.served.name}: split gave {len(parts)} answers "
                                   f"for {len(computed_batch)} requests")
            rows = sum(p.rows for p in computed_batch)
            self.batcher.record_throughput(rows, compute_s)
            modelled = self._model_device_time(rows) if self.device.emulated else None
            self._record_batch(computed_batch, rows, compute_s, modelled)
            for pending, part in zip(computed_batch, parts, strict=True):
                if not pending.future.done():
                    pending.future.set_result(_BatchAnswer(part, compute_s, modelled, rows))

        return finish

    def _model_device_time(self, rows: int) -> ModelledTime:
        """The catalog chip's modelled time for the batch (the roofline of the model's FLOPs and
        weights), recorded as work on the emulated device; a pipeline's stages each model and
        record their share of the work, in turn. A stage's share of the work stands in for its
        share of the weights."""
        flops, weights = self.entry.config.flops_per_sample, self.entry.config.memory_bytes
        parts = [
            (device, modelled_device_seconds(None if flops is None else flops * share, rows, device.spec,
                                             weight_bytes=None if weights is None else round(weights * share),
                                             efficiency=self.efficiency))
            for device, share in self.stage_devices
        ]
        unknown = next((modelled for _, modelled in parts if modelled.seconds is None), None)
        if unknown is not None:
            return unknown
        for device, modelled in parts:
            if self.emulation is not None and device.emulated and modelled.seconds is not None:
                self.emulation.record_work(device.uid, modelled.seconds)
        if len(parts) == 1:
            return parts[0][1]
        return ModelledTime(sum(modelled.seconds or 0.0 for _, modelled in parts),
                            basis=f"sum over {len(parts)} pipeline stages")

    def _record_batch(
        self, batch: list[Pending], rows: int, compute_s: float, modelled: ModelledTime | None
    ) -> None:
        if self.metrics is None:
            return
        # `.labels()` hashes and locks on every call: look each child up once per replica.
        labels = (self.served.name, self.device.uid)
        if self._batch_children is None:
            self._batch_children = (
                self.metrics.queue_seconds.labels(*labels),
                self.metrics.compute_seconds.labels(*labels),
                self.metrics.batch_rows.labels(*labels),
            )
        queue_hist, compute_hist, rows_hist = self._batch_children
        for pending in batch:
            queue_hist.observe((pending.dispatched or pending.enqueued) - pending.enqueued)
        compute_hist.observe(compute_s)
        rows_hist.observe(rows)
        if modelled is not None and modelled.seconds is not None:
            if self._modelled_child is None:  # the series exists only for emulated devices
                self._modelled_child = self.metrics.modelled_device_seconds.labels(*labels)
            self._modelled_child.observe(modelled.seconds)

    def _record_depth(self, depth: int) -> None:
        # Called on every submit and dispatch: the gauge child is looked up once, lazily, so the
        # series appears with the first request as before (and is removed by `stop()`).
        if self.metrics is not None and not self._stopping:
            if self._depth_gauge is None:
                self._depth_gauge = self.metrics.queue_depth.labels(self.served.name, self.id)
            self._depth_gauge.set(depth)

    def _worker_died(self) -> None:
        """The worker (or the batching loop) died by itself: fail what is queued (the router
        retries it) and tell observers once."""
        if self._death_reported or self._stopping:
            return
        self._death_reported = True
        self.batcher.close(ReplicaDiedError(f"replica {self.id}: worker process {self.pid} died"))
        for observer in list(self.on_death):
            try:
                observer(self)
            except Exception:  # an observer's bug must not break the serving path
                log.exception("%s: replica-death observer failed", self.id)


def create_replica(
    entry: ModelEntry,
    device: Device,
    *,
    isolation: Isolation = "process",
    threads: int | None = None,
    emulation: WorkRecorder | None = None,
    metrics: ServingMetrics | None = None,
    pipeline: Pipeline | None = None,
    replica_id: str | None = None,
    efficiency: float | None = None,
    worker_factory: WorkerFactory | None = None,
    stages: Partition | None = None,
    stage_devices: Sequence[Device] = (),
    engine_process: EngineProcessFactory | None = None,
    served_name: str | None = None,
) -> Replica | EngineReplica:
    """A replica of `entry` on `device`, served as `served_name` (default: the model's name), not
    yet started (`await replica.start()`).

    A generative model's replica is an engine process (`kcloud.serving.engine`), on this machine
    or where `engine_process` puts it; `isolation` and `pipeline` do not apply to it.

    `threads` defaults to the measured-best layout for the device (`default_layout`); the
    caller decides how many replicas to make (its first element). `worker_factory` replaces
    `isolation` where the session runs elsewhere (a Ray node: `kcloud.cluster.executor`). Raises
    `UnsupportedDeviceError` when no installed runtime serves the model's platform on the
    device, or the model does not allow the device's kind.

    With `stages` (a partition of the model's graph) the replica is a pipeline: stage k runs on
    `stage_devices[k]` (the first is `device`), each in a worker of its own (`PipelineWorker`).
    """
    devices = list(stage_devices) if stages is not None else [device]
    if stages is not None and (len(devices) != len(stages.stages) or devices[0] != device):
        raise ValueError("a pipeline replica needs one device per stage, the first being `device`")
    for each in devices:
        if each.spec.kind not in entry.config.device_kinds:
            raise UnsupportedDeviceError(
                f"model {entry.name} may run on {', '.join(entry.config.device_kinds)}; "
                f"device {each.uid} is a {each.spec.kind}")
    if entry.config.generative:
        return create_engine_replica(entry, device, threads=threads, emulation=emulation,
                                     replica_id=replica_id, efficiency=efficiency, process=engine_process,
                                     served_name=served_name)
    for each in devices:  # refuse unserved devices before spawning anything
        plan_for(each, platform=entry.config.platform)
    if isolation not in ("thread", "process"):
        raise ValueError(f"isolation must be 'thread' or 'process', got {isolation!r}")
    if pipeline is None:
        from kcloud.models.pipelines import pipeline_for

        pipeline = pipeline_for(entry)

    def make(path: Path, on: Device) -> Worker:
        count = threads if threads is not None else default_layout(on, host_cores())[1]
        if worker_factory is not None:
            return worker_factory(path, on, count)
        return (ProcessWorker if isolation == "process" else ThreadWorker)(path, on, threads=count)

    worker: Worker
    shares: list[tuple[Device, float]] = []
    if stages is None:
        worker = make(entry.weights_path, device)
    else:
        worker = PipelineWorker(
            [make(_stage_file(stage), on) for stage, on in zip(stages.stages, devices, strict=True)],
            [StageIO(stage.inputs, stage.outputs) for stage in stages.stages],
            stages.graph_outputs,
        )
        shares = [(on, stage.cost_share) for stage, on in zip(stages.stages, devices, strict=True)]
    replica_id = replica_id or replica_id_for(served_name or entry.name, entry.version, device)
    return Replica(replica_id, entry, device, pipeline, worker, metrics=metrics, emulation=emulation,
                   efficiency=efficiency, stage_devices=shares, served_name=served_name)


def _stage_file(stage: Stage) -> Path:
    if stage.path is None:
        raise ValueError(f"pipeline stage {stage.index} has no file (cut it with kcloud.models.staged)")
    return stage.path
