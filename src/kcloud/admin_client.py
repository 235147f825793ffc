"""The CLI's side of a running server: where to find it, one admin API call, one way to fail.

`kcloud deploy`, `kcloud tenants`, `kcloud keys` and `kcloud usage` all talk to a running server
the same way, so a refused key, a server that is down or a 4xx reads the same in every command:
one red line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from typing import Any

from kcloud.cli_errors import fail

#: Where the CLI finds a server unless told otherwise: `kcloud up`'s default address.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Environment variables every client command reads for `--url` and `--api-key`.
URL_ENV = "KCLOUD_URL"
KEY_ENV = "KCLOUD_API_KEY"


def call_admin_api(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call (`path` from the server root); any failure is one red line and exit 1."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=url.rstrip("/"), timeout=60, headers=headers) as client:
            response = client.request(method, path, **kwargs)
    except httpx.InvalidURL as exc:
        raise fail(f"--url {url!r} is not a valid URL: {exc}") from None
    except httpx.ConnectError:
        raise fail(f"cannot reach the kcloud server at {url} (is `kcloud up` running?)") from None
    except httpx.TimeoutException:
        raise fail(f"the server at {url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise fail(f"request to {url} failed: {exc}") from None
    if response.status_code >= 400:
        raise fail(error_of(response))
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def error_of(response: Any) -> str:
    """`STATUS: message` of a kcloud error answer (`{"error": ...}`), or of whatever else came."""
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return f"{response.status_code}: {error or response.text.strip() or response.reason_phrase}"
