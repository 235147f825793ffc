"""The autoscaler: reads each autoscaled deployment's load from the router every interval, asks
its `Scaler` (`kcloud.farm.autoscaling`, the policy) how many replicas it should run, and makes
the change through the control plane like any other scale.

So a new replica goes where placement puts it (perf/W, constraints, tenant reservations), a
tenant's quota refuses a scale-out it does not allow (the autoscaler then takes the most the
quota allows, and records the refusal as an event), and a scale-in marks replicas `stopping`: the
reconciler takes each out of the router first and stops it once it has answered what it holds.

A deployment whose policy allows zero replicas is kept on the router's standby: at zero it stays
served, and its first request wakes the autoscaler (`Router.on_cold_request`), which starts a
replica at once; the request waits for it and the wait is recorded (`autoscale.cold_start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kcloud.errors import KcloudError
from kcloud.farm.autoscaling import Decision, Scaler
from kcloud.farm.decisions import AutoscaledDeployment
from kcloud.farm.service import ControlPlaneService
from kcloud.farm.spec import AutoscalerState
from kcloud.serving.router import Router
from kcloud.serving.served import ServedModel

log = logging.getLogger(__name__)

#: A count a quota refused is asked for again after this long (the quota may have been raised).
REFUSED_RETRY_S = 10.0


@dataclasses.dataclass
class _Tracked:
    """What the autoscaler keeps per deployment between intervals."""

    scaler: Scaler
    last: Decision | None = None
    last_change: str | None = None
    last_change_at: datetime | None = None
    last_cold_start_s: float | None = None
    shed_total: int = 0
    refused: int | None = None  # the count a quota last refused (recorded once until it changes)
    refused_at: float | None = None  # when; it is tried again after REFUSED_RETRY_S


class Autoscaler:
    def __init__(
        self,
        service: ControlPlaneService,
        router: Router,
        wake: Callable[[], None],
        *,
        interval_s: float,
    ) -> None:
        self.service = service
        self.router = router
        self.wake = wake
        self.interval_s = interval_s
        self._tracked: dict[str, _Tracked] = {}
        #: Deployments kept on the router's standby -> (model, version) and the entry served.
        self._standby: dict[str, tuple[tuple[str, int], ServedModel]] = {}
        self._cold: set[str] = set()
        self._nudge: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        service.autoscaler_state = self.state
        router.on_cold_request.append(self._cold_request)

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._nudge = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kcloud-autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _cold_request(self, name: str) -> None:
        """A request found `name` at zero replicas: decide now rather than at the next interval."""
        self._cold.add(name)
        if self._nudge is not None:
            self._nudge.set()

    async def _run(self) -> None:
        assert self._nudge is not None
        next_reading = time.monotonic()
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed interval must not end autoscaling
                log.exception("autoscaler interval failed")
            next_reading = max(next_reading + self.interval_s, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), next_reading - time.monotonic())
            self._nudge.clear()

    # ------------------------------------------------------------------------------ one interval
    async def tick(self) -> None:
        deployments = await asyncio.to_thread(self.service.autoscaled)
        now = time.monotonic()
        changed = False
        for dep in deployments:
            try:
                changed |= await self._follow(dep, now)
            except Exception:  # one deployment's failure (its model file gone) must not stop the others
                log.exception("autoscaling %s failed this interval", dep.name)
        self._cold.clear()
        self._forget({d.name for d in deployments})
        if changed:
            self.wake()

    async def _follow(self, dep: AutoscaledDeployment, now: float) -> bool:
        """One deployment's interval: read, decide, act; whether its replica count changed."""
        tracked = self._track(dep)
        reading = self.router.read_load(dep.name)
        tracked.scaler.observe(reading)
        tracked.shed_total += reading.shed
        if dep.name in self._cold:
            tracked.scaler.cold_request()
        self._keep_on_standby(dep)
        if reading.cold_waits_s:
            await self._cold_started(dep.name, tracked, max(reading.cold_waits_s))
        decision = tracked.scaler.decide(now, dep.replicas)
        tracked.last = decision
        if not decision.changes(dep.replicas):
            return False
        if (tracked.refused == decision.replicas and tracked.refused_at is not None
                and now - tracked.refused_at < REFUSED_RETRY_S):
            return False  # refused a moment ago (a quota): not every interval
        return await asyncio.to_thread(self._apply, dep, decision, tracked)

    def _track(self, dep: AutoscaledDeployment) -> _Tracked:
        tracked = self._tracked.get(dep.name)
        if tracked is None or tracked.scaler.policy != dep.policy:
            fresh = _Tracked(Scaler(dep.policy))
            if tracked is not None:
                fresh.shed_total, fresh.last_cold_start_s = tracked.shed_total, tracked.last_cold_start_s
            tracked = self._tracked[dep.name] = fresh
        return tracked

    def _keep_on_standby(self, dep: AutoscaledDeployment) -> None:
        if dep.policy.min_replicas > 0:
            if self._standby.pop(dep.name, None) is not None:
                self.router.end_standby(dep.name)
            return
        model = (dep.model, dep.version)
        kept = self._standby.get(dep.name)
        if kept is None or kept[0] != model:  # the served name is the deployment's, as the reconciler's
            served = ServedModel(dep.name, self.service.repository.get(*model))
            self._standby[dep.name] = (model, served)
            self.router.standby(served)

    def _forget(self, names: set[str]) -> None:
        """Deployments deleted or no longer autoscaled: no state, no standby."""
        for name in [n for n in self._tracked if n not in names]:
            del self._tracked[name]
            self.router.load.forget(name)
        for name in [n for n in self._standby if n not in names]:
            del self._standby[name]
            self.router.end_standby(name)

    async def _cold_started(self, name: str, tracked: _Tracked, waited_s: float) -> None:
        tracked.last_cold_start_s = waited_s = round(waited_s, 3)
        await asyncio.to_thread(
            self.service.autoscale_event, name, "autoscale.cold_start",
            f"a request at zero replicas was served by a new replica after waiting {waited_s:.2f} s",
            {"cold_start_s": waited_s})

    def _apply(self, dep: AutoscaledDeployment, decision: Decision, tracked: _Tracked) -> bool:
        """Scale to the decision, or to the most a refusal (a tenant's quota) allows; in a thread."""
        inputs: dict[str, Any] = dict(decision.inputs)
        try:
            done = self.service.autoscale_to(dep.name, decision.replicas, decision.reason, inputs)
        except KcloudError as refusal:
            done = False
            if decision.replicas > dep.replicas:
                for fewer in range(decision.replicas - 1, dep.replicas, -1):
                    with contextlib.suppress(KcloudError):
                        if self.service.autoscale_to(
                                dep.name, fewer, f"{decision.reason}; held at {fewer}: {refusal.message}",
                                inputs | {"held_at": fewer}):
                            done = True
                            break
            if tracked.refused != decision.replicas:
                wanted = f"wanted {decision.replicas} replica(s); {refusal.message}"
                self.service.autoscale_event(dep.name, "autoscale.refused", wanted, inputs)
            tracked.refused, tracked.refused_at = decision.replicas, time.monotonic()
        else:
            tracked.refused = tracked.refused_at = None
        if done:
            tracked.last_change, tracked.last_change_at = decision.reason, datetime.now(UTC)
        return done

    # ------------------------------------------------------------------------------ reads
    def state(self, name: str) -> AutoscalerState | None:
        """What the autoscaler sees of `name` now (None before its first interval)."""
        tracked = self._tracked.get(name)
        if tracked is None or tracked.last is None:
            return None
        scaler, last, now = tracked.scaler, tracked.last, time.monotonic()
        return AutoscalerState(
            metric=scaler.policy.metric,
            target=scaler.target,
            value=scaler.value(now, scaler.policy.stable_window_s),
            panic_value=scaler.value(now, scaler.policy.panic_window_s),
            panic=last.panic,
            desired=last.wanted,
            replicas=int(last.inputs.get("current") or 0),
            last_decision=tracked.last_change,
            last_decision_at=tracked.last_change_at,
            last_cold_start_s=tracked.last_cold_start_s,
            shed_total=tracked.shed_total,
        )
