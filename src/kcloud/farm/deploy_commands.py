"""`kcloud deploy ...` and `kcloud placement explain`: clients of the admin API (`/api/v1`).

Like every admin command they talk to a running server (`--url` or `$KCLOUD_URL`; an API key
from `--api-key` or `$KCLOUD_API_KEY` when tenancy asks for one), so they behave the same on
the embedded server and on a remote farm, and every change goes through the same checks.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kcloud.admin_client import DEFAULT_URL, KEY_ENV, URL_ENV, call_admin_api
from kcloud.cli_errors import err, fail
from kcloud.devices.commands import devices_app

deploy_app = typer.Typer(
    help="Deployments: a model, its replicas, constraints and SLO.", no_args_is_help=True
)
placement_app = typer.Typer(help="Why replicas are where they are.", no_args_is_help=True)

_URL = typer.Option(DEFAULT_URL, "--url", envvar=URL_ENV, help="The kcloud server's base URL.")
_KEY = typer.Option(
    None,
    "--api-key",
    envvar=KEY_ENV,
    show_default=False,
    help=f"API key, when the server asks for one (default: ${KEY_ENV}).",
)
_JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")

out = Console()
STATUS_STYLE = {"ready": "green", "progressing": "cyan", "degraded": "yellow", "pending": "red"}


def call(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the control plane's admin API under `/api/v1`."""
    return call_admin_api(url, key, method, "/api/v1" + path, **kwargs)


def _constraints(
    vendor: str | None, chip: str | None, precision: str | None, node: str | None
) -> dict[str, Any]:
    return {
        k: v for k, v in {"vendor": vendor, "chip": chip, "precision": precision, "node": node}.items() if v
    }


#: `--autoscale` keys -> the API's field names (`kcloud.farm.spec.Autoscale`).
AUTOSCALE_KEYS = {
    "min": "min_replicas", "max": "max_replicas", "metric": "metric", "target": "target",
    "stable": "stable_window_s", "panic": "panic_window_s", "panic-threshold": "panic_threshold",
    "up-delay": "upscale_delay_s", "down-delay": "downscale_delay_s",
}
_AUTOSCALE_HELP = (
    "Scale on load: comma-separated KEY=VALUE of min, max (replicas), metric (ongoing, rps, p99, "
    "tokens), target (per replica; p99: ms), stable, panic (windows, s), panic-threshold, up-delay, "
    "down-delay (s). E.g. min=0,max=4,target=8. See docs/autoscaling.md."
)


def parse_autoscale(text: str) -> dict[str, Any]:
    """`min=0,max=4,metric=ongoing,target=8` -> the API's autoscale object; exit 2 on a bad one."""
    policy: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise fail(f"--autoscale: {part!r} is not KEY=VALUE", 2)
        if key not in AUTOSCALE_KEYS:
            raise fail(f"--autoscale: unknown key {key!r}; known: {', '.join(AUTOSCALE_KEYS)}", 2)
        if key == "metric":
            policy["metric"] = value
            continue
        try:
            number = float(value)
        except ValueError:
            raise fail(f"--autoscale: {key}={value!r} is not a number", 2) from None
        policy[AUTOSCALE_KEYS[key]] = int(number) if key in ("min", "max") and number.is_integer() else number
    return policy


def _status(view: dict[str, Any]) -> str:
    style = STATUS_STYLE.get(view["status"], "white")
    return f"[{style}]{view['status']}[/{style}]"


