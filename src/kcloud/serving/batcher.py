"""Dynamic batching for one replica: a bounded queue and one asyncio loop that forms batches.

Why this shape:
- The queue is bounded (`queue_limit` requests) so overload is shed at once with a 429 and a
  Retry-After computed from the replica's measured throughput, instead of growing latency.
- A batch closes when it holds `max_batch_size` rows or `max_queue_delay` after its first
  request arrived, like Triton's dynamic batcher.
- One batch computes while the next one forms: the loop forms a batch, waits for the worker
  to be free, tops the batch up with what arrived meanwhile, then dispatches. So the device
  never waits for the queue, and requests that arrived during a long batch join the next one.
- The worker is not kept waiting for answers either: when a batch comes back from the worker,
  the next formed batch is dispatched to it *before* the finished batch's outputs are split
  and its requests answered (profiling showed the worker idle ~3.5 % of the time otherwise).
- With `pipeline_depth` 2 (what replicas use) a second batch is sent while the first computes,
  so it already waits on the worker when the first is done: the device does not wait for this
  event loop, which is also busy with HTTP, to notice and dispatch (a worker child waited ~5 %
  of its time otherwise). Depth 1 keeps exactly one batch on the worker.
- A request whose deadline passed while it waited is dropped with `DeadlineExceededError`
  and never computed; a request whose caller went away (cancelled) is dropped too.

The batcher knows nothing of models: `execute(batch)` (from the replica) computes a batch and
either resolves each request's future itself or returns a `finish()` callable that does (split
the outputs, answer the requests); the batcher calls `finish()` after the next batch has gone to
the worker. Whatever is left unresolved is failed here, so no request is ever lost or left
hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kcloud.models.pipeline import Prepared
from kcloud.serving.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    QueueFullError,
    ReplicaDiedError,
    ServingError,
)

log = logging.getLogger(__name__)

#: Weight of the newest batch in the throughput estimate behind Retry-After.
THROUGHPUT_SMOOTHING = 0.2
#: Retry-After is never shorter than this (HTTP gives it in whole seconds).
MIN_RETRY_AFTER_S = 1.0

#: Answers a computed batch: splits its outputs and resolves its requests' futures.
Finish = Callable[[], None]
#: Computes a batch on the worker; returns a `Finish` to answer it later, or None if it answered.
Execute = Callable[[list["Pending"]], Awaitable["Finish | None"]]


@dataclass(eq=False)
class Pending:
    """One request in a replica: queued, then in a batch, then answered through `future`."""

    prepared: Prepared
    deadline: float | None
    enqueued: float
    future: asyncio.Future[Any]
    dispatched: float | None = None

    @property
    def rows(self) -> int:
        return self.prepared.rows


def _smoothed(previous: float | None, rate: float) -> float:
    """An exponentially weighted mean of rates; the first rate stands alone."""
    return rate if previous is None else (1 - THROUGHPUT_SMOOTHING) * previous + THROUGHPUT_SMOOTHING * rate


def _silence_unretrieved(future: asyncio.Future[Any]) -> None:
    # A caller that was cancelled never reads its future; don't log "exception never retrieved".
    if not future.cancelled():
        future.exception()


class Batcher:
    """Queue and batching loop of one replica."""

    def __init__(
        self,
        execute: Execute,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        queue_limit: int,
        queue_budget_s: float = 0.0,
        name: str = "replica",
        on_depth: Callable[[int], None] | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
        pipeline_depth: int = 1,
    ) -> None:
        if max_batch_size < 0 or max_queue_delay_s < 0 or queue_limit < 1 or pipeline_depth < 1:
            raise ValueError("max_batch_size >= 0, max_queue_delay_s >= 0, queue_limit >= 1 and "
                             "pipeline_depth >= 1 are required")
        self._execute = execute
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_limit = queue_limit
        #: Longest expected wait a new request is admitted to (0: none); see `check_admission`.
        self.queue_budget_s = queue_budget_s
        self.name = name
        self._on_depth = on_depth
        self._on_crash = on_crash
        self._queue: deque[Pending] = deque()
        self._queued_rows = 0
        self._in_flight_rows = 0
        self._arrived = asyncio.Event()
        self.pipeline_depth = pipeline_depth
        self._in_flight_batches = 0
        self._free = asyncio.Event()  # the worker takes another batch: fewer than the depth in flight
        self._free.set()
        self._idle = asyncio.Event()  # nothing queued and nothing in flight
        self._idle.set()
        self._loop_task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._formed_waiting = False  # the loop holds a formed batch until the worker is free
        self._stopping = False
        self._closed: ServingError | None = None
        self._rows_per_s: float | None = None
        #: Rows answered per second of wall time while busy: the rate the queue really drains at
        #: (the device's compute rate leaves out the gateway's share of the CPU, and contention).
        self._drain_rows_per_s: float | None = None
        self._last_done: float | None = None  # when the latest batch came back
        self._busy_since_done = False  # work was in flight or queued ever since

    # -- state ------------------------------------------------------------------------------
    @property
    def load(self) -> int:
        """Rows queued plus rows computing: what the router balances on."""
        return self._queued_rows + self._in_flight_rows

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def rows_per_second(self) -> float | None:
        """Measured throughput (smoothed over recent batches); `None` before the first batch."""
        return self._rows_per_s

    def record_throughput(self, rows: int, seconds: float) -> None:
        if rows <= 0 or seconds <= 0:
            return
        self._rows_per_s = _smoothed(self._rows_per_s, rows / seconds)

    def retry_after_s(self) -> float:
        """When a shed client should come back: the time to drain what is queued, at least 1 s."""
        if not self._rows_per_s:
            return MIN_RETRY_AFTER_S
        return max(MIN_RETRY_AFTER_S, float(math.ceil(self.load / self._rows_per_s)))

    def _depth_changed(self) -> None:
        if self._queue or self._in_flight_rows:
            self._idle.clear()
        else:
            self._idle.set()
            self._busy_since_done = False  # an idle stretch is no measure of the drain rate
        if self._on_depth is not None:
            self._on_depth(len(self._queue))

    def record_drain(self, rows: int, seconds: float) -> None:
        """`rows` answered over `seconds` of wall time during which the replica was never idle."""
        if rows <= 0 or seconds <= 0:
            return
        self._drain_rows_per_s = _smoothed(self._drain_rows_per_s, rows / seconds)

    def _batch_done(self, rows: int) -> None:
        now = time.monotonic()
        if self._busy_since_done and self._last_done is not None:
            self.record_drain(rows, now - self._last_done)
        self._last_done = now
        self._busy_since_done = self._in_flight_batches > 0 or bool(self._queue)

    def expected_wait_s(self) -> float | None:
        """How long a request queued now would wait: the work ahead of it at the rate the queue has
        been draining (None until a busy stretch has measured it)."""
        if not self._drain_rows_per_s:
            return None
        return self.load / self._drain_rows_per_s

    # -- requests ---------------------------------------------------------------------------
    def check_admission(self, deadline: float | None, now: float) -> None:
        """Refuse now what could only wait too long: 429 when `queue_limit` requests wait, or when
        the expected wait exceeds the queue-time budget (or the time left to the request's own
        deadline, whichever is shorter).

        A count alone does not bound latency: 1,024 queued MiniLM requests are 4 s of work on a
        CPU. A budget in time sheds overload as 429s with Retry-After while the requests admitted
        keep their latency. The router calls this before preparing a request (tokenising a text
        that is then refused is wasted work), and `submit` again.
        """
        if deadline is not None and deadline <= now:
            raise DeadlineExceededError("deadline passed before the request was queued; not computed")
        if len(self._queue) >= self.queue_limit:
            retry = self.retry_after_s()
            raise QueueFullError(
                f"{self.name}: queue full ({self.queue_limit} requests waiting); retry in {retry:.0f} s",
                retry_after_s=retry)
        budget = self.queue_budget_s or math.inf
        if deadline is not None:
            budget = min(budget, deadline - now)
        if budget == math.inf:
            return
        wait = self.expected_wait_s()
        if wait is not None and wait > budget:
            retry = self.retry_after_s()
            raise QueueFullError(
                f"{self.name}: busy: {wait * 1000:.0f} ms of work queued, more than the "
                f"{budget * 1000:.0f} ms a request may wait; retry in {retry:.0f} s",
                retry_after_s=retry)

    def submit(self, prepared: Prepared, deadline: float | None) -> Pending:
        """Queue one request, or refuse it now (closed, full, too busy, or past its deadline)."""
        if self._closed is not None:
            raise type(self._closed)(str(self._closed))
        now = time.monotonic()
        self.check_admission(deadline, now)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_silence_unretrieved)
        pending = Pending(prepared, deadline, now, future)
        self._queue.append(pending)
        self._queued_rows += pending.rows
        self._arrived.set()
        self._depth_changed()
        return pending

    def _unqueue(self, pending: Pending) -> bool:
        try:
            self._queue.remove(pending)
        except ValueError:
            return False
        self._queued_rows -= pending.rows
        self._depth_changed()
        return True

    async def result(self, pending: Pending) -> Any:
        """Wait for a request's answer. Its deadline is enforced while it is queued: at the
        deadline it leaves the queue uncomputed. Once dispatched, its batch's answer is awaited.
        Cancelling the caller takes a queued request out of the queue."""
        try:
            if pending.deadline is None:
                return await asyncio.shield(pending.future)
            try:
                async with asyncio.timeout_at(self._loop_time(pending.deadline)):
                    return await asyncio.shield(pending.future)
            except TimeoutError:
                if self._unqueue(pending):
                    raise DeadlineExceededError("deadline passed while queued; not computed") from None
                return await asyncio.shield(pending.future)  # already computing: wait for it
        except asyncio.CancelledError:
            if self._unqueue(pending):
                pending.future.cancel()
            raise

    @staticmethod
    def _loop_time(monotonic_deadline: float) -> float:
        # asyncio's clock is time.monotonic() on every platform we run; convert anyway.
        loop = asyncio.get_running_loop()
        return loop.time() + (monotonic_deadline - time.monotonic())

    # -- the loop ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher {self.name}")
            self._loop_task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The loop only ends by `stop()`; if a bug ends it, fail what waits instead of hanging it."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("%s: batching loop crashed", self.name, exc_info=exc)
        self.close(ReplicaDiedError(f"{self.name}: batching loop crashed: {type(exc).__name__}: {exc}"))
        if self._on_crash is not None:
            self._on_crash(exc)

    def _row_limit(self) -> int:
        # Batching off (0): one request per batch, however many rows it has.
        return self.max_batch_size if self.max_batch_size > 0 else 0

    def _full(self) -> bool:
        limit = self._row_limit()
        return limit == 0 or self._queued_rows >= limit

    async def _wait_until_formed(self) -> None:
        """Wait for a first request, then for a full batch or the queue delay after it."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        while self._queue and not self._full():
            remaining = self._queue[0].enqueued + self.max_queue_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _take_batch(self) -> list[Pending]:
        """Pop a batch: whole requests in arrival order, up to the row limit, failing expired ones.

        Only requests that can be concatenated share a batch: those whose
        `prepared.extra["shape_key"]` equals the first one's (a model with variable non-batch
        dimensions gets differently shaped requests). The others keep their place for the next
        batch, which they head.
        """
        limit = self._row_limit()
        now = time.monotonic()
        batch: list[Pending] = []
        kept: deque[Pending] = deque()
        rows = 0
        shape_key: Any = None
        try:
            while self._queue:
                pending = self._queue[0]
                if pending.future.done():  # answered already (e.g. cancelled): nothing to compute
                    self._queue.popleft()
                    self._queued_rows -= pending.rows
                    continue
                if pending.deadline is not None and pending.deadline <= now:
                    self._queue.popleft()
                    self._queued_rows -= pending.rows
                    pending.future.set_exception(
                        DeadlineExceededError("deadline passed while queued; not computed"))
                    continue
                key = pending.prepared.extra.get("shape_key")
                if batch and (limit == 0 or rows + pending.rows > limit):
                    break
                self._queue.popleft()
                if batch and key != shape_key:
                    kept.append(pending)
                    continue
                self._queued_rows -= pending.rows
                pending.dispatched = now
                batch.append(pending)
                rows += pending.rows
                shape_key = key
        except BaseException:
            # Whatever was taken goes back, so that whoever handles the failure fails them too.
            for pending in batch:
                pending.dispatched = None
            self._queue.extendleft(reversed([*batch, *kept]))
            self._queued_rows += rows
            raise
        self._queue.extendleft(reversed(kept))
        return batch

    async def _run(self) -> None:
        while True:
            await self._wait_until_formed()
            if not self._free.is_set():
                # The worker holds all the batches it may: keep filling meanwhile. When one comes back
                # from the worker, its task dispatches this batch before answering its own.
                self._formed_waiting = True
                try:
                    await self._free.wait()
                finally:
                    self._formed_waiting = False
                if not self._free.is_set():
                    continue  # dispatched by the finished batch's task already
            self._dispatch()

    def _dispatch(self) -> asyncio.Future[None] | None:
        """Send the queued batch to the (free) worker. Returns a future that is done once the new
        batch's task has taken its first step (collated and handed its feeds to the worker), or
        None when nothing was left to send."""
        batch = self._take_batch()
        if not batch:
            self._depth_changed()
            return None
        rows = sum(p.rows for p in batch)
        self._in_flight_rows += rows
        self._in_flight_batches += 1
        if self._in_flight_batches >= self.pipeline_depth:
            self._free.clear()
        self._depth_changed()
        handed_over: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._compute(batch, rows, handed_over))
        # A task cancelled before its first step never marks the hand-over: don't hang on it.
        task.add_done_callback(lambda _: handed_over.done() or handed_over.set_result(None))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)
        return handed_over

    def _batch_error(self, exc: Exception, rows: int) -> Exception:
        if isinstance(exc, ServingError | ValueError):
            return exc
        log.error("%s: batch of %d rows failed", self.name, rows, exc_info=exc)
        return InferenceFailedError(f"{self.name}: batch failed: {type(exc).__name__}: {exc}")

    async def _compute(self, batch: list[Pending], rows: int, handed_over: asyncio.Future[None]) -> None:
        if not handed_over.done():
            handed_over.set_result(None)  # wakes the previous batch's task after this first step
        error: Exception | None = None
        finish: Finish | None = None
        try:
            try:
                finish = await self._execute(batch)
            except Exception as exc:
                error = self._batch_error(exc, rows)
            finally:
                self._in_flight_rows -= rows
                self._in_flight_batches -= 1
                self._free.set()
                self._batch_done(rows)
            if self._formed_waiting and not self._stopping:
                # Keep the worker fed: the next batch goes out before this one is answered.
                next_handed_over = None
                try:
                    next_handed_over = self._dispatch()
                except Exception:  # the loop meets the same error and fails the replica
                    log.debug("%s: dispatch after a batch failed; left to the loop", self.name, exc_info=True)
                if next_handed_over is not None:
                    await next_handed_over
            if error is None and finish is not None:
                try:
                    finish()
                except Exception as exc:
                    error = self._batch_error(exc, rows)
            if error is not None:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
        finally:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        InferenceFailedError(f"{self.name}: batch ended without an answer"))
            self._depth_changed()

    # -- shutdown ---------------------------------------------------------------------------
    def close(self, error: ServingError) -> None:
        """Refuse new requests with `error` and fail every queued one with it (none is lost)."""
        if self._closed is None:
            self._closed = error
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(type(error)(str(error)))
        self._queued_rows = 0
        self._depth_changed()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or computing; False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop the loop; batches in flight are awaited (their requests get their answers)."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        # a batch's task may dispatch the next one before it ends: wait until none is left
        while running := [task for task in self._batch_tasks if not task.done()]:
            await asyncio.gather(*running, return_exceptions=True)
