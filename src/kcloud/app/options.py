"""What `kcloud up` lets a user choose, in one place for the CLI, the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter

from kcloud.serving.gateway import DEFAULT_MAX_BODY_BYTES
from kcloud.serving.http_protocol import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    ConnectionLimits,
)
from kcloud.serving.http_server import DEFAULT_HOST, DEFAULT_PORT
from kcloud.serving.replica import Isolation
from kcloud.serving.token_routing import Policy


@dataclass
class ServeOptions:
    """What `kcloud up` lets a user choose."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    farm_files: Sequence[Path] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Replicas per bundled model; None = the measured-best layout for the device (`default_layout`).
    replicas: int | None = None
    isolation: Isolation = "process"
    #: Serve only these models (None = every model in the repository).
    models: Sequence[str] | None = None
    #: Record each inference request's arrival time and rows here (CSV), for `kcloud twin run`.
    record_trace: Path | None = None
    extra_routers: Sequence[APIRouter] = ()
    #: How a generative model's requests pick among its engine replicas (`kcloud.serving.token_routing`).
    token_policy: Policy = "prefix"
    #: Keep the control plane's state in a database and serve its admin API (`/api/v1`). Without
    #: it the control plane still owns every replica, with its state in this process's memory.
    control_plane: bool = False
    #: Its database (None: $KCLOUD_DB_URL, else SQLite in the kcloud home).
    db_url: str | None = None
    #: Attach tenancy (API keys on every route, isolation, quotas, usage, audit: `kcloud.tenancy`).
    tenancy: bool = False
    #: With tenancy: switch authentication off (`--insecure-no-auth`), announced loudly.
    insecure_no_auth: bool = False
    #: With the control plane: the web console at /ui (`kcloud.console`), reading benchmark results
    #: under `bench_results` (None: $KCLOUD_HOME/bench, where `kcloud bench run` writes them) and
    #: twin runs under `twin_results` (None: $KCLOUD_HOME/twin, where `kcloud twin run` writes them).
    console: bool = True
    bench_results: Path | None = None
    twin_results: Path | None = None
    #: Be the head of a cluster: start a Ray head on this port, whose nodes host the replicas
    #: (`kcloud cluster start`); None: replicas on this machine only (`kcloud up`).
    ray_port: int | None = None
    #: The address the Ray head listens on and other nodes reach it at.
    node_ip_address: str = DEFAULT_HOST
    #: Connection limits (`kcloud.serving.http_protocol`): a request's headers must be complete
    #: this long after its first byte (else 408, or a silent close when nothing came) ...
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    #: ... its body may pause this long between two pieces (else 408) ...
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    #: ... an idle keep-alive connection is closed after this long ...
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    #: ... and one peer address may hold this many open connections (503 beyond; 0 = no cap).
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout_s=self.header_timeout_s, body_timeout_s=self.body_timeout_s,
                                keep_alive_timeout_s=self.keep_alive_timeout_s,
                                max_per_client=self.max_connections_per_client)