def _print_deployment(view: dict[str, Any]) -> None:
    constraints = ", ".join(f"{k}={v}" for k, v in view["constraints"].items() if v) or "none"
    slo = ", ".join(f"{k}={v}" for k, v in view["slo"].items() if v is not None) or "none"
    out.print(
        f"[bold]{escape(view['name'])}[/bold]  {escape(view['model'])} v{view['version']}  {_status(view)}  "
        f"{view['running']}/{view['replicas']} running  policy {view['policy']}"
    )
    if view.get("reason"):
        out.print(f"  {escape(view['reason'])}", soft_wrap=True)
    out.print(
        f"  constraints: {escape(constraints)}; SLO: {escape(slo)}; tenant: {escape(str(view['tenant']))}"
    )
    if view.get("autoscale"):
        _print_autoscale(view["autoscale"], view.get("autoscaler"))
    if view.get("pipeline"):
        _print_pipeline(view["pipeline"])
    if view["replica_list"]:
        table = Table("replica", "device", "node", "state", "pid", "emulated")
        for r in view["replica_list"]:
            table.add_row(
                r["id"],
                _devices(r),
                r["node"],
                r["state"],
                str(r["pid"] or "-"),
                "[yellow]emulated[/yellow]" if r["emulated"] else "no",
            )
        out.print(table)


def _devices(replica: dict[str, Any]) -> str:
    """A replica's device, or its stages' devices in order for a pipeline replica."""
    return " → ".join(replica["stage_devices"]) if replica.get("stage_devices") else replica["device"]


def _print_pipeline(pipeline: dict[str, Any]) -> None:
    asked = f"{pipeline['asked']} asked" if pipeline.get("asked") else "as many as the model needs to fit"
    out.print(f"  pipeline: {len(pipeline['stages'])} stages ({asked}), balance {pipeline['balance']:.2f} "
              f"(costliest stage / mean), costs {escape(pipeline['cost_basis'])}", soft_wrap=True)
    for stage in pipeline["stages"]:
        memory = stage["memory_bytes"]
        held = f"{memory / 2**20:.1f} MiB (modelled)" if memory is not None else "memory unknown"
        out.print(f"    stage {stage['index']}: {stage['cost_share']:.1%} of the work, {held}")


def _print_autoscale(policy: dict[str, Any], state: dict[str, Any] | None) -> None:
    out.print(
        f"  autoscale: {policy['min_replicas']}..{policy['max_replicas']} replicas, {policy['metric']} "
        f"target {policy['target']:g} per replica; windows {policy['stable_window_s']:g} s / "
        f"{policy['panic_window_s']:g} s (panic at {policy['panic_threshold']:g}x); delays up "
        f"{policy['upscale_delay_s']:g} s, down {policy['downscale_delay_s']:g} s"
    )
    if state is None:
        return
    value = "no data" if state["value"] is None else f"{state['value']:.3g}"
    panic = " [red]panic[/red]" if state["panic"] else ""
    cold = state["last_cold_start_s"]
    out.print(
        f"  now: {state['metric']} {value} (target {state['target']:g}), wants {state['desired']}{panic}; "
        f"shed {state['shed_total']}" + (f"; last cold start {cold:.2f} s" if cold is not None else "")
    )
    if state["last_decision"]:
        when = (state["last_decision_at"] or "")[:19]
        out.print(f"  last change ({when}): {escape(state['last_decision'])}", soft_wrap=True)


def _wait(url: str, key: str | None, name: str, timeout_s: float) -> dict[str, Any]:
    """Until every replica runs, the deployment is pending, or `timeout_s`; with a progress bar."""
    view = call(url, key, "GET", f"/deployments/{name}")
    deadline = time.monotonic() + timeout_s
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} running"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"Starting {name}", total=max(1, view["replicas"]))
        while time.monotonic() < deadline:
            view = call(url, key, "GET", f"/deployments/{name}")
            progress.update(task, completed=view["running"], total=max(1, view["replicas"]))
            if view["status"] in ("ready", "pending"):
                break
            time.sleep(0.25)
    return view


def _finish(view: dict[str, Any], url: str, key: str | None, *, wait: bool, timeout: float,
            as_json: bool) -> None:
    """After a change: wait for its replicas (unless it is pending: nothing fits), then show it."""
    if wait and view["status"] != "pending":
        view = _wait(url, key, view["name"], timeout)
    _done(view, as_json)


def _done(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(view))
        return
    _print_deployment(view)
    if view["status"] == "pending":
        err.print(
            "[yellow]warning:[/yellow] nothing fits yet; the deployment waits for room "
            "(see `kcloud placement explain " + escape(view["name"]) + "`)"
        )


