"""`kcloud cluster manifests`: the KubeRay RayCluster (and a Kustomize base) for a farm file.

`register` adds the command to the `cluster` group, which `kcloud.cluster.commands` owns. The
manifest code (`kcloud.cluster.kuberay`, PyYAML, the inventory) loads only when the command
runs, so that every other command starts quickly.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from kcloud.cli_errors import BAD_INPUT, err, fail


def register(cluster_app: typer.Typer) -> None:
    """Add `manifests` to the `cluster` command group."""
    cluster_app.command("manifests")(manifests)


def manifests(
    farm: list[Path] = typer.Option(
        ..., "--farm", "-f", dir_okay=False, show_default=False,
        help="Farm file (TOML) describing the cluster's nodes and chips; repeatable."),
    image: str | None = typer.Option(
        None, "--image", show_default=False,
        help="Container image with kcloud[cluster] and the vendors' SDKs (default: kcloud:<version>, "
             "which you build; see docs/kuberay.md)."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", show_default=False,
        help="Kubernetes namespace (default: none in the manifest, so kubectl's current one)."),
    name: str = typer.Option(
        "kcloud", "--name", help="RayCluster name (a DNS-1035 label, at most 53 characters)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", file_okay=False, show_default=False,
        help="Write raycluster.yaml and kustomization.yaml here (apply with `kubectl apply -k DIR`); "
             "default: print the RayCluster to stdout."),
    ray_version: str | None = typer.Option(
        None, "--ray-version", show_default=False,
        help="Ray version in the image (default: the installed Ray, else the `cluster` extra's pin)."),
) -> None:
    """Write a KubeRay RayCluster for the farm: a head, and a worker group per chip and count."""
    from kcloud.cluster.kuberay import ManifestError, build_manifests, write_manifests

    try:
        built = build_manifests(farm, name=name, image=image, ray_version=ray_version, namespace=namespace)
        written = write_manifests(built, out) if out is not None else []
    except ManifestError as exc:
        raise fail(str(exc), BAD_INPUT) from None
    if out is None:
        typer.echo(built.raycluster_yaml, nl=False)
    else:
        typer.echo("wrote " + ", ".join(str(p) for p in written))
        typer.echo(f"apply with: kubectl apply -k {out}")
    for group in built.groups:  # also in the YAML's comments; said here so that nobody misses them
        if group.note:
            err.print(f"[yellow]warning:[/yellow] group {group.name}: {escape(group.note)}",
                      soft_wrap=True, highlight=False)
