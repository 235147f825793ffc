"""`kcloud up`: the embedded default, served in the foreground until Ctrl-C or SIGTERM.

The steps: bind the port (first, so a port in use fails before any model is loaded), check the
database and the key secret, build the inventory, make sure the bundled models exist, build the
stack (`kcloud.app.stack`), then serve HTTP with uvicorn (uvloop + httptools). Shutdown is
graceful: uvicorn stops accepting and lets requests in flight finish, then every replica drains
its queue and its worker process ends.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kcloud.app.options import ServeOptions
from kcloud.app.stack import Stack, build_inventory, build_stack, prepare_repository, served_entries
from kcloud.cluster.head import start_cluster_head
from kcloud.farm.reconciler import PassReport
from kcloud.farm.service import BundledModel
from kcloud.home import kcloud_home
from kcloud.models.repository import ModelEntry
from kcloud.serving.http_server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Server,
    bind_socket,
    run_on_uvloop,
    serve_app,
    tune_gc_for_serving,
    url_of,
)
from kcloud.store.db import open_database
from kcloud.tenancy.keys import load_server_secret
from kcloud.tenancy.service import check_usage_settings, console_announcer


async def serve_stack(
    stack: Stack,
    sock: socket.socket,
    *,
    on_listening: Callable[[], None] | None = None,
    server_ready: Callable[[Server], None] | None = None,
    options: ServeOptions | None = None,
) -> None:
    """Serve `stack.app` on `sock` until stopped, then close the stack (drains the replicas)."""
    limits = options.connection_limits() if options is not None else None
    try:
        await serve_app(stack.app, sock, on_listening=on_listening, server_ready=server_ready, limits=limits)
    finally:
        await stack.close()


def curl_example(url: str, entries: Sequence[ModelEntry]) -> str | None:
    """A ready-to-paste request for the first text model (or any model with a BYTES input)."""
    for entry in entries:
        if len(entry.config.inputs) == 1 and entry.config.inputs[0].datatype == "BYTES":
            spec = entry.config.inputs[0]
            body = (f'{{"inputs":[{{"name":"{spec.name}","datatype":"BYTES","shape":[1],'
                    f'"data":["Hello from K-Cloud"]}}]}}')
            return (f"curl -s {url}/v2/models/{entry.name}/infer "
                    f"-H 'Content-Type: application/json' -d '{body}'")
    return None


def chat_curl_example(url: str, entries: Sequence[ModelEntry]) -> str | None:
    """A ready-to-paste streamed chat completion for the first chat model."""
    for entry in entries:
        if entry.config.generation is not None and entry.config.generation.chat:
            body = (f'{{"model":"{entry.name}","stream":true,"max_tokens":64,'
                    '"messages":[{"role":"user","content":"What is K-Cloud?"}]}')
            return f"curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"
    return None


def print_banner(console: Console, url: str, stack: Stack) -> None:
    console.print(f"[bold green]kcloud is serving[/bold green] on {url}")
    console.print(f"  Open Inference Protocol v2  {url}/v2")
    console.print(f"  OpenAI-compatible           {url}/v1")
    console.print(f"  Prometheus metrics          {url}/metrics")
    console.print(f"  API docs                    {url}/docs")
    if stack.admin_api:
        console.print(f"  Admin API (deployments)     {url}/api/v1   (kcloud deploy --help)")
    keyed = stack.tenancy is not None and not stack.tenancy.insecure  # every route needs a key
    if keyed:
        console.print("  API keys                    every route: Authorization: Bearer <key> (kcloud keys)")
    if stack.console is not None:
        sign_in = "  (sign in with an API key)" if keyed else ""
        console.print(f"  Web console                 {url}/ui/{sign_in}")
    console.print(f"Models on {stack.device.uid} ({stack.device.name}):")
    for entry in stack.entries:
        count = stack.replicas.get(entry.name, 0)
        console.print(f"  {entry.name} v{entry.version}  {count} replica{'s' if count != 1 else ''}")
    example = curl_example(url, stack.entries)
    if example and keyed:
        example = example.replace("curl -s ", 'curl -s -H "Authorization: Bearer $KCLOUD_API_KEY" ', 1)
    chat = chat_curl_example(url, stack.entries)
    if chat and keyed:
        chat = chat.replace("curl -sN ", 'curl -sN -H "Authorization: Bearer $KCLOUD_API_KEY" ', 1)
    if example:
        text_model = example.split("/v2/models/")[1].split("/")[0]
        port_flag = "" if url == url_of(DEFAULT_HOST, DEFAULT_PORT) else f" --url {url}"
        console.print("Try:")
        console.print(f"  {example}", soft_wrap=True, markup=False, highlight=False)
        console.print(f'  kcloud infer {text_model} --text "Hello from K-Cloud"{port_flag}',
                      soft_wrap=True, markup=False, highlight=False)
    if chat:
        console.print("Chat (OpenAI-compatible, streamed):")
        console.print(f"  {chat}", soft_wrap=True, markup=False, highlight=False)
    if stack.cluster is not None:
        console.print(f"Cluster head (Ray) at {stack.cluster.address}; add a node with:")
        console.print(f"  kcloud cluster join {stack.cluster.address} --node NAME [--farm FILE]",
                      soft_wrap=True, markup=False, highlight=False)
    console.print("Press Ctrl-C to stop.")


def serve(options: ServeOptions, *, console: Console | None = None) -> None:
    """`kcloud up`: the embedded default, in the foreground until Ctrl-C or SIGTERM.

    Raises `ListenError` (`PortInUseError`) before loading anything when it cannot listen; a database or key
    secret that cannot be used fails before anything starts, too.
    """
    console = console or Console()
    sock = bind_socket(options.host, options.port)
    try:
        url = url_of(options.host, sock.getsockname()[1])
        if options.control_plane:
            open_database(options.db_url).close()
        if options.tenancy:
            load_server_secret(kcloud_home())
            check_usage_settings()
        inventory = build_inventory(options.farm_files)
        repository = prepare_repository(progress=True, models=options.models)
        served_entries(repository, options.models)  # an unknown --model fails here, before anything starts
        cluster = None
        if options.ray_port is not None:
            with console.status("Starting the Ray head"):
                cluster = start_cluster_head(inventory, ip=options.node_ip_address, port=options.ray_port)

        async def main() -> None:
            with _progress(console) as progress:
                task = progress.add_task("Starting replicas", total=None)
                versions: dict[str, int] = {}

                def on_plan(entries: Sequence[ModelEntry], bundled: Sequence[BundledModel]) -> None:
                    versions.update((e.name, e.version) for e in entries)
                    progress.update(task, total=sum(m.replicas for m in bundled))

                def on_pass(report: PassReport) -> None:
                    progress.update(task, advance=len(report.started) + len(report.failed))

                stack = await build_stack(options, repository=repository, inventory=inventory,
                                          on_plan=on_plan, on_pass=on_pass,
                                          announce=console_announcer(progress.console),
                                          cluster=cluster)
                for name, why in stack.control_plane.not_served.items():
                    version = f" v{versions[name]}" if name in versions else ""
                    progress.console.print(f"[yellow]warning:[/yellow] model {escape(name)}{version} is not "
                                           f"served: {escape(why)}")
            tune_gc_for_serving()  # this process is the server from here on
            await serve_stack(stack, sock, on_listening=lambda: print_banner(console, url, stack),
                              options=options)
            console.print("kcloud stopped.")

        try:
            run_on_uvloop(main)
        finally:
            if cluster is not None:  # when the stack never took it over (a failed start)
                cluster.ray_node.stop()
    finally:
        sock.close()


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
