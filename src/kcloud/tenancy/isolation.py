"""Isolation: a tenant sees and calls only its own deployments; anything else does not exist (404).

The gateway's routes all reach models through one object, the `Router`. `TenantScopedRouter`
stands in for it on the gateway and asks, for every model name, whether the current request's
principal may see it (`kcloud.tenancy.context`). So the OIP routes, the OpenAI routes, the
`/v1/models` listing, model metadata and readiness are all covered by one check, and a route added
later is covered without knowing about tenants. The control plane keeps the real router.

A model another tenant owns is answered exactly as a model that does not exist — the same
`ModelNotFoundError`, with a list of served models that names only the caller's own — so a tenant
cannot even learn that a name is taken.

Who owns a served model comes from the deployments table (`deployments.tenant`), read into an
in-memory snapshot, so the check on the hot path is a dict look-up. The snapshot is re-read at
once after a change through this gateway's deployments API, and every few seconds in the
background (for changes made through another gateway sharing the database).

A served model with no deployment row (what `kcloud up` serves on its own) belongs to the
operator: admins and farm-wide read-only keys see it, tenants do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kcloud.farm.names import resolve
from kcloud.farm.reads import served_name_owners
from kcloud.models.errors import ModelNotFoundError
from kcloud.serving.engine_calls import Answer, StreamAnswer
from kcloud.serving.errors import ServingError
from kcloud.serving.generation import GenerationCall
from kcloud.serving.replica import InferOutcome
from kcloud.serving.router import AnyReplica, Router, not_served
from kcloud.serving.served import ServedModel
from kcloud.store.db import Database
from kcloud.tenancy.context import RequestContext, current_request
from kcloud.tenancy.tokens import TokenLimiter

log = logging.getLogger(__name__)


class InferenceForbiddenError(ServingError):
    """A read-only key asked for inference (403; the gateway answers ServingErrors by `status`)."""

    status = 403


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns a served model: a tenant (None: the operator) and the deployment that serves it."""

    tenant: str | None
    deployment: str | None


_OPERATOR = Owner(tenant=None, deployment=None)


class Ownership:
    """Served model name -> owner, as a snapshot replaced whole (readers never see it half-built)."""

    def __init__(self, owners: dict[str, Owner] | None = None) -> None:
        self._owners: dict[str, Owner] = dict(owners or {})

    def owner(self, served_name: str) -> Owner:
        return self._owners.get(served_name, _OPERATOR)

    def knows(self, served_name: str) -> bool:
        """True when a deployment serves under this name."""
        return served_name in self._owners

    def replace(self, owners: dict[str, Owner]) -> None:
        self._owners = dict(owners)

    def snapshot(self) -> dict[str, Owner]:
        return dict(self._owners)


def load_ownership(db: Database) -> dict[str, Owner]:
    """Every deployment's served name -> its owner.

    A deployment is served under its own name (the control plane names replicas' entries after
    the deployment); the model it runs may be shared by several tenants' deployments.
    """
    with db.session() as session:
        owners = served_name_owners(session)
    return {name: Owner(tenant=tenant, deployment=name) for name, tenant in owners.items()}


