"""`kcloud up`: serve the embedded default (the bundled models on this machine's CPU)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from kcloud.cli_errors import fail
from kcloud.cluster.commands import cluster_app

if TYPE_CHECKING:
    from kcloud.app.options import ServeOptions


class IsolationChoice(StrEnum):
    process = "process"
    thread = "thread"


def up(
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    farm: list[Path] = typer.Option(
        [], "--farm", "-f", dir_okay=False,
        help="Farm file (TOML) with nodes and emulated devices; repeatable."),
    max_body_bytes: int = typer.Option(
        16 * 1024 * 1024, "--max-body-bytes", min=1, help="Largest request body accepted (413 beyond)."),
    replicas: int | None = typer.Option(
        None, "--replicas", "-r", min=1,
        help="Replicas per model (default: the measured-best layout for this CPU)."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Serve only this model of the repository; repeatable (default: all)."),
    isolation: IsolationChoice = typer.Option(
        IsolationChoice.process, "--isolation",
        help="Run each replica's session in a worker process (a crash costs one replica) or in a "
             "thread of the server (no IPC)."),
    record_trace: Path | None = typer.Option(
        None, "--record-trace", dir_okay=False,
        help="Record each inference request's arrival time and rows (no content) to this CSV, for "
             "`kcloud twin run`."),
    db: str | None = typer.Option(
        None, "--db", envvar="KCLOUD_DB_URL", show_default=False,
        help="Control-plane database URL (default: SQLite in the kcloud home; postgresql://... "
             "with the [postgres] extra)."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth",
        help="Switch API-key authentication off: anyone who can reach the port acts as an admin. "
             "Announced loudly (banner, log warning, X-Kcloud-Insecure header on every response)."),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.001, metavar="SECONDS",
        help="A request's headers must be complete this long after its first byte (else 408 and close)."),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", min=0.001, metavar="SECONDS",
        help="Longest pause between two pieces of a request body (else 408 and close)."),
    keep_alive_timeout: float = typer.Option(
        5.0, "--keep-alive-timeout", min=0.001, metavar="SECONDS",
        help="An idle keep-alive connection is closed after this long."),
    max_connections_per_client: int = typer.Option(
        1024, "--max-connections-per-client", min=0,
        help="Open connections one client address may hold; more are answered 503 (0: no cap)."),
) -> None:
    """Serve the bundled models on this machine's CPU over OIP v2 and OpenAI; Ctrl-C stops."""
    from kcloud.app.options import ServeOptions

    options = ServeOptions(host=host, port=port, farm_files=tuple(farm), max_body_bytes=max_body_bytes,
                           replicas=replicas, isolation=isolation.value, control_plane=True, db_url=db,
                           tenancy=True, insecure_no_auth=insecure_no_auth, header_timeout_s=header_timeout,
                           body_timeout_s=body_timeout, keep_alive_timeout_s=keep_alive_timeout,
                           max_connections_per_client=max_connections_per_client, models=model or None,
                           record_trace=record_trace)
    _serve(options)


def cluster_start(
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port of the gateway."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the gateway binds (loopback default)."),
    ray_port: int = typer.Option(6379, "--ray-port", min=1, max=65535, help="Port of the Ray head (GCS)."),
    node_ip_address: str = typer.Option(
        "127.0.0.1", "--node-ip-address",
        help="The head's address for Ray: where nodes join it. Loopback by default (nodes on this "
             "machine); this server's address for nodes on other servers."),
    farm: list[Path] = typer.Option(
        [], "--farm", "-f", dir_okay=False,
        help="Farm file (TOML) with the head's emulated devices; repeatable."),
    replicas: int | None = typer.Option(
        None, "--replicas", "-r", min=1, help="Replicas per bundled model (default: the best layout)."),
    model: list[str] = typer.Option(
        [], "--model", "-m", help="Serve only this model of the repository on the head; repeatable "
                                  "(default: every model)."),
    db: str | None = typer.Option(
        None, "--db", envvar="KCLOUD_DB_URL", show_default=False,
        help="Control-plane database URL (default: SQLite in the kcloud home)."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Switch API-key authentication off (announced loudly)."),
) -> None:
    """Start a cluster head: a Ray head, the control plane and the gateway; nodes join it with
    `kcloud cluster join`, and their devices take replicas. Ctrl-C stops."""
    from kcloud.app.options import ServeOptions

    _check_ip(node_ip_address)
    options = ServeOptions(host=host, port=port, farm_files=tuple(farm), replicas=replicas,
                           control_plane=True, db_url=db, tenancy=True, insecure_no_auth=insecure_no_auth,
                           ray_port=ray_port, node_ip_address=node_ip_address, models=model or None)
    _serve(options)


def _check_ip(address: str) -> None:
    import ipaddress

    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise fail(f"--node-ip-address must be an IP address, got {address!r}", 2) from None


def _serve(options: ServeOptions) -> None:
    """Serve in the foreground; every failure the user can fix is one line and an exit code."""
    # The server stack loads only when `up` runs, so that every other command starts quickly.
    from kcloud.app.serve import serve
    from kcloud.app.stack import NoLocalCpuError
    from kcloud.cluster.ray_node import ClusterError
    from kcloud.devices.inventory import FarmFileError
    from kcloud.models.errors import BuildError, ModelFileError, ModelNotFoundError
    from kcloud.serving.http_server import ListenError
    from kcloud.serving.trace import TraceFileError
    from kcloud.store.db import DatabaseError
    from kcloud.tenancy.keys import ServerSecretError
    from kcloud.tenancy.service import UsageSettingsError

    try:
        serve(options)
    except ListenError as exc:  # the port is taken, or the address is not this machine's
        raise fail(exc.strerror or str(exc), 2) from None
    except (FarmFileError, DatabaseError, ServerSecretError, UsageSettingsError, ClusterError,
            TraceFileError) as exc:
        raise fail(str(exc), 2) from None
    except ModelNotFoundError as exc:  # a --model the repository does not hold
        raise fail(str(exc).strip("'\""), 2) from None
    except (BuildError, ModelFileError, NoLocalCpuError) as exc:
        raise fail(str(exc).strip("'\""), 1) from None
    except OSError as exc:  # a file kcloud needs (a model directory, its home) cannot be used
        names = ((": ", exc.filename), (" -> ", exc.filename2))
        where = "".join(f"{sep}{name}" for sep, name in names if name)
        raise fail(f"kcloud could not start: {exc.strerror or exc}{where}", 1) from None
    except KeyboardInterrupt:  # Ctrl-C while models or replicas were still starting
        Console(stderr=True).print("interrupted; stopped.")
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add `kcloud up` and `kcloud cluster start` (the cluster group is `kcloud.cluster`'s)."""
    app.command("up")(up)
    cluster_app.command("start")(cluster_start)
