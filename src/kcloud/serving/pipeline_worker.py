"""`PipelineWorker`: one replica whose graph is split into stages on several devices.

Each stage is an ordinary `Worker` (a thread or a child process on its own device) holding one
stage file of a `kcloud.models.partition.Partition`. A batch is cut into micro-batches; each
micro-batch goes through the stages in order, carrying the tensors every later stage names, and
all micro-batches are in flight at once. A stage computes one batch at a time, in order, so while
stage 2 computes micro-batch 1, stage 1 computes micro-batch 2: the pipeline's throughput
approaches its slowest stage's, not the sum of the stages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kcloud.runtimes.child import Requests, live_rows
from kcloud.serving.worker import Computed, Feeds, Outputs, Worker


@dataclass(frozen=True)
class StageIO:
    """The tensor names a stage takes and gives (`Stage.inputs`, `Stage.outputs`)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class PipelineWorker(Worker):
    """Runs batches through `stages` (workers, in order), `micro_batch` rows at a time."""

    def __init__(
        self, stages: Sequence[Worker], io: Sequence[StageIO], outputs: Sequence[str], *, micro_batch: int = 4
    ) -> None:
        if len(stages) != len(io) or not stages:
            raise ValueError("a pipeline needs one StageIO per stage, and at least one stage")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.stages, self.io, self.outputs, self.micro_batch = (
            list(stages),
            list(io),
            list(outputs),
            micro_batch,
        )
        self.pid = stages[0].pid
        for stage in self.stages:  # one stage dying takes the pipeline with it
            stage.on_death = self._stage_died

    def _stage_died(self) -> None:
        if self.on_death is not None:
            self.on_death()

    async def start(self) -> None:
        await asyncio.gather(*(stage.start() for stage in self.stages))
        self.pid = self.stages[0].pid
        self.provider = self.stages[0].provider

    async def _through(self, feeds: Feeds) -> Outputs:
        carried: dict[str, np.ndarray] = dict(feeds)
        rows = next(iter(feeds.values())).shape[0]
        for stage, io in zip(self.stages, self.io, strict=True):
            computed = await stage.run({name: carried[name] for name in io.inputs}, [(rows, None)])
            assert computed.outputs is not None  # no deadline was given, so nothing expired
            carried.update(computed.outputs)
        return {name: carried[name] for name in self.outputs}

    async def run(self, feeds: Feeds, requests: Requests) -> Computed:
        started = time.perf_counter()
        live, feeds = live_rows(feeds, requests)  # rows whose deadline passed are not computed
        if not any(live):
            return Computed(None, 0.0, live)
        total = next(iter(feeds.values())).shape[0]
        parts = [
            {name: value[start : start + self.micro_batch] for name, value in feeds.items()}
            for start in range(0, total, self.micro_batch)
        ]
        answers = await asyncio.gather(*(self._through(part) for part in parts))
        outputs = {name: np.concatenate([answer[name] for answer in answers]) for name in self.outputs}
        return Computed(outputs, time.perf_counter() - started, None if all(live) else live)

    @property
    def alive(self) -> bool:
        return all(stage.alive for stage in self.stages)

    async def close(self) -> None:
        await asyncio.gather(*(stage.close() for stage in self.stages), return_exceptions=True)
