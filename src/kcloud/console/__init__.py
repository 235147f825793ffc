"""The web console at `/ui`: the farm, its devices, deployments, benchmarks, tenants and usage, live.

A page is static HTML and one script (`static/`), served without a key; everything it shows comes
from the API with the key the user typed into its login form, kept in the tab's session storage and
sent as `Authorization: Bearer`. So the API's roles and tenant scopes are the console's, and a
request from another site carries no credential: no cookie authenticates anything (no CSRF).
`kcloud.console.live` samples the figures the pages poll, once for all of them.
"""

from kcloud.console.attach import Console, attach

__all__ = ["Console", "attach"]
