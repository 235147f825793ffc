"""`Router`: sends each request to the least-loaded live replica of its model.

The router is the only thing the gateway talks to. It refuses bad input before anything is
queued (`pipeline.prepare` raises `InputError`), balances on each replica's load (rows queued
plus rows computing), skips replicas whose worker died, and retries a request once on another
replica when its replica dies under it, so a crashed worker costs a retry, not an error.

Which replicas exist is decided by the control plane (`kcloud.farm`): they are added and removed
here, and `on_replica_died` observers hear of a death so the control plane can place a new
replica. While it does, the model stays known (unready, 503), not unknown (404).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import numpy as np

from kcloud.models.errors import ModelNotFoundError
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.serving.errors import ModelNotReadyError, ReplicaDiedError
from kcloud.serving.replica import InferOutcome, Replica

log = logging.getLogger(__name__)


class Router:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self._replicas: dict[str, Replica] = {}
        # Looked up on every request, changed only by add/remove: rebuilt lazily after a change.
        self._served: list[ModelEntry] | None = None
        self._versions: dict[str, list[ModelEntry]] = {}  # name -> served entries, by version
        self._candidates_of: dict[tuple[str, int], list[Replica]] = {}
        #: Models whose last replica died and was removed, while a replacement starts.
        self._awaiting: dict[tuple[str, int], ModelEntry] = {}
        self._turn = itertools.count()
        #: Called once per replica whose worker died (not for replicas stopped on purpose).
        self.on_replica_died: list[Callable[[Replica], None]] = []

    def __repr__(self) -> str:
        return f"Router({len(self._replicas)} replicas)"

    # -- replicas ---------------------------------------------------------------------------
    def add_replica(self, replica: Replica) -> None:
        """Route to `replica` (already started) from now on."""
        if replica.id in self._replicas:
            raise ValueError(f"replica {replica.id} is already routed")
        replica.on_death.append(self._replica_died)
        self._replicas[replica.id] = replica
        self._awaiting.pop((replica.entry.name, replica.entry.version), None)
        self._replicas_changed()

    async def remove_replica(self, replica_id: str, *, replaced: bool = False) -> Replica | None:
        """Stop routing to a replica and stop it (it finishes what it has queued first).

        `replaced`: a new replica will take its place (it died), so its model stays served,
        unready, until then rather than vanishing.
        """
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            key = (replica.entry.name, replica.entry.version)
            if replaced:
                self._awaiting[key] = replica.entry
            elif not any((r.entry.name, r.entry.version) == key for r in self._replicas.values()):
                self._awaiting.pop(key, None)
            self._replicas_changed()
            await replica.stop()
        return replica

    def replicas(self, model: str | None = None) -> list[Replica]:
        return [r for r in self._replicas.values() if model is None or r.entry.name == model]

    def _replicas_changed(self) -> None:
        self._served = None
        self._versions = {}
        self._candidates_of = {}

    def _replica_died(self, replica: Replica) -> None:
        log.error("replica %s of %s on %s died", replica.id, replica.entry.name, replica.device.uid)
        for observer in list(self.on_replica_died):
            try:
                observer(replica)
            except Exception:  # an observer's bug must not break serving
                log.exception("replica-death observer failed")

    # -- models -----------------------------------------------------------------------------
    def served_models(self) -> list[ModelEntry]:
        """One entry per (name, version) that has a replica (dead or alive) or awaits one."""
        if self._served is None:
            entries: dict[tuple[str, int], ModelEntry] = dict(self._awaiting)
            for replica in self._replicas.values():
                entries.setdefault((replica.entry.name, replica.entry.version), replica.entry)
            self._served = [entries[key] for key in sorted(entries)]
            versions: dict[str, list[ModelEntry]] = {}
            for served in self._served:  # sorted by (name, version), so each list is by version
                versions.setdefault(served.name, []).append(served)
            self._versions = versions
        return list(self._served)

    def entry(self, name: str, version: int | None = None) -> ModelEntry:
        """The served entry of `name` (its latest served version when `version` is None)."""
        if self._served is None:
            self.served_models()
        versions = self._versions.get(name, [])
        if not versions:
            served = sorted({e.name for e in self.served_models()})
            have = f"served models: {', '.join(served)}" if served else "no model is served"
            raise ModelNotFoundError(f"model {name!r} is not served; {have}")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise ModelNotFoundError(
            f"model {name!r} has no served version {version}; "
            f"served versions: {', '.join(str(e.version) for e in versions)}")

    def _candidates(self, entry: ModelEntry) -> list[Replica]:
        key = (entry.name, entry.version)
        candidates = self._candidates_of.get(key)
        if candidates is None:
            candidates = self._candidates_of[key] = [
                r for r in self._replicas.values()
                if r.entry.name == entry.name and r.entry.version == entry.version]
        return candidates

    def is_ready(self, name: str, version: int | None = None) -> bool:
        """True when the model (version) is served and has a live replica."""
        try:
            entry = self.entry(name, version)
        except ModelNotFoundError:
            return False
        return any(r.alive for r in self._candidates(entry))

    def _least_loaded(self, entry: ModelEntry, exclude: set[str]) -> Replica | None:
        live = [r for r in self._candidates(entry) if r.alive and r.id not in exclude]
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
        entry = self.entry(name, version)
        first = self._least_loaded(entry, set())
        if first is None:
            raise ModelNotReadyError(f"model {entry.name} v{entry.version} has no live replica")
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

    async def close(self) -> None:
        """Stop every replica."""
        replicas = list(self._replicas.values())
        self._replicas.clear()
        self._awaiting.clear()
        self._replicas_changed()
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
