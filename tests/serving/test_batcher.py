"""The batching loop on its own: `execute` is the batcher's callback, here one that records each
batch and can hold it "on the device" behind a gate, so timing is decided by the test, not by
the machine's speed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from kcloud.models.pipeline import Prepared
from kcloud.serving.batcher import Batcher, Pending
from kcloud.serving.errors import DeadlineExceededError, QueueFullError, ReplicaDiedError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Device:
    """Records every batch; while `gate` is clear a batch stays in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []  # request tags per batch
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def execute(self, batch: list[Pending]) -> None:
        self.batches.append([p.prepared.extra["tag"] for p in batch])
        self.started.set()
        await self.gate.wait()
        for pending in batch:
            pending.future.set_result(pending.prepared.extra["tag"])

    @property
    def computed(self) -> list[int]:
        return [tag for batch in self.batches for tag in batch]


async def until(condition, timeout: float = 5.0) -> None:
    """Poll the event loop until `condition()` holds; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def request(tag: int, rows: int = 1, shape_key: object = None) -> Prepared:
    extra = {"tag": tag} | ({"shape_key": shape_key} if shape_key is not None else {})
    return Prepared(rows=rows, feeds={"x": np.zeros((rows, 1), np.float32)}, extra=extra)


def batcher(device: Device, **kwargs) -> Batcher:
    settings = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "queue_limit": 100} | kwargs
    b = Batcher(device.execute, **settings)
    b.start()
    return b


async def submit_all(b: Batcher, items: list[Prepared], deadline: float | None = None) -> list:
    pendings = [b.submit(item, deadline) for item in items]
    return await asyncio.gather(*(b.result(p) for p in pendings), return_exceptions=True)


async def test_batches_hold_at_most_max_rows_of_whole_requests():
    device = Device()
    b = batcher(device, max_batch_size=4)
    answers = await submit_all(b, [request(i, rows=2 if i % 3 == 0 else 1) for i in range(10)])
    assert answers == list(range(10))  # every request answered with its own tag
    assert device.computed == list(range(10))  # in arrival order
    rows = {i: 2 if i % 3 == 0 else 1 for i in range(10)}
    assert all(sum(rows[t] for t in batch) <= 4 for batch in device.batches)
    assert max(len(batch) for batch in device.batches) > 1
    await b.stop()


async def test_next_batch_fills_while_one_computes():
    device = Device()
    b = batcher(device, max_batch_size=8)
    device.gate.clear()
    first = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()  # batch [0] is on the device
    rest = asyncio.ensure_future(submit_all(b, [request(i) for i in range(1, 6)]))
    await asyncio.sleep(0.01)
    assert device.batches == [[0]]  # one in flight at a time
    assert b.load == 6  # 1 computing + 5 queued
    device.gate.set()
    assert await first == [0] and await rest == [1, 2, 3, 4, 5]
    assert device.batches == [[0], [1, 2, 3, 4, 5]]  # all that arrived meanwhile went together
    await b.stop()


async def test_queue_delay_waits_for_more_rows():
    device = Device()
    b = batcher(device, max_batch_size=8, max_queue_delay_s=0.2)
    started = time.monotonic()
    early = asyncio.ensure_future(submit_all(b, [request(0)]))
    await asyncio.sleep(0.02)
    late = asyncio.ensure_future(submit_all(b, [request(1)]))
    assert await early == [0] and await late == [1]
    assert device.batches == [[0, 1]]
    assert time.monotonic() - started >= 0.2


async def test_full_batch_does_not_wait_for_the_delay():
    device = Device()
    b = batcher(device, max_batch_size=3, max_queue_delay_s=30)
    answers = await asyncio.wait_for(submit_all(b, [request(i) for i in range(3)]), timeout=5)
    assert answers == [0, 1, 2] and device.batches == [[0, 1, 2]]
    await b.stop()


async def test_batching_off_runs_one_request_per_batch():
    device = Device()
    b = batcher(device, max_batch_size=0)
    assert await submit_all(b, [request(i, rows=3) for i in range(3)]) == [0, 1, 2]
    assert device.batches == [[0], [1], [2]]
    await b.stop()


async def test_only_requests_of_one_shape_share_a_batch():
    device = Device()
    b = batcher(device, max_batch_size=8)
    items = [request(0, shape_key="a"), request(1, shape_key="b"), request(2, shape_key="a"),
             request(3, shape_key="b")]
    assert await submit_all(b, items) == [0, 1, 2, 3]
    assert device.batches == [[0, 2], [1, 3]]
    await b.stop()


async def test_expired_while_queued_is_never_computed():
    device = Device()
    b = batcher(device)
    device.gate.clear()
    blocker = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()
    # Not awaited through result(): the loop itself must drop them at dispatch.
    doomed = [b.submit(request(i), time.monotonic() + 0.01) for i in (1, 2)]
    # Awaited through result(): its wait ends at the deadline although the device is still busy.
    waiter = b.submit(request(3), time.monotonic() + 0.01)
    with pytest.raises(DeadlineExceededError, match="not computed"):
        await asyncio.wait_for(b.result(waiter), timeout=5)
    await asyncio.sleep(0.02)
    survivor = asyncio.ensure_future(submit_all(b, [request(4)]))
    device.gate.set()
    assert await blocker == [0] and await survivor == [4]
    for pending in doomed:
        with pytest.raises(DeadlineExceededError):
            await pending.future
    assert device.computed == [0, 4]
    await b.stop()


async def test_past_deadline_is_refused_at_once():
    b = batcher(Device())
    with pytest.raises(DeadlineExceededError):
        b.submit(request(0), time.monotonic() - 1)
    assert b.load == 0
    await b.stop()


async def test_cancelled_caller_leaves_the_queue():
    device = Device()
    b = batcher(device)
    device.gate.clear()
    blocker = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()

    async def caller() -> object:  # as Replica.infer does: submit and wait in one coroutine
        return await b.result(b.submit(request(1), None))

    abandoned = asyncio.ensure_future(caller())
    await until(lambda: b.queued == 1)
    abandoned.cancel()
    await until(lambda: b.queued == 0)
    device.gate.set()
    await blocker
    await b.stop()
    assert device.computed == [0]


async def test_full_queue_sheds_with_retry_after_from_measured_throughput():
    device = Device()
    b = batcher(device, queue_limit=3)
    device.gate.clear()
    blocker = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()
    queued = [b.submit(request(i), None) for i in (1, 2, 3)]
    with pytest.raises(QueueFullError) as no_figure:
        b.submit(request(4), None)
    assert no_figure.value.retry_after_s == 1.0  # nothing measured yet: the minimum
    assert no_figure.value.status == 429
    b.record_throughput(rows=1, seconds=2.0)  # 0.5 rows/s; 4 rows ahead -> 8 s
    with pytest.raises(QueueFullError) as measured:
        b.submit(request(5), None)
    assert measured.value.retry_after_s == 8.0
    device.gate.set()
    assert await blocker == [0]
    assert await asyncio.gather(*(b.result(p) for p in queued)) == [1, 2, 3]
    await b.stop()


async def test_queue_time_budget_sheds_what_could_only_wait_too_long():
    """Issue 13 item 9: a count bound let 256 clients wait 1.6 s; a budget in time sheds instead."""
    device = Device()
    b = batcher(device, queue_budget_s=0.5)
    device.gate.clear()
    blocker = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()
    queued = [b.submit(request(i), None) for i in range(1, 10)]  # nothing measured yet: admitted
    b.record_throughput(rows=100, seconds=1.0)  # the device's speed does not decide admission...
    assert b.expected_wait_s() is None
    b.record_drain(rows=20, seconds=1.0)  # ...the queue's drain rate does: 10 rows ahead are 0.5 s
    assert b.expected_wait_s() == pytest.approx(0.5)
    queued.append(b.submit(request(10), None))  # exactly the budget: still admitted
    with pytest.raises(QueueFullError) as busy:
        b.submit(request(11), None)  # 11 rows ahead: 0.55 s
    assert busy.value.status == 429 and "ms a request may wait" in str(busy.value)
    assert busy.value.retry_after_s == 1.0  # 11 rows at 100 rows/s, rounded up to the minimum
    # a request's own deadline is a budget too, when it is the shorter one
    with pytest.raises(QueueFullError):
        b.check_admission(time.monotonic() + 0.2, time.monotonic())
    b.queue_budget_s = 0.0  # no budget: only the count bound (and deadlines) refuse
    b.check_admission(None, time.monotonic())
    device.gate.set()
    assert await blocker == [0]
    assert await asyncio.gather(*(b.result(p) for p in queued)) == list(range(1, 11))
    await b.stop()


async def test_close_fails_queued_and_new_requests():
    device = Device()
    b = batcher(device)
    device.gate.clear()
    blocker = asyncio.ensure_future(submit_all(b, [request(0)]))
    await device.started.wait()
    queued = b.submit(request(1), None)
    b.close(ReplicaDiedError("gone"))
    with pytest.raises(ReplicaDiedError):
        await b.result(queued)
    with pytest.raises(ReplicaDiedError):
        b.submit(request(2), None)
    device.gate.set()
    assert await blocker == [0]
    await b.stop()


async def test_batch_without_answers_fails_instead_of_hanging():
    async def forgetful(batch: list[Pending]) -> None:
        return None

    b = Batcher(forgetful, max_batch_size=2, max_queue_delay_s=0, queue_limit=10)
    b.start()
    answers = await asyncio.wait_for(submit_all(b, [request(0), request(1)]), timeout=5)
    assert all(isinstance(a, Exception) and "without an answer" in str(a) for a in answers)
    await b.stop()


@pytest.mark.parametrize(
    "kwargs", [{"max_batch_size": -1}, {"max_queue_delay_s": -1}, {"queue_limit": 0}, {"pipeline_depth": 0}])
def test_bad_settings_are_refused(kwargs):
    settings = {"max_batch_size": 4, "max_queue_delay_s": 0.0, "queue_limit": 10} | kwargs
    with pytest.raises(ValueError):
        Batcher(Device().execute, **settings)


async def test_a_crashed_loop_fails_waiters_instead_of_hanging():
    crashes = []
    device = Device()
    b = Batcher(device.execute, max_batch_size=4, max_queue_delay_s=0, queue_limit=10,
                on_crash=crashes.append)
    b.start()
    broken = Prepared(rows=1, feeds={}, extra=None)  # type: ignore[arg-type]  # a pipeline bug
    with pytest.raises(ReplicaDiedError, match="batching loop crashed"):
        await asyncio.wait_for(b.result(b.submit(broken, None)), timeout=5)
    assert not b.running and len(crashes) == 1
    with pytest.raises(ReplicaDiedError):
        b.submit(request(1), None)


async def test_next_batch_is_dispatched_before_the_finished_one_is_answered():
    """Answering a batch (split, encode, resolve) must not leave the device idle: `execute` may
    return a `finish` step, and the batcher hands the next batch over before running it."""
    events: list[tuple[str, list[int]]] = []

    async def execute(batch: list[Pending]):
        tags = [p.prepared.extra["tag"] for p in batch]
        events.append(("start", tags))
        await asyncio.sleep(0.01)  # on the device

        def finish() -> None:
            events.append(("finish", tags))
            for pending in batch:
                pending.future.set_result(pending.prepared.extra["tag"])

        return finish

    b = Batcher(execute, max_batch_size=2, max_queue_delay_s=0.0, queue_limit=100)
    b.start()
    pendings = [b.submit(request(i), None) for i in range(6)]
    assert await asyncio.gather(*(b.result(p) for p in pendings)) == list(range(6))
    await b.stop()
    order = [(kind, tuple(tags)) for kind, tags in events]
    assert order.index(("start", (2, 3))) < order.index(("finish", (0, 1)))
    assert order.index(("start", (4, 5))) < order.index(("finish", (2, 3)))
    assert sorted(tag for kind, tags in events if kind == "finish" for tag in tags) == list(range(6))


@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_pipeline_depth_bounds_the_batches_on_the_worker(depth):
    """With `pipeline_depth` N, up to N batches are handed to `execute` before the first returns
    (the next waits on the worker), and never more."""
    on_worker = 0
    most = 0

    async def execute(batch: list[Pending]) -> None:
        nonlocal on_worker, most
        on_worker += 1
        most = max(most, on_worker)
        await asyncio.sleep(0.02)
        on_worker -= 1
        for pending in batch:
            pending.future.set_result(pending.prepared.extra["tag"])

    b = Batcher(execute, max_batch_size=1, max_queue_delay_s=0.0, queue_limit=100, pipeline_depth=depth)
    b.start()
    pendings = [b.submit(request(i), None) for i in range(8)]
    assert await asyncio.gather(*(b.result(p) for p in pendings)) == list(range(8))
    await b.stop()
    assert most == depth


async def test_drain_rate_is_measured_over_busy_stretches_only():
    device = Device()
    b = batcher(device, max_batch_size=1)
    device.gate.clear()
    pending = asyncio.ensure_future(submit_all(b, [request(i) for i in range(3)]))
    await device.started.wait()
    await asyncio.sleep(0.05)
    device.gate.set()  # three batches back to back: the second and third measure the drain
    assert await pending == [0, 1, 2]
    assert b.expected_wait_s() == 0.0  # measured, and nothing is queued
    measured = b._drain_rows_per_s
    await asyncio.sleep(0.2)  # idle: the next batch's interval includes this and must not count
    assert await submit_all(b, [request(3)]) == [3]
    assert b._drain_rows_per_s == measured
    await b.stop()
