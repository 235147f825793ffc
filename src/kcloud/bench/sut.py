"""The LoadGen side of a system under test: LoadGen's callbacks on one side, a `Backend` on the other.

LoadGen calls `issue_query` from its own threads and must get control back at once; each sample
becomes a coroutine on a private asyncio loop (one thread), where the backend (a replica on a
local device, or an HTTP client of a gateway) answers it. The answer goes back to LoadGen with
`QuerySamplesComplete`, carrying the bytes of the output tensor the accuracy script scores:
LoadGen copies them into `mlperf_log_accuracy.json` before that call returns.

The harness knows nothing of the model or where it runs (LoadGen's SUT/QSL split): that is the
backend's business. It counts what was issued and completed (for the progress bar and for
energy per sample) and keeps each sample's issue-to-completion time as the SUT saw it.

`AsyncSUT` is that harness; `LoadGenSUT` answers tensor samples, and
`kcloud.bench.llm_sut.ChatLoadGenSUT` chat samples with LoadGen's token latencies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import mlperf_loadgen as lg
import numpy as np

from kcloud.devices.device import Device

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]


class SUTBackend(ABC):
    """What answers LoadGen's samples, whatever a sample is: its lifecycle and its description."""

    kind: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model, open connections."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release what `start` took."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the SUT is, for `result.json` (device or URL, isolation, replicas)."""

    def metered_devices(self) -> tuple[list[Device], str | None]:
        """Devices whose energy counters cover this SUT's work, or `([], reason)`."""
        return [], "this SUT has no local device to meter"


class Backend(SUTBackend):
    """Answers one tensor sample. Implementations: in-process (a replica) and network (OIP v2)."""

    @abstractmethod
    async def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Outputs for one sample (leading batch dimension 1 on inputs and outputs)."""


@dataclass
class SampleTimes:
    """Per-sample issue and completion instants (monotonic ns) and completion wall time (s)."""

    issued_ns: list[int] = field(default_factory=list)
    latency_ns: list[int] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)


class AsyncSUT(ABC):
    """LoadGen's SUT and QSL callbacks over one backend; each sample a coroutine on a private loop.

    Subclasses answer one sample (`_answer`) and complete it to LoadGen; this class owns the loop,
    the in-flight limit and the counters the progress view and the energy figures read.
    """

    def __init__(self, backend: SUTBackend, *, max_in_flight: int) -> None:
        self.backend = backend
        self.max_in_flight = max_in_flight
        self.issued = 0
        self.completed = 0
        self.errors = 0
        self.first_error: str | None = None
        self.times = self._new_times()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kcloud-bench-sut", daemon=True)
        self._semaphore: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine on the SUT's loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()

        async def _start() -> None:
            self._semaphore = asyncio.Semaphore(self.max_in_flight)
            await self.backend.start()

        self.run(_start())

    def stop(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self.backend.stop(), timeout)
        except Exception as exc:  # stopping must not hide the run's own outcome
            log.warning("stopping the SUT backend failed: %s", exc)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def reset_counters(self) -> None:
        """Forget calibration traffic so that counts and timings are LoadGen's run only."""
        with self._lock:
            self.issued = self.completed = self.errors = 0
            self.first_error = None
            self.times = self._new_times()

    def _new_times(self) -> SampleTimes:
        return SampleTimes()

    # -- LoadGen callbacks (called from LoadGen's threads) -------------------------------------
    def issue_query(self, query_samples: list[Any]) -> None:
        now = time.perf_counter_ns()
        pairs = [(q.id, q.index) for q in query_samples]
        with self._lock:
            self.issued += len(pairs)
        self._loop.call_soon_threadsafe(self._spawn, pairs, now)

    def flush_queries(self) -> None:  # noqa: B027 - LoadGen callback, nothing to do
        """LoadGen has issued its last query; every sample is already on its way."""

    def load_samples(self, indices: list[int]) -> None:  # noqa: B027 - LoadGen callback, nothing to do
        """The whole sample set is held in memory from the start (it is small)."""

    def unload_samples(self, indices: list[int]) -> None:  # noqa: B027 - LoadGen callback, nothing to do
        """Nothing to release: see `load_samples`."""

    # -- on the SUT loop -----------------------------------------------------------------------
    def _spawn(self, pairs: list[tuple[int, int]], issued_ns: int) -> None:
        for response_id, index in pairs:
            self._loop.create_task(self._answer(response_id, index, issued_ns))

    @abstractmethod
    async def _answer(self, response_id: int, index: int, issued_ns: int) -> None:
        """Answer sample `index` and complete `response_id` to LoadGen, whatever happens."""

    def _failed(self, index: int, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"
        log.debug("sample %d failed: %s", index, exc)

    def _record(self, issued_ns: int, done_ns: int) -> None:
        with self._lock:
            self.completed += 1
            self.times.issued_ns.append(issued_ns)
            self.times.latency_ns.append(done_ns - issued_ns)
            self.times.completed_at.append(time.time())


class LoadGenSUT(AsyncSUT):
    """Tensor samples held in memory; each answer is the bytes of the output the accuracy script scores."""

    def __init__(self, backend: Backend, samples: list[Inputs], *, output: str, max_in_flight: int) -> None:
        super().__init__(backend, max_in_flight=max_in_flight)
        self.backend: Backend = backend
        self.samples = samples
        self.output = output

    async def _answer(self, response_id: int, index: int, issued_ns: int) -> None:
        assert self._semaphore is not None
        data: np.ndarray | None = None
        async with self._semaphore:
            try:
                outputs = await self.backend.infer(self.samples[index])
                data = np.ascontiguousarray(outputs[self.output])
            except Exception as exc:  # LoadGen must hear back about every sample, even a failed one
                self._failed(index, exc)
        done_ns = time.perf_counter_ns()
        if data is None:
            response = lg.QuerySampleResponse(response_id, 0, 0)
        else:
            response = lg.QuerySampleResponse(response_id, data.ctypes.data, data.nbytes)
        # LoadGen copies the bytes (accuracy log) before this returns; `data` lives until then
        lg.QuerySamplesComplete([response])
        self._record(issued_ns, done_ns)
