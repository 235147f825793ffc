"""`Router`: sends each request to the least-loaded live replica of its model.

Two kinds of replica stand in it: `Replica` (kcloud's own batcher and worker, for ONNX models:
`infer`) and `EngineReplica` (an LLM engine process, for generative models: `generate`, which
chooses among a model's engines by prompt prefix and outstanding tokens, `token_routing`).

The router is the only thing the gateway talks to. It refuses bad input before anything is
queued (`pipeline.prepare` raises `InputError`), balances on each replica's load (rows queued
plus rows computing), skips replicas whose worker died, and retries a request once on another
replica when its replica dies under it, so a crashed worker costs a retry, not an error.

Which replicas exist is decided by the control plane (`kcloud.farm`): they are added and removed
here, and `on_replica_died` observers hear of a death so the control plane can place a new
replica. While it does, the model stays known (unready, 503), not unknown (404).

A model the autoscaler may take to zero replicas is on `standby`: it stays served, and a request
that finds no replica tells the `on_cold_request` observers (the autoscaler starts one) and waits
for it, within the request's deadline (`COLD_START_WAIT_S` without one). `load` counts what each
model is asked (in flight, arrivals, latencies, sheds) for the autoscaler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from kcloud.errors import InvalidRequestError
from kcloud.models.errors import ModelNotFoundError
from kcloud.models.repository import ModelRepository
from kcloud.serving.engine import EngineReplica
from kcloud.serving.engine_calls import Answer, StreamAnswer, send
from kcloud.serving.engine_metrics import EngineMetrics
from kcloud.serving.errors import DeadlineExceededError, ModelNotReadyError, QueueFullError, ReplicaDiedError
from kcloud.serving.generation import GenerationCall
from kcloud.serving.load import LoadMeter, LoadReading
from kcloud.serving.metrics import ServingMetrics
from kcloud.serving.replica import InferOutcome, Replica
from kcloud.serving.served import ServedModel
from kcloud.serving.token_routing import Policy, TokenRouter
from kcloud.serving.trace import TraceRecorder

AnyReplica = Replica | EngineReplica

log = logging.getLogger(__name__)

#: How long a request without a deadline waits for the first replica of a model at zero.
COLD_START_WAIT_S = 120.0


class Router:
    def __init__(self, repository: ModelRepository, *, token_policy: Policy = "prefix",
                 metrics: ServingMetrics | None = None, engine_metrics: EngineMetrics | None = None,
                 trace: TraceRecorder | None = None) -> None:
        self.repository = repository
        self.metrics = metrics
        #: Records each inference request's arrival and rows (`kcloud up --record-trace`), if set.
        self.trace = trace
        #: Scrapes each engine replica's own metrics for /metrics (`kcloud_llm_*`) while it is routed.
        self.engine_metrics = engine_metrics
        self.tokens = TokenRouter(token_policy)
        self._replicas: dict[str, AnyReplica] = {}
        # Looked up on every request, changed only by add/remove: rebuilt lazily after a change.
        self._served: list[ServedModel] | None = None
        self._versions: dict[str, list[ServedModel]] = {}  # served name -> its versions, in order
        self._candidates_of: dict[tuple[str, int], list[AnyReplica]] = {}
        #: Models whose last replica died and was removed, while a replacement starts.
        self._awaiting: dict[tuple[str, int], ServedModel] = {}
        #: Models that may have no replica (scaled to zero): served, and a request waits for one.
        self._standby: dict[tuple[str, int], ServedModel] = {}
        #: Set when a replica of the model is added: wakes the requests waiting at zero.
        self._replica_added: dict[tuple[str, int], asyncio.Event] = {}
        self._turn = itertools.count()
        #: Called once per replica whose worker died (not for replicas stopped on purpose).
        self.on_replica_died: list[Callable[[AnyReplica], None]] = []
        #: Called with the served name when a request finds a standby model without a replica.
        self.on_cold_request: list[Callable[[str], None]] = []
        #: What each served model is asked to do, for the autoscaler.
        self.load = LoadMeter()

    def __repr__(self) -> str:
        return f"Router({len(self._replicas)} replicas)"

    # -- replicas ---------------------------------------------------------------------------
    def add_replica(self, replica: AnyReplica) -> None:
        """Route to `replica` (already started) from now on."""
        if replica.id in self._replicas:
            raise ValueError(f"replica {replica.id} is already routed")
        replica.on_death.append(self._replica_died)  # type: ignore[arg-type]
        self._replicas[replica.id] = replica
        if isinstance(replica, EngineReplica) and self.engine_metrics is not None:
            launch = replica.launch
            if launch is not None and launch.metrics_path is not None:
                self.engine_metrics.watch(
                    replica.id, deployment=replica.served.name, device=replica.device.uid,
                    url=launch.base_url + launch.metrics_path, engine=replica.runtime.name)
        key = replica.served.key
        self._awaiting.pop(key, None)
        self._replicas_changed()
        if (added := self._replica_added.pop(key, None)) is not None:
            added.set()

    async def remove_replica(self, replica_id: str, *, replaced: bool = False) -> AnyReplica | None:
        """Stop routing to a replica and stop it (it finishes what it has queued first).

        `replaced`: a new replica will take its place (it died), so its model stays served,
        unready, until then rather than vanishing.
        """
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            key = replica.served.key
            if replaced:
                self._awaiting[key] = replica.served
            elif not any(r.served.key == key for r in self._replicas.values()):
                self._awaiting.pop(key, None)
            self._replicas_changed()
            self.tokens.forget(replica_id)
            if self.engine_metrics is not None:
                self.engine_metrics.forget(replica_id)
            await replica.stop()
        return replica

    def standby(self, served: ServedModel) -> None:
        """Keep `served` while it has no replica: a request waits for one (scale from zero)."""
        if self._standby.get(served.key) != served:
            self._standby = {k: e for k, e in self._standby.items() if k[0] != served.name}
            self._standby[served.key] = served
            self._replicas_changed()

    def end_standby(self, name: str) -> None:
        """`name` is no longer kept served without replicas (deleted, or no longer autoscaled)."""
        if any(key[0] == name for key in self._standby):
            self._standby = {k: e for k, e in self._standby.items() if k[0] != name}
            self._replicas_changed()

    def read_load(self, name: str) -> LoadReading:
        """`name`'s load since the previous reading, with the tokens its engines have in flight."""
        tokens = sum(r.outstanding_tokens for r in self._replicas.values()
                     if isinstance(r, EngineReplica) and r.served.name == name)
        return self.load.read(name, tokens_in_flight=tokens)

    def replicas(self, model: str | None = None) -> list[AnyReplica]:
        return [r for r in self._replicas.values() if model is None or r.served.name == model]

    def _replicas_changed(self) -> None:
        self._served = None
        self._versions = {}
        self._candidates_of = {}

    def _replica_died(self, replica: AnyReplica) -> None:
        log.error("replica %s of %s on %s died", replica.id, replica.served.name, replica.device.uid)
        for observer in list(self.on_replica_died):
            try:
                observer(replica)
            except Exception:  # an observer's bug must not break serving
                log.exception("replica-death observer failed")

    # -- models -----------------------------------------------------------------------------
    def served_models(self) -> list[ServedModel]:
        """One per (served name, version) that has a replica (dead or alive) or awaits one."""
        if self._served is None:
            entries: dict[tuple[str, int], ServedModel] = self._standby | self._awaiting
            for replica in self._replicas.values():
                entries.setdefault(replica.served.key, replica.served)
            self._served = [entries[key] for key in sorted(entries)]
            versions: dict[str, list[ServedModel]] = {}
            for served in self._served:  # sorted by (name, version), so each list is by version
                versions.setdefault(served.name, []).append(served)
            self._versions = versions
        return list(self._served)

    def served(self, name: str, version: int | None = None) -> ServedModel:
        """The model served as `name` (its latest served version when `version` is None)."""
        if self._served is None:
            self.served_models()
        versions = self._versions.get(name, [])
        if not versions:
            raise not_served(name, self.served_models())
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise ModelNotFoundError(
            f"model {name!r} has no served version {version}; "
            f"served versions: {', '.join(str(e.version) for e in versions)}")

    def _candidates(self, served: ServedModel) -> list[AnyReplica]:
        key = served.key
        candidates = self._candidates_of.get(key)
        if candidates is None:
            candidates = [r for r in self._replicas.values() if r.served.key == key]
            self._candidates_of[key] = candidates
        return candidates

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """True when the model (version) is served and has a live replica, or is on standby (a
        request is then served after a cold start)."""
        try:
            served = self.served(name, version)
        except ModelNotFoundError:
            return False
        return served.key in self._standby or any(r.alive for r in self._candidates(served))

    def _least_loaded(self, entry: ServedModel, exclude: set[str]) -> Replica | None:
        live = [r for r in self._candidates(entry)
                if isinstance(r, Replica) and r.alive and r.id not in exclude]
        if not live:
            return None
        # Among equally loaded replicas take turns, so an idle model spreads its first requests.
        start = next(self._turn) % len(live)
        rotated = live[start:] + live[:start]
        return min(rotated, key=lambda r: r.load)

    # -- requests ---------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, np.ndarray],
        *,
        deadline: float | None = None,
    ) -> InferOutcome:
        """Check `inputs`, run them on the least-loaded live replica, retrying once if it dies.

        Raises ModelNotFoundError (404), InputError (400), QueueFullError (429),
        ModelNotReadyError (503), ReplicaDiedError (503, the retry died too),
        DeadlineExceededError (504) or InferenceFailedError (500).
        """
        entry = self.served(name, version)
        if entry.config.generative:
            raise InvalidRequestError(
                f"model {entry.name!r} is a generative model: "
                "send it /v1/chat/completions or /v1/completions")
        started = self.load.arrived(entry.name)
        if self.trace is not None:
            self.trace.record(entry.name, _rows(inputs))
        try:
            outcome = await self._infer(entry, inputs, deadline)
        except QueueFullError:
            self.load.left(entry.name, shed=True)
            raise
        except BaseException:
            self.load.left(entry.name)
            raise
        self.load.answered(entry.name, started)
        return outcome

    async def _infer(
        self, entry: ServedModel, inputs: dict[str, np.ndarray], deadline: float | None
    ) -> InferOutcome:
        first = self._least_loaded(entry, set()) or await self._first_replica(entry, deadline)
        first.batcher.check_admission(deadline, time.monotonic())  # refuse before any work on it
        pipeline = first.pipeline
        if pipeline.heavy(inputs):  # long texts: tokenise off the event loop, which serves everyone
            prepared = await asyncio.to_thread(pipeline.prepare, inputs)
        else:
            prepared = pipeline.prepare(inputs)
        try:
            return await first.infer(prepared, deadline=deadline)
        except ReplicaDiedError as died:
            retry = self._least_loaded(entry, {first.id})
            if retry is None:
                raise ReplicaDiedError(
                    f"{died}; no other live replica of {entry.name} v{entry.version} to retry on") from None
            log.warning("retrying a request of %s on %s after: %s", entry.name, retry.id, died)
            return await retry.infer(prepared, deadline=deadline)

    async def _first_replica(self, entry: ServedModel, deadline: float | None) -> Replica:
        """A model without a live replica: 503, or, on standby, ask for one and wait for it."""
        key = entry.key
        if key not in self._standby:
            raise ModelNotReadyError(f"model {entry.name} v{entry.version} has no live replica")
        for observer in list(self.on_cold_request):
            try:
                observer(entry.name)
            except Exception:  # an observer's bug must not break serving
                log.exception("cold-request observer failed")
        started = time.monotonic()
        until = started + COLD_START_WAIT_S if deadline is None else deadline
        while True:
            added = self._replica_added.setdefault(key, asyncio.Event())
            try:
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    await added.wait()
            except TimeoutError:
                waited = time.monotonic() - started
                if deadline is not None:
                    raise DeadlineExceededError(
                        f"model {entry.name} has no replica (scaled to zero); none started within the "
                        f"request's deadline ({waited:.1f} s); not computed") from None
                raise ModelNotReadyError(
                    f"model {entry.name} has no replica (scaled to zero) and none started within "
                    f"{waited:.0f} s") from None
            replica = self._least_loaded(entry, set())
            if replica is not None:
                self.load.cold_wait(entry.name, time.monotonic() - started)
                return replica

    def routing(self, model: str) -> dict[str, object] | None:
        """How a generative model's requests are spread over its engines: the policy, and per
        replica how many requests each policy sent it. None for a model without engines."""
        engines = [r.id for r in self._replicas.values()
                   if isinstance(r, EngineReplica) and r.served.name == model]
        if not engines:
            return None
        return {"policy": self.tokens.policy,
                "routed": {rid: dict(self.tokens.routed.get(rid, {})) for rid in sorted(engines)}}

    async def generate(self, call: GenerationCall) -> Answer | StreamAnswer:
        """Send a checked generation to one of its model's engines (`token_routing` chooses),
        retrying once on another when the chosen one is found dead before it answers.

        Raises ModelNotReadyError (503) when no engine of the model is alive, ReplicaDiedError
        (503) when the retry failed too.
        """
        entry = call.served
        started = self.load.arrived(entry.name)
        try:
            answer = await self._generate(call)
        except BaseException:
            self.load.left(entry.name)
            raise
        if isinstance(answer, StreamAnswer):  # in flight until the stream is closed
            answer.on_close.append(lambda: self.load.answered(entry.name, started))
        else:
            self.load.answered(entry.name, started)
        return answer

    async def _generate(self, call: GenerationCall) -> Answer | StreamAnswer:
        entry = call.served
        tried: set[str] = set()
        while True:
            engines = [r for r in self._candidates(entry)
                       if isinstance(r, EngineReplica) and r.id not in tried]
            choice = self.tokens.choose(engines, call.prompt_ids)
            if choice is None:
                if tried:
                    raise ReplicaDiedError(f"the engines of {entry.name} v{entry.version} did not answer")
                raise ModelNotReadyError(f"model {entry.name} v{entry.version} has no live engine replica")
            replica = self._replicas[choice.replica_id]
            assert isinstance(replica, EngineReplica)
            if self.metrics is not None:
                self.metrics.llm_routed_total.labels(entry.name, replica.id, choice.policy).inc()
            try:
                return await send(replica, call)
            except ReplicaDiedError as died:
                if tried:
                    raise
                log.warning("retrying a generation of %s after: %s", entry.name, died)
                tried.add(replica.id)

    async def close(self) -> None:
        """Stop every replica."""
        replicas = list(self._replicas.values())
        if self.engine_metrics is not None:
            for replica in replicas:
                self.engine_metrics.forget(replica.id)
        self._replicas.clear()
        self._awaiting.clear()
        self._standby.clear()
        self._replicas_changed()
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        if self.trace is not None:
            self.trace.close()


def not_served(name: str, served: Iterable[ServedModel]) -> ModelNotFoundError:
    """The 404 for `name`, listing the models `served` (those the caller may see)."""
    names = sorted({model.name for model in served})
    have = f"served models: {', '.join(names)}" if names else "no model is served"
    return ModelNotFoundError(f"model {name!r} is not served; {have}")


def _rows(inputs: dict[str, np.ndarray]) -> int:
    """The rows (samples) a request carries: its first input's leading dimension."""
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
