"""The reconciler: makes what runs (the executor's replicas) match what the database decided.

One pass, repeated every `interval_s` and whenever something asks (`wake()`: an API change, a
replica's death reported by the router):

1. health: every `health_interval_s`, sample each device's telemetry; a device that turns
   unhealthy has its replicas moved (the service marks them `evicting`);
2. liveness: a replica whose process died is reported (`replica_died`), removed from the router,
   and its row deleted, which leaves its deployment short;
3. placement: every deployment short of replicas gets a placement (`failover`, `drain`,
   `restore` or `retry`, recorded with its reasons);
4. action: rows `placed` are started; rows `running` that this process does not run (after a
   restart of `kcloud up`) are started again on the device they were placed on, so a restart
   restores every deployment from the database; `evicting` rows whose replacement is running
   become `stopping`; `stopping` rows are stopped and deleted; replicas with no row are stopped.

The reconciler talks to replicas only through the `Executor` protocol, so a Ray executor
(`kcloud.farm.executor` says how) slots in without a change here. Database work runs in a
thread (`asyncio.to_thread`) so the serving loop never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kcloud.devices.device import Device, Telemetry
from kcloud.farm.executor import Executor, ReplicaHandle, ReplicaSpec
from kcloud.farm.service import ControlPlaneService, ReplicaWork

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
DEFAULT_HEALTH_INTERVAL_S = 10.0
#: Replicas started at once (each spawns a worker process that loads its model).
START_CONCURRENCY = 4


@dataclass
class PassReport:
    """What one pass did (for logs and tests)."""

    died: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    placed_for: list[str] = field(default_factory=list)
    unhealthy: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any((self.died, self.started, self.failed, self.stopped, self.placed_for, self.unhealthy))


class Reconciler:
    def __init__(
        self,
        service: ControlPlaneService,
        executor: Executor,
        *,
        sample: Callable[[Device], Telemetry] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S,
    ) -> None:
        self.service = service
        self.executor = executor
        self.sample = sample
        self.interval_s = interval_s
        self.health_interval_s = health_interval_s
        self._handles: dict[str, ReplicaHandle] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_health = -float("inf")
        self._pass_lock: asyncio.Lock | None = None
        #: Set after each pass; tests and `attach` wait on it.
        self.passes = 0

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Run passes on the current event loop until `stop()`."""
        self._bind()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kcloud-reconciler")

    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._pass_lock = asyncio.Lock()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """Ask for a pass now; safe from any thread (API handlers run in a thread pool)."""
        if self._loop is None or self._wake is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass must not end reconciliation; the next one retries
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    # ------------------------------------------------------------------------------ one pass
    async def run_once(self) -> PassReport:
        self._bind()
        assert self._pass_lock is not None
        async with self._pass_lock:
            report = PassReport()
            await self._check_health(report)
            await self._check_liveness(report)
            report.placed_for = await asyncio.to_thread(self.service.ensure_placements)
            work = await asyncio.to_thread(self.service.work)
            await self._act(work, report)
            if await asyncio.to_thread(self.service.settle_evictions):
                work = await asyncio.to_thread(self.service.work)
                await self._act(work, report)
            await asyncio.to_thread(self.service.refresh_statuses)
            self.passes += 1
            if report.changed:
                log.info("reconcile: %s", report)
            return report

    async def _check_health(self, report: PassReport) -> None:
        if self.sample is None or time.monotonic() - self._last_health < self.health_interval_s:
            return
        self._last_health = time.monotonic()
        sample = self.sample

        def read() -> dict[str, tuple[bool, str | None]]:
            readings = {}
            for device in self.service.devices:
                telemetry = sample(device)
                why = (
                    "; ".join(f"{k}: {v}" for k, v in telemetry.reasons.items())
                    if not telemetry.healthy
                    else None
                )
                readings[device.uid] = (telemetry.healthy, why)
            return readings

        readings = await asyncio.to_thread(read)
        report.unhealthy = await asyncio.to_thread(self.service.update_health, readings)

    async def _check_liveness(self, report: PassReport) -> None:
        for replica_id, handle in list(self._handles.items()):
            if self.executor.alive(handle):
                continue
            del self._handles[replica_id]
            await self._quiet_stop(handle)
            reason = f"worker process {handle.pid} died" if handle.pid else "replica died"
            await asyncio.to_thread(self.service.replica_died, replica_id, reason)
            report.died.append(replica_id)

    async def _quiet_stop(self, handle: ReplicaHandle) -> None:
        try:
            await self.executor.stop(handle)
        except Exception as exc:
            log.warning("stopping %s: %s", handle.replica_id, exc)

    async def _act(self, work: list[ReplicaWork], report: PassReport) -> None:
        rows = {w.replica_id: w for w in work}
        to_start: list[tuple[ReplicaWork, bool]] = []
        for w in work:
            running_here = w.replica_id in self._handles
            if w.state == "stopping":
                if running_here:
                    await self._quiet_stop(self._handles.pop(w.replica_id))
                await asyncio.to_thread(self.service.replica_stopped, w.replica_id)
                report.stopped.append(w.replica_id)
            elif w.state == "evicting" and not running_here:
                # Nothing runs it here (e.g. after a restart): there is nothing to wait for.
                await asyncio.to_thread(self.service.replica_stopped, w.replica_id)
            elif w.state in ("placed", "starting", "running") and not running_here:
                if not w.device_usable:
                    which = (f"device {w.device_uid}" if len(w.devices) == 1
                             else f"one of its devices ({', '.join(w.devices)})")
                    await asyncio.to_thread(
                        self.service.forget_unusable,
                        w.replica_id,
                        f"{which} is absent, unhealthy or drained",
                    )
                    continue
                to_start.append((w, w.state == "running"))
        # Replicas with no row (deleted deployment, or removed meanwhile) are stopped.
        for replica_id in [rid for rid in self._handles if rid not in rows]:
            await self._quiet_stop(self._handles.pop(replica_id))
            report.stopped.append(replica_id)
        if to_start:
            limit = asyncio.Semaphore(START_CONCURRENCY)

            async def bounded(item: tuple[ReplicaWork, bool]) -> None:
                async with limit:
                    await self._start(item[0], item[1], report)

            await asyncio.gather(*(bounded(item) for item in to_start))

    async def _start(self, w: ReplicaWork, restoring: bool, report: PassReport) -> None:
        if not await asyncio.to_thread(self.service.mark_starting, w.replica_id, restoring=restoring):
            return
        try:
            devices = tuple(self.service.device(uid) for uid in w.devices)
            entry, served, stages = await asyncio.to_thread(self.service.entry_for, w, devices[0])
            spec = ReplicaSpec(w.replica_id, w.deployment, entry, devices[0], threads=w.threads,
                               stages=stages, stage_devices=devices if stages is not None else ())
            handle = await self.executor.start(spec)
        except Exception as exc:
            message = str(exc).strip() or type(exc).__name__
            log.warning(
                "replica %s of %s could not start on %s: %s",
                w.replica_id,
                w.deployment,
                w.device_uid,
                message,
            )
            await asyncio.to_thread(self.service.start_failed, w.replica_id, message)
            report.failed.append(w.replica_id)
            return
        self._handles[w.replica_id] = handle
        recorded = await asyncio.to_thread(
            self.service.mark_running,
            w.replica_id,
            executor=handle.executor,
            pid=handle.pid,
            handle={**handle.as_json(), "serves": served,
                    "artifact": entry.artifact.describe() if entry.artifact else None},
        )
        if not recorded:  # deleted while it was starting
            await self._quiet_stop(self._handles.pop(w.replica_id))
            return
        report.started.append(w.replica_id)

    # ------------------------------------------------------------------------------ waiting
    async def settle(
        self, timeout_s: float = 60.0, *, on_pass: Callable[[PassReport], None] | None = None
    ) -> None:
        """Run passes until one changes nothing (or `timeout_s`): for start-up and tests.

        `on_pass` sees each pass's report (`kcloud up` advances its progress bar with it).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            report = await self.run_once()
            if on_pass is not None:
                on_pass(report)
            if not report.changed:
                return
        log.warning("the farm did not settle within %.0f s", timeout_s)