class TenantScopedRouter:
    """The gateway's view of a `Router`, filtered by the current request's principal.

    Methods the gateway does not use for lookups (add/remove replicas, close, observers) pass
    through to the real router unchanged.
    """

    def __init__(self, inner: Router, ownership: Ownership, tokens: TokenLimiter | None = None,
                 prefix_salt: Callable[[str | None], str] | None = None) -> None:
        self._inner = inner
        self.ownership = ownership
        #: Token quotas of keys and tenants, checked before a generation and charged after it.
        self.tokens = tokens
        #: Tenant (None: the operator) -> its engines' prefix-cache salt (`keys.prefix_cache_salt`).
        self.prefix_salt = prefix_salt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"TenantScopedRouter({self._inner!r})"

    @property
    def inner(self) -> Router:
        return self._inner

    def _visible(self, name: str) -> bool:
        ctx = current_request()
        return ctx is None or ctx.principal.sees(self.ownership.owner(name).tenant)

    def _resolve(self, name: str) -> str:
        """The served name `name` means to this request's caller: a tenant's bare `minilm` is its
        `TENANT:minilm` (`kcloud.farm.names`) when it has one; farm-wide keys name models as served."""
        ctx = current_request()
        if ctx is None or ctx.principal.farm_wide:
            return name
        resolved = resolve(ctx.principal.tenant_name, name)
        return resolved if self.ownership.knows(resolved) else name

    def served_models(self) -> list[ServedModel]:
        return [e for e in self._inner.served_models() if self._visible(e.name)]

    def replicas(self, model: str | None = None) -> list[AnyReplica]:
        return [r for r in self._inner.replicas(model) if self._visible(r.served.name)]

    def _not_served(self, name: str) -> ModelNotFoundError:
        return not_served(name, self.served_models())

    def served(self, name: str, version: int | None = None) -> ServedModel:
        name = self._resolve(name)
        if not self._visible(name):
            raise self._not_served(name)
        try:
            served = self._inner.served(name, version)
        except ModelNotFoundError:
            if not self._inner.replicas(name):
                raise self._not_served(name) from None  # the router's message lists every tenant's models
            raise  # an unknown version of a visible model: that message names only this model
        ctx = current_request()
        if ctx is not None:
            ctx.deployment = self.ownership.owner(name).deployment or name
        return served

    def is_ready(self, name: str, version: int | None = None) -> bool:
        name = self._resolve(name)
        return self._visible(name) and self._inner.is_ready(name, version)

    def _caller_may_run(self, ctx: RequestContext, name: str) -> None:
        """The caller sees `name` and may run inference; its usage is charged to the deployment."""
        if not ctx.principal.sees(self.ownership.owner(name).tenant):
            raise self._not_served(name)
        if not ctx.principal.can_infer:
            raise InferenceForbiddenError(
                f"key {ctx.principal.label} is read-only: it may list and read, not run inference"
            )
        ctx.deployment = self.ownership.owner(name).deployment or name

    async def generate(self, call: GenerationCall) -> Answer | StreamAnswer:
        """`Router.generate` for the caller: visibility, the read-only check, the token quotas
        (refused with 429 before an engine is chosen), its own prefix cache on the engine, and
        its tokens charged when known."""
        ctx = current_request()
        if ctx is not None:
            self._caller_may_run(ctx, call.served.name)
            if self.prefix_salt is not None:
                call.isolate_prefix_cache(self.prefix_salt(ctx.principal.tenant_name))
            tokens = self.tokens
            if tokens is not None:
                tokens.admit(ctx)
                call.on_usage.append(lambda prompt, completion: tokens.charge(ctx, prompt, completion))
            else:
                def count(prompt: int, completion: int) -> None:
                    ctx.prompt_tokens += prompt
                    ctx.completion_tokens += completion
                call.on_usage.append(count)
        return await self._inner.generate(call)

    async def infer(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, np.ndarray],
        *,
        deadline: float | None = None,
    ) -> InferOutcome:
        name = self._resolve(name)
        ctx = current_request()
        if ctx is not None:
            self._caller_may_run(ctx, name)
        try:
            outcome = await self._inner.infer(name, version, inputs, deadline=deadline)
        except ModelNotFoundError:
            if not self._inner.replicas(name):
                raise self._not_served(name) from None  # the router's message lists every tenant's models
            raise
        if ctx is not None:
            rows = outcome.prepared.rows
            ctx.samples += rows
            if outcome.batch_rows > 0:
                share = outcome.compute_s * rows / outcome.batch_rows
                uid = outcome.device_uid
                ctx.device_seconds[uid] = ctx.device_seconds.get(uid, 0.0) + share
        return outcome
