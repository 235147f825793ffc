"""`kcloud tenants ...`, `kcloud keys ...`, `kcloud usage` and `kcloud audit`: clients of the admin API.

They talk to a running server over HTTP (`--url`, or `$KCLOUD_URL`) with an API key (`--api-key`,
or `$KCLOUD_API_KEY`), so they work the same against the embedded server and a remote farm, and
every change goes through the same checks and the same audit log as any other client's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from kcloud.admin_client import DEFAULT_URL, KEY_ENV, URL_ENV, call_admin_api
from kcloud.cli_errors import err, fail

tenants_app = typer.Typer(help="Tenants and their quotas (admin API).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, change limits, revoke.",
                       no_args_is_help=True)

_URL = typer.Option(DEFAULT_URL, "--url", envvar=URL_ENV, help="The kcloud server's base URL.")
_KEY = typer.Option(None, "--api-key", envvar=KEY_ENV, show_default=False,
                    help=f"API key to act with (default: ${KEY_ENV}).")
_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")

#: Tables piped to a file or another program are not cut to 80 columns (values would be elided).
out = Console() if sys.stdout.isatty() else Console(width=max(Console().width, 160))


def _call(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call; these routes always need a key, so its absence is said up front."""
    if not key:
        raise fail(f"no API key: pass --api-key or set {KEY_ENV} "
                   f"(the admin key is printed at the server's first start)")
    return call_admin_api(url, key, method, path, **kwargs)


def _parse_vendor_caps(values: list[str]) -> dict[str, int]:
    caps: dict[str, int] = {}
    for value in values:
        vendor, sep, count = value.partition("=")
        if not sep or not vendor or not count.isdigit():
            raise fail(f"--max-devices-vendor expects VENDOR=N (e.g. rebellions=4), got {value!r}")
        caps[vendor] = int(count)
    return caps


def _quota_options(
    max_replicas: int | None, max_devices: int | None, vendor_caps: list[str], max_pf: float | None,
    pf_figure: str | None, rate: float | None, burst: int | None, max_concurrency: int | None,
    tokens_per_minute: int | None, tokens_per_day: int | None,
) -> dict[str, Any]:
    given: dict[str, Any] = {
        "max_replicas": max_replicas, "max_devices": max_devices, "max_pf": max_pf, "pf_figure": pf_figure,
        "requests_per_second": rate, "burst": burst, "max_concurrency": max_concurrency,
        "tokens_per_minute": tokens_per_minute, "tokens_per_day": tokens_per_day,
    }
    quota = {k: v for k, v in given.items() if v is not None}
    if vendor_caps:
        quota["max_devices_per_vendor"] = _parse_vendor_caps(vendor_caps)
    return quota


def _show_tenant(tenant: dict[str, Any]) -> None:
    quota = tenant["quota"]
    table = Table(title=f"tenant {tenant['name']}", show_header=False)
    table.add_row("created", f"{tenant['created_at']} by {tenant['created_by']}")
    if tenant.get("description"):
        table.add_row("description", tenant["description"])
    for field, value in quota.items():
        if field == "max_devices_per_vendor":
            shown = ", ".join(f"{v}={n}" for v, n in value.items()) or "no cap"
        elif field == "pf_figure":
            shown = value
        else:
            shown = "no cap" if value is None else str(value)
        table.add_row(field, shown)
    for r in tenant.get("reservations", []):
        named = [*r["devices"], *(f"node {node}" for node in r["nodes"])]
        table.add_row(f"reservation {r['id']}",
                      f"{', '.join(named)}: {len(r['covers'])} device(s), its deployments go only there")
    out.print(table)


# -- tenants -------------------------------------------------------------------------------------
_MAX_REPLICAS = typer.Option(None, "--max-replicas", min=0, help="Most replicas over all its deployments.")
_MAX_DEVICES = typer.Option(None, "--max-devices", min=0, help="Most distinct devices.")
_VENDOR_CAPS = typer.Option([], "--max-devices-vendor",
                            help="VENDOR=N: most devices of one vendor; repeatable.")