@deploy_app.command("create")
def create(
    model: str = typer.Argument(..., help="Model name in the repository (`kcloud models list`)."),
    name: str | None = typer.Option(None, "--name", "-n", help="Served name (default: the model's)."),
    version: int | None = typer.Option(None, "--version", min=1, help="Model version (default: latest)."),
    replicas: int | None = typer.Option(
        None, "--replicas", "-r", help="Number of replicas (>= 0; default 1, or autoscale's min)."
    ),
    vendor: str | None = typer.Option(None, "--vendor", help="Only devices of this vendor."),
    chip: str | None = typer.Option(None, "--chip", help="Only this catalog chip (e.g. furiosa-rngd)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, fp16, bf16, int8 or fp8."),
    node: str | None = typer.Option(None, "--node", help="Only devices on this node."),
    policy: str = typer.Option(
        "spread", "--policy", help="spread (replicas apart) or binpack (fill devices)."
    ),
    p99_ms: float | None = typer.Option(None, "--p99-ms", help="SLO: p99 latency target in ms."),
    rps: float | None = typer.Option(None, "--rps", help="SLO: throughput to serve, requests per second."),
    tenant: str | None = typer.Option(None, "--tenant", help="Owner (admin keys only)."),
    autoscale: str | None = typer.Option(None, "--autoscale", help=_AUTOSCALE_HELP),
    stages: int | None = typer.Option(
        None, "--stages", min=1, max=16,
        help="Split each replica's graph into this many pipeline stages, one device each "
             "(default: only when the model fits no device, into as few as fit)."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait until the replicas run (or it is pending)."
    ),
    timeout: float = typer.Option(180.0, "--timeout", min=1, help="Seconds to wait."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Deploy a model: placed at once on the best devices by perf/watt, then started."""
    if replicas is not None and replicas < 0:
        raise fail(f"--replicas must be >= 0, got {replicas}", 2)
    body: dict[str, Any] = {
        "model": model,
        "policy": policy,
        "constraints": _constraints(vendor, chip, precision, node),
        "slo": {"p99_latency_ms": p99_ms, "throughput_rps": rps},
    }
    if autoscale is not None:
        body["autoscale"] = parse_autoscale(autoscale)
    for key, value in (("name", name), ("version", version), ("tenant", tenant), ("replicas", replicas),
                       ("stages", stages)):
        if value is not None:
            body[key] = value
    view = call(url, api_key, "POST", "/deployments", json=body)
    _finish(view, url, api_key, wait=wait, timeout=timeout, as_json=as_json)


@deploy_app.command("scale")
def scale(
    name: str = typer.Argument(..., help="Deployment name."),
    replicas: int = typer.Argument(..., help="Number of replicas (>= 0)."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    timeout: float = typer.Option(180.0, "--timeout", min=1),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Set the number of replicas."""
    if replicas < 0:
        raise fail(f"replicas must be >= 0, got {replicas}", 2)
    view = call(url, api_key, "POST", f"/deployments/{name}/scale", json={"replicas": replicas})
    _finish(view, url, api_key, wait=wait, timeout=timeout, as_json=as_json)


@deploy_app.command("update")
def update(
    name: str = typer.Argument(..., help="Deployment name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Move to this model version."),
    replicas: int | None = typer.Option(None, "--replicas", "-r"),
    vendor: str | None = typer.Option(None, "--vendor"),
    chip: str | None = typer.Option(None, "--chip"),
    precision: str | None = typer.Option(None, "--precision"),
    node: str | None = typer.Option(None, "--node"),
    clear_constraints: bool = typer.Option(False, "--clear-constraints", help="Drop every constraint."),
    policy: str | None = typer.Option(None, "--policy"),
    p99_ms: float | None = typer.Option(None, "--p99-ms"),
    rps: float | None = typer.Option(None, "--rps"),
    autoscale: str | None = typer.Option(None, "--autoscale", help=_AUTOSCALE_HELP),
    no_autoscale: bool = typer.Option(False, "--no-autoscale", help="Turn autoscaling off."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    timeout: float = typer.Option(180.0, "--timeout", min=1),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Change a deployment. New constraints replace the old set; replicas are replaced in turn."""
    if replicas is not None and replicas < 0:
        raise fail(f"--replicas must be >= 0, got {replicas}", 2)
    patch: dict[str, Any] = {}
    if version is not None:
        patch["version"] = version
    if replicas is not None:
        patch["replicas"] = replicas
    given = _constraints(vendor, chip, precision, node)
    if clear_constraints and given:
        raise fail("--clear-constraints and a constraint option together: choose one", 2)
    if given or clear_constraints:
        patch["constraints"] = given
    if policy is not None:
        patch["policy"] = policy
    if p99_ms is not None or rps is not None:
        patch["slo"] = {"p99_latency_ms": p99_ms, "throughput_rps": rps}
    if autoscale is not None and no_autoscale:
        raise fail("--autoscale and --no-autoscale together: choose one", 2)
    if autoscale is not None:
        patch["autoscale"] = parse_autoscale(autoscale)
    if no_autoscale:
        patch["autoscale"] = None
    if not patch:
        raise fail("nothing to change: give --version, --replicas, a constraint, --policy, an SLO or "
                   "--autoscale", 2)
    view = call(url, api_key, "PATCH", f"/deployments/{name}", json=patch)
    _finish(view, url, api_key, wait=wait, timeout=timeout, as_json=as_json)


@deploy_app.command("delete")
def delete(
    name: str = typer.Argument(..., help="Deployment name."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Delete a deployment; its replicas stop."""
    call(url, api_key, "DELETE", f"/deployments/{name}")
    out.print(f"deleted {escape(name)}")


@deploy_app.command("list")
def list_deployments(url: str = _URL, api_key: str | None = _KEY, as_json: bool = _JSON) -> None:
    """Every deployment you may see, with its status."""
    views = call(url, api_key, "GET", "/deployments")
    if as_json:
        typer.echo(json.dumps(views))
        return
    table = Table("name", "model", "version", "running", "status", "devices", "reason")
    for v in views:
        devices = ", ".join(sorted({r["device"] for r in v["replica_list"]})) or "-"
        table.add_row(
            v["name"],
            v["model"],
            str(v["version"]),
            f"{v['running']}/{v['replicas']}",
            _status(v),
            devices,
            escape(v["reason"] or ""),
        )
    out.print(table)


@deploy_app.command("show")
def show(
    name: str = typer.Argument(...), url: str = _URL, api_key: str | None = _KEY, as_json: bool = _JSON
) -> None:
    """One deployment and where its replicas run."""
    view = call(url, api_key, "GET", f"/deployments/{name}")
    _done(view, as_json)


@deploy_app.command("events")
def events(
    name: str = typer.Argument(..., help="Deployment name."),
    kind: str | None = typer.Option(
        None, "--kind", help="Only events whose kind starts with this, e.g. autoscale or replica."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="The newest this many."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """What happened to a deployment, oldest first: scaling decisions with their inputs, placements,
    replicas started, stopped and failed over."""
    # The API answers the newest events (up to 1000), oldest first.
    rows = call(url, api_key, "GET", "/events", params={"deployment": name, "limit": 1000})
    rows = [r for r in rows if kind is None or r["kind"].startswith(kind)][-limit:]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        out.print(f"no events for {escape(name)}" + (f" of kind {escape(kind)}" if kind else ""))
        return
    table = Table("at", "kind", "what")
    for row in rows:
        what = row["message"]
        if row["kind"].startswith("autoscale") and row.get("data"):
            what += " [" + ", ".join(f"{k}={v}" for k, v in row["data"].items()) + "]"
        table.add_row(row["at"][:19], row["kind"], escape(what))
    out.print(table)


def _ppw(candidate: dict[str, Any]) -> str:
    if candidate["perf_per_watt"] is None:
        return "unknown"
    tag = "modelled" if candidate["perf_modelled"] else "measured"
    return f"{candidate['perf_per_watt']:.4g} ({tag})"


@placement_app.command("explain")
def explain(
    name: str = typer.Argument(..., help="Deployment name."),
    history: int = typer.Option(
        1, "--history", min=1, max=20, help="How many placements to show, newest first."
    ),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = _JSON,
) -> None:
    """Where each replica is, and why every device was chosen or rejected."""
    view = call(url, api_key, "GET", f"/deployments/{name}/placement", params={"limit": history})
    if as_json:
        typer.echo(json.dumps(view))
        return
    out.print(
        f"[bold]{escape(view['deployment'])}[/bold]  {_status(view)}  {escape(view['reason'] or '')}",
        soft_wrap=True,
    )
    if view.get("pipeline"):
        _print_pipeline(view["pipeline"])
    if view["replicas"]:
        table = Table("replica", "device", "state", "pid", title="replicas now")
        for r in view["replicas"]:
            device = _devices(r) + (" [yellow](emulated)[/yellow]" if r["emulated"] else "")
            table.add_row(r["id"], device, r["state"], str(r["pid"] or "-"))
        out.print(table)
        for serves in sorted({r["serves"] for r in view["replicas"] if r.get("serves")}):
            out.print(f"serves: {escape(serves)}", soft_wrap=True)
    for placement in view["placements"]:
        out.print(
            f"\n[bold]placement {placement['id']}[/bold] ({placement['trigger']}, {placement['policy']}, "
            f"{placement['at'][:19]}): {escape(placement['reason'])}",
            soft_wrap=True,
        )
        table = Table("device", "chosen", "perf/watt (samples/J)", "score", "why")
        for c in placement["candidates"]:
            chosen = (
                f"[green]{c['chosen']}[/green]"
                if c["chosen"]
                else ("-" if c["eligible"] else "[red]no[/red]")
            )
            score = f"{c['score']:.4g}" if c["score"] is not None else "-"
            table.add_row(c["device"], chosen, _ppw(c), score, escape(c["reason"]))
        out.print(table)
    if not view["placements"]:
        out.print("no placement recorded yet")
    routing = view.get("routing")
    if routing:
        out.print(f"\n[bold]requests routed[/bold] by token policy {routing['policy']} "
                  "(prefix: the replica had seen the prompt's prefix; least-tokens: the least loaded)")
        for replica, counts in routing["routed"].items():
            spread = ", ".join(f"{policy} {count}" for policy, count in sorted(counts.items())) or "none yet"
            out.print(f"  {escape(replica)}: {spread}", soft_wrap=True)


def _print_device(view: dict[str, Any]) -> None:
    state = "[yellow]drained[/yellow]" if view["drained"] else "[green]takes replicas[/green]"
    health = "healthy" if view["healthy"] else f"[red]unhealthy[/red] ({escape(view['health_reason'] or '')})"
    why = f" ({escape(view['drain_reason'])})" if view["drained"] and view["drain_reason"] else ""
    out.print(f"{escape(view['uid'])}: {state}{why}, {health}, {view['replicas']} replica(s) on it")


def drain(
    uid: str = typer.Argument(..., help="Device uid, NODE/ID (see `kcloud devices` or GET /api/v1/devices)."),
    reason: str | None = typer.Option(None, "--reason", help="Why, for the events and the device view."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Drain a device: its replicas are placed elsewhere first, then stopped here."""
    _print_device(call(url, api_key, "POST", f"/devices/{uid}/drain", json={"reason": reason}))


def undrain(
    uid: str = typer.Argument(..., help="Device uid, NODE/ID."),
    url: str = _URL,
    api_key: str | None = _KEY,
) -> None:
    """Let a drained device take replicas again."""
    _print_device(call(url, api_key, "POST", f"/devices/{uid}/undrain"))


def register(app: typer.Typer) -> None:
    """Add `kcloud deploy ...`, `kcloud placement ...` and `kcloud devices drain|undrain` (the
    devices group belongs to the devices package, which knows nothing of the control plane)."""
    app.add_typer(deploy_app, name="deploy")
    app.add_typer(placement_app, name="placement")
    devices_app.command("drain")(drain)
    devices_app.command("undrain")(undrain)
