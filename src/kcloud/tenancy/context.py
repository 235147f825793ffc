"""Who the current request acts as, carried in a context variable from the middleware to the code
that needs it (the tenant-scoped router, the admin API, the control plane's routes).

A context variable rather than an argument because the gateway's routes, written before tenancy,
call `router.served(...)`/`router.infer(...)` with no notion of a caller; each ASGI request runs in
its own task with its own copy of the context, so one request can never see another's principal.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kcloud.tenancy.roles import Principal

if TYPE_CHECKING:
    from kcloud.tenancy.tokens import TokenLimits


@dataclass
class RequestContext:
    """One authenticated request: its principal, and what it used (filled in as it runs)."""

    principal: Principal
    #: The deployment (served model name) the request resolved to, if any.
    deployment: str | None = None
    samples: int = 0
    #: device uid -> device-seconds charged to this request.
    device_seconds: dict[str, float] = field(default_factory=dict)
    #: Tokens of an LLM generation, added by `TokenLimiter.charge` when it ends (a streamed one
    #: too); the middleware meters the request after its whole response was sent, so they count.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The token limits of the request's key and tenant, put here by the middleware from the key's
    #: cached row (`KeyRecord.token_limits`) for `TokenLimiter.admit`; None: not limited.
    token_limits: TokenLimits | None = None
    #: Set by admin handlers to name their action in the audit log (default: method and path).
    audit_action: str | None = None
    audit_target: str | None = None
    audit_detail: dict[str, Any] | None = None

    def audit(self, action: str, target: str | None = None, **detail: Any) -> None:
        self.audit_action = action
        self.audit_target = target
        self.audit_detail = detail or None


_current: ContextVar[RequestContext | None] = ContextVar("kcloud_tenancy_request", default=None)


def current_request() -> RequestContext | None:
    """The current request's context; None outside an authenticated request (internal work,
    health probes)."""
    return _current.get()


def current_principal() -> Principal | None:
    ctx = _current.get()
    return ctx.principal if ctx is not None else None


def audit_current(action: str, target: str | None = None, **detail: Any) -> None:
    """Name the current request's action in the audit log (nothing outside a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.audit(action, target, **detail)


def bind(ctx: RequestContext | None):
    return _current.set(ctx)


def unbind(token) -> None:
    _current.reset(token)