_MAX_PF = typer.Option(None, "--max-pf", min=0, help="Most compute, in PF of the catalog figure --pf-figure.")
_PF_FIGURE = typer.Option(None, "--pf-figure", help="fp16_bf16_pflops (default) or int8_pops.")
_RATE = typer.Option(None, "--rate", min=0.001, help="Requests per second per key (token bucket).")
_BURST = typer.Option(None, "--burst", min=1, help="Token-bucket size per key (default: the rate).")
_CONCURRENCY = typer.Option(None, "--max-concurrency", min=1, help="Requests in flight for the tenant.")
_TENANT_TPM = typer.Option(None, "--tokens-per-minute", min=1,
                           help="LLM tokens (prompt + completion) per minute, all its keys together.")
_TENANT_TPD = typer.Option(None, "--tokens-per-day", min=1,
                           help="LLM tokens (prompt + completion) per UTC day, all its keys together.")
_KEY_TPM = typer.Option(None, "--tokens-per-minute", min=1,
                        help="LLM tokens (prompt + completion) per minute for this key (and the tenant's).")
_KEY_TPD = typer.Option(None, "--tokens-per-day", min=1,
                        help="LLM tokens (prompt + completion) per UTC day for this key (and the tenant's).")


@tenants_app.command("create")
def tenants_create(
    name: str = typer.Argument(..., help="Lowercase letters, digits and '-'."),
    description: str | None = typer.Option(None, "--description", "-d"),
    max_replicas: int | None = _MAX_REPLICAS,
    max_devices: int | None = _MAX_DEVICES,
    vendor_caps: list[str] = _VENDOR_CAPS,
    max_pf: float | None = _MAX_PF,
    pf_figure: str | None = _PF_FIGURE,
    rate: float | None = _RATE,
    burst: int | None = _BURST,
    max_concurrency: int | None = _CONCURRENCY,
    tokens_per_minute: int | None = _TENANT_TPM,
    tokens_per_day: int | None = _TENANT_TPD,
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Create a tenant, optionally with its quota."""
    quota = _quota_options(max_replicas, max_devices, vendor_caps, max_pf, pf_figure, rate, burst,
                           max_concurrency, tokens_per_minute, tokens_per_day)
    body: dict[str, Any] = {"name": name, "description": description}
    if quota:
        body["quota"] = quota
    tenant = _call(url, api_key, "POST", "/api/v1/tenants", json=body)
    if as_json:
        out.print_json(json.dumps(tenant))
        return
    out.print(f"created tenant [bold]{escape(tenant['name'])}[/bold]; make its key with: "
              f"kcloud keys create --tenant {tenant['name']}")
    _show_tenant(tenant)


@tenants_app.command("list")
def tenants_list(url: str = _URL, api_key: str | None = _KEY, as_json: bool = _JSON) -> None:
    """List tenants (a tenant's own key sees only its tenant)."""
    tenants = _call(url, api_key, "GET", "/api/v1/tenants")
    if as_json:
        out.print_json(json.dumps(tenants))
        return
    table = Table(Column("name", no_wrap=True), "replicas", "devices", "PF", "req/s", "burst", "concurrency",
                  "tok/min", "tok/day", "created")
    for t in tenants:
        q = t["quota"]
        table.add_row(t["name"], *(("-" if q.get(f) is None else str(q[f])) for f in (
            "max_replicas", "max_devices", "max_pf", "requests_per_second", "burst", "max_concurrency",
            "tokens_per_minute", "tokens_per_day")),
            t["created_at"][:19])
    out.print(table)


@tenants_app.command("show")
def tenants_show(name: str, url: str = _URL, api_key: str | None = _KEY, as_json: bool = _JSON) -> None:
    """Show a tenant and its quota."""
    tenant = _call(url, api_key, "GET", f"/api/v1/tenants/{name}")
    if as_json:
        out.print_json(json.dumps(tenant))
    else:
        _show_tenant(tenant)


@tenants_app.command("quota")
def tenants_quota(
    name: str,
    max_replicas: int | None = _MAX_REPLICAS,
    max_devices: int | None = _MAX_DEVICES,
    vendor_caps: list[str] = _VENDOR_CAPS,
    max_pf: float | None = _MAX_PF,
    pf_figure: str | None = _PF_FIGURE,
    rate: float | None = _RATE,
    burst: int | None = _BURST,
    max_concurrency: int | None = _CONCURRENCY,
    tokens_per_minute: int | None = _TENANT_TPM,
    tokens_per_day: int | None = _TENANT_TPD,
    unset: list[str] = typer.Option([], "--unset",
                                    help="Remove a cap (field name, e.g. max_devices); repeatable."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Change a tenant's quota: the caps given are set, `--unset` ones removed, the rest kept."""
    current = _call(url, api_key, "GET", f"/api/v1/tenants/{name}/quota")
    for field in unset:
        if field not in current:
            raise fail(f"--unset {field!r}: no such quota field (fields: {', '.join(current)})")
        current[field] = {} if field == "max_devices_per_vendor" else None
    current = {k: v for k, v in current.items() if v is not None}
    current.update(_quota_options(max_replicas, max_devices, vendor_caps, max_pf, pf_figure, rate, burst,
                                  max_concurrency, tokens_per_minute, tokens_per_day))
    tenant = _call(url, api_key, "PUT", f"/api/v1/tenants/{name}/quota", json=current)
    _show_tenant(tenant)


@tenants_app.command("delete")
def tenants_delete(
    name: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Delete a tenant and its keys (refused while it owns deployments)."""
    if not yes and not typer.confirm(f"delete tenant {name!r} and all its keys?"):
        raise typer.Exit(1)
    _call(url, api_key, "DELETE", f"/api/v1/tenants/{name}")
    out.print(f"deleted tenant {escape(name)}")


# -- keys ----------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="The tenant (required for member keys)."),
    role: str = typer.Option("member", "--role", help="member, readonly or admin."),
    name: str | None = typer.Option(None, "--name", "-n", help="A label: who or what uses the key."),
    expires_in: float | None = typer.Option(None, "--expires-in", min=0.0001, help="Days until it expires."),
    rate: float | None = typer.Option(None, "--rate", min=0.001,
                                      help="Requests/s for this key (default: the tenant's)."),
    burst: int | None = typer.Option(None, "--burst", min=1, help="Burst for this key (default: tenant's)."),
    tokens_per_minute: int | None = _KEY_TPM,
    tokens_per_day: int | None = _KEY_TPD,
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Create an API key. It is printed once, here; only its hash is kept."""
    if role not in ("member", "readonly", "admin"):
        raise fail(f"--role must be member, readonly or admin, got {role!r}")
    body = {"tenant": tenant, "role": role, "name": name, "expires_in_days": expires_in,
            "requests_per_second": rate, "burst": burst, "tokens_per_minute": tokens_per_minute,
            "tokens_per_day": tokens_per_day}
    given = {k: v for k, v in body.items() if v is not None}
    created = _call(url, api_key, "POST", "/api/v1/keys", json=given)
    if as_json:
        out.print_json(json.dumps(created))
        return
    info = created["info"]
    scope = f"tenant {info['tenant']}" if info["tenant"] else "the whole farm"
    expiry = f", expires {info['expires_at']}" if info["expires_at"] else ""
    err.print(f"[bold]{info['role']}[/bold] key for {escape(scope)}{expiry}. "
              "[yellow]It is shown only now; store it safely.[/yellow]")
    out.print(created["key"], soft_wrap=True, highlight=False)


@keys_app.command("list")
def keys_list(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """List keys (prefixes, roles, states); never their secrets."""
    params = {"tenant": tenant} if tenant else None
    keys = _call(url, api_key, "GET", "/api/v1/keys", params=params)
    if as_json:
        out.print_json(json.dumps(keys))
        return
    table = Table(Column("prefix", no_wrap=True, min_width=12), "role", Column("tenant", no_wrap=True),
                  "name", "state", "expires", "limits", "created by")
    for k in keys:
        state = "revoked" if k["revoked_at"] else "active"
        if state == "active" and k["expires_at"]:
            from datetime import UTC, datetime

            if datetime.fromisoformat(k["expires_at"]) <= datetime.now(UTC):
                state = "expired"
        table.add_row(k["prefix"], k["role"], k["tenant"] or "-", k["name"] or "-", state,
                      (k["expires_at"] or "never")[:19], _key_limits(k), k["created_by"])
    out.print(table)


def _key_limits(key: dict[str, Any]) -> str:
    """A key's own limits in a few words ("-": none; its tenant's quota applies either way)."""
    shown = [f"{key[field]:,} {unit}" for field, unit in (
        ("requests_per_second", "req/s"), ("burst", "burst"), ("tokens_per_minute", "tok/min"),
        ("tokens_per_day", "tok/day")) if key.get(field) is not None]
    return ", ".join(shown) or "-"


@keys_app.command("limits")
def keys_limits(
    prefix: str = typer.Argument(..., help="The key's prefix (see `kcloud keys list`)."),
    rate: float | None = typer.Option(None, "--rate", min=0.001, help="Requests/s for this key."),
    burst: int | None = typer.Option(None, "--burst", min=1, help="Burst for this key."),
    tokens_per_minute: int | None = _KEY_TPM,
    tokens_per_day: int | None = _KEY_TPD,
    unset: list[str] = typer.Option([], "--unset", help=(
        "Remove one of the key's own limits (requests_per_second, burst, tokens_per_minute, "
        "tokens_per_day); repeatable.")),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Change a key's own limits: those given are set, `--unset` ones removed, the rest kept.
    They apply from the key's next request."""
    changes: dict[str, Any] = dict.fromkeys(unset)
    given = {"requests_per_second": rate, "burst": burst, "tokens_per_minute": tokens_per_minute,
             "tokens_per_day": tokens_per_day}
    changes.update({k: v for k, v in given.items() if v is not None})
    if not changes:
        raise fail("nothing to change: give --rate, --burst, --tokens-per-minute, --tokens-per-day "
                   "or --unset")
    key = _call(url, api_key, "PATCH", f"/api/v1/keys/{prefix}", json=changes)
    if as_json:
        out.print_json(json.dumps(key))
        return
    out.print(f"key {key['prefix']}: limits {_key_limits(key)}")


@keys_app.command("revoke")
def keys_revoke(
    prefix: str = typer.Argument(..., help="The key's prefix (see `kcloud keys list`) or the whole key."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Revoke a key for good; requests with it get 401 from now on."""
    if prefix.startswith("kc_"):
        parts = prefix.split("_")
        if len(parts) < 3:
            raise fail("that is not a kcloud key; give its prefix (see `kcloud keys list`)")
        prefix = parts[1]
    revoked = _call(url, api_key, "DELETE", f"/api/v1/keys/{prefix}")
    out.print(f"revoked key {revoked['prefix']} ({revoked['role']}, "
              f"{'tenant ' + revoked['tenant'] if revoked['tenant'] else 'farm-wide'})")


@keys_app.command("create-admin")
def keys_create_admin(
    db: str | None = typer.Option(None, "--db", envvar="KCLOUD_DB_URL", show_default=False,
                                  help="Database URL (default: the embedded SQLite file in kcloud home)."),
    name: str | None = typer.Option("made with kcloud keys create-admin", "--name", "-n"),
) -> None:
    """Break glass: make an admin key directly in the database, on the server's machine.

    For when no admin key is left. It needs what the server has (the database and the server
    secret in kcloud home or $KCLOUD_KEY_SECRET), not a running server; the audit log records it.
    """
    from kcloud.home import kcloud_home
    from kcloud.store.db import DatabaseError, open_database
    from kcloud.tenancy import audit as audit_log
    from kcloud.tenancy import store
    from kcloud.tenancy.keys import ServerSecretError, load_server_secret
    from kcloud.tenancy.roles import SYSTEM, Role

    try:
        secret = load_server_secret(kcloud_home())
        database = open_database(db)
    except (DatabaseError, ServerSecretError) as exc:
        raise fail(str(exc)) from None
    try:
        created = store.create_key(database, secret, role=Role.ADMIN, tenant=None, actor="local-cli",
                                   name=name)
        audit_log.record(database, SYSTEM, action="key.create-admin", target=created.info.prefix,
                         detail={"via": "kcloud keys create-admin"})
    finally:
        database.close()
    err.print("[bold]admin[/bold] key for the whole farm. "
              "[yellow]It is shown only now; store it safely.[/yellow]")
    out.print(created.key, soft_wrap=True, highlight=False)


# -- usage and audit -----------------------------------------------------------------------------
def _number(value: float | None, digits: int = 3) -> str:
    return "unknown" if value is None else f"{value:,.{digits}f}"


def usage(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    key: str | None = typer.Option(None, "--key", help="A key prefix."),
    deployment: str | None = typer.Option(None, "--deployment", "-d"),
    since: str | None = typer.Option(None, "--since", help="First day, YYYY-MM-DD (UTC)."),
    until: str | None = typer.Option(None, "--until", help="Last day, YYYY-MM-DD (UTC)."),
    by: str = typer.Option("day,tenant,key,deployment", "--by",
                           help="Group by these (comma-separated: day, tenant, key, deployment)."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Usage per tenant, key, deployment and day: requests, samples, LLM tokens, errors, device-seconds,
    energy."""
    from datetime import date

    for label, value in (("--since", since), ("--until", until)):
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise fail(f"{label} {value!r} is not a date (YYYY-MM-DD)") from None
    params = {k: v for k, v in {"tenant": tenant, "key": key, "deployment": deployment, "since": since,
                                "until": until, "group_by": by}.items() if v is not None}
    records = _call(url, api_key, "GET", "/api/v1/usage", params=params)
    if as_json:
        out.print_json(json.dumps(records))
        return
    dims = [d.strip() for d in by.split(",") if d.strip()]
    numbers = ("requests", "samples", "prompt tok", "completion tok", "errors", "device-s", "energy J",
               "modelled J")
    table = Table(*(Column(d, no_wrap=True) for d in dims), *(Column(n, justify="right") for n in numbers),
                  box=box.SIMPLE_HEAD,
                  title="usage (energy J: measured; modelled J: emulated devices' modelled energy)")
    for r in records:
        table.add_row(*(str(r[d]) if r[d] is not None else "-" for d in dims),
                      str(r["requests"]), str(r["samples"]), str(r["prompt_tokens"]),
                      str(r["completion_tokens"]), str(r["errors"]), _number(r["device_seconds"]),
                      _number(r["energy_joules"]), _number(r["energy_joules_modelled"]))
    out.print(table)
    if not records:
        out.print("no usage recorded for this selection")


def audit(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    actor: str | None = typer.Option(None, "--actor", help="e.g. key:abcd1234efgh"),
    action: str | None = typer.Option(None, "--action", help="e.g. key.revoke"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """The audit log of admin actions, newest first."""
    params = {k: v for k, v in {"tenant": tenant, "actor": actor, "action": action,
                                "limit": limit}.items() if v is not None}
    entries = _call(url, api_key, "GET", "/api/v1/audit", params=params)
    if as_json:
        out.print_json(json.dumps(entries))
        return
    table = Table("when", Column("actor", no_wrap=True), "role", Column("action", no_wrap=True),
                  Column("target", no_wrap=True), "status", title="audit log")
    for e in entries:
        table.add_row(e["at"][:19], e["actor"], e["actor_role"] or "-", e["action"], e["target"] or "-",
                      "-" if e["status"] is None else str(e["status"]))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add `tenants`, `keys`, `usage` and `audit` to the `kcloud` app."""
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(keys_app, name="keys")
    app.command("usage")(usage)
    app.command("audit")(audit)
