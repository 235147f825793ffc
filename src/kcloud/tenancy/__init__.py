"""kcloud.tenancy: tenants, API keys, roles, isolation, quotas, rate limits, usage and audit.

`attach(app, db, ...)` puts all of it on a gateway app; `enforce_deployment_quota` is what the
control plane calls when a deployment is created or scaled; `Tenancy.tokens` (a `TokenLimiter`)
is what the LLM routes call before and after a generation. Names are imported lazily so that
`kcloud`'s CLI (which imports `kcloud.tenancy.commands`) does not load the server stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "attach": "kcloud.tenancy.service",
    "Tenancy": "kcloud.tenancy.service",
    "INSECURE_BANNER": "kcloud.tenancy.service",
    "console_announcer": "kcloud.tenancy.service",
    "INSECURE_HEADER": "kcloud.tenancy.middleware",
    "enforce_deployment_quota": "kcloud.tenancy.holdings",
    "current_principal": "kcloud.tenancy.context",
    "Principal": "kcloud.tenancy.roles",
    "Role": "kcloud.tenancy.roles",
    "QuotaExceededError": "kcloud.tenancy.errors",
    "TokenQuotaError": "kcloud.tenancy.errors",
    "TokenLimiter": "kcloud.tenancy.tokens",
    "TokenLimits": "kcloud.tenancy.tokens",
    "current_request": "kcloud.tenancy.context",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kcloud.tenancy' has no attribute {name!r}")
    return getattr(import_module(module), name)
