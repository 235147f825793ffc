"""kcloud.tenancy: tenants, API keys, roles, isolation, quotas, rate limits, usage and audit.

`attach(app, db, ...)` puts all of it on a gateway app; `enforce_deployment_quota` is what the
control plane calls when a deployment is created or scaled.
"""

from kcloud.tenancy.errors import QuotaExceededError, TenancyError
from kcloud.tenancy.roles import Principal, Role
from kcloud.tenancy.service import INSECURE_BANNER, Tenancy, attach

__all__ = ["INSECURE_BANNER", "Principal", "QuotaExceededError", "Role", "Tenancy", "TenancyError", "attach"]
