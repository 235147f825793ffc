"""The in-process SUT: a model on one local device, through the serving path's own replicas.

The same `Replica`s and `Router` the gateway uses (dynamic batching, the device's session
layout, modelled work reported to the emulated plugin), minus HTTP: what this SUT measures is
the in-process limit the network SUT is compared with. Every sample goes through the model's
pipeline (tokenising text included) inside the timed path, as it does behind the gateway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kcloud.bench.sut import Backend, Inputs
from kcloud.devices.device import Device
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.runtimes.layout import default_layout, host_cores
from kcloud.serving.replica import Isolation, WorkRecorder, create_replica
from kcloud.serving.router import Router


class InProcessBackend(Backend):
    kind = "in-process"

    def __init__(
        self,
        entry: ModelEntry,
        device: Device,
        repository: ModelRepository,
        *,
        isolation: Isolation = "thread",
        emulation: WorkRecorder | None = None,
        replicas: int | None = None,
        threads: int | None = None,
    ) -> None:
        layout = default_layout(device, host_cores())
        self.entry = entry
        self.device = device
        self.isolation = isolation
        self.emulation = emulation if device.emulated else None
        self.replicas = replicas or layout[0]
        self.threads = threads or layout[1]
        self.router = Router(repository)
        self.batches_rows: list[int] = []
        #: Per answered sample: its batch's compute seconds (beside `batches_rows`).
        self.batches_seconds: list[float] = []
        self.queue_s = 0.0
        self.compute_s = 0.0
        self.modelled_device_s: float | None = 0.0 if device.emulated else None
        self.answered = 0

    async def start(self) -> None:
        for _ in range(self.replicas):
            replica = create_replica(
                self.entry,
                self.device,
                isolation=self.isolation,
                threads=self.threads,
                emulation=self.emulation,
            )
            # LoadGen measures the latency of every query it issues: an overloaded run must show as
            # slow (INVALID), not drop queries as a server sheds load (the queue-time budget).
            replica.batcher.queue_budget_s = 0.0
            await replica.start()
            self.router.add_replica(replica)

    async def stop(self) -> None:
        await self.router.close()

    async def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        outcome = await self.router.infer(self.entry.name, self.entry.version, inputs)
        self.answered += 1
        self.queue_s += outcome.queue_s
        self.compute_s += outcome.compute_s
        self.batches_rows.append(outcome.batch_rows)
        self.batches_seconds.append(outcome.compute_s)
        if self.modelled_device_s is not None and outcome.modelled_device_s is not None:
            self.modelled_device_s += outcome.modelled_device_s / max(outcome.batch_rows, 1)
        return outcome.outputs

    def reset_stats(self) -> None:
        self.batches_rows.clear()
        self.batches_seconds.clear()
        self.queue_s = self.compute_s = 0.0
        self.modelled_device_s = 0.0 if self.device.emulated else None
        self.answered = 0

    def batches(self) -> list[tuple[int, float]]:
        """(rows, compute seconds) of the batch of every answered sample (a batch once per row)."""
        return list(zip(self.batches_rows, self.batches_seconds, strict=True))

    def busy_seconds(self) -> float:
        """Seconds the replicas spent computing, all batches together."""
        return sum(s / max(r, 1) for r, s in self.batches())

    def stats(self) -> dict[str, Any]:
        """Replica-side figures over the answered samples (means per sample; measured unless named)."""
        n = self.answered
        return {
            "answered": n,
            "mean_queue_ms": self.queue_s / n * 1000 if n else None,
            "mean_batch_compute_ms": self.compute_s / n * 1000 if n else None,
            "mean_batch_rows": float(np.mean(self.batches_rows)) if self.batches_rows else None,
            "modelled_device_s_total": self.modelled_device_s,
            "modelled_note": (
                "MODELLED: time the emulated device's catalog chip would have spent "
                "(share per sample of each batch)"
            )
            if self.device.emulated
            else None,
        }

    def describe(self) -> dict[str, Any]:
        from kcloud.bench.environment import device_snapshot

        return {
            "kind": self.kind,
            "device": device_snapshot(self.device),
            "isolation": self.isolation,
            "replicas": self.replicas,
            "threads_per_replica": self.threads,
            "computes_on": "host CPU (emulated device)" if self.device.emulated else self.device.uid,
        }

    def metered_devices(self) -> tuple[list[Device], str | None]:
        return [self.device], None
