"""Model files on the nodes that run them: used where they are, else shipped once from the head.

A replica's session needs its model file on its node. On one machine, or where the nodes share
the repository's file system, the file is already at the head's path. Otherwise the head puts
the file's bytes into Ray's object store once per content (`Shipments`), and the node's
`ReplicaHost` fetches them the first time it needs that content, keeping the copy in its own
cache (`<KCLOUD_HOME>/cluster-cache/<sha256>/`) for every later replica. Both sides name the
content by its SHA-256, so a stale or torn copy is never used: it is fetched again.

An ONNX replica needs its one model file (with its weights inside, as kcloud's built models and
pipeline stages are); an LLM engine its checkpoint directory, shipped file by file the same way
into `<KCLOUD_HOME>/cluster-cache/<digest of its files>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kcloud.home import kcloud_home

CACHE_DIR = "cluster-cache"
_CHUNK = 1 << 20


class ShippingError(RuntimeError):
    """The model file could not be brought to this node."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_weights(weights_path: str, sha256: str, fetch: Callable[[], bytes], *, node: str,
                  cache: Path | None = None) -> str:
    """The path of the model file with content `sha256` on this node: `weights_path` when it
    holds that content, else this node's cached copy, fetched (`fetch()`) when it has none."""
    given = Path(weights_path)
    if given.is_file() and file_sha256(given) == sha256:
        return weights_path
    folder = (cache or kcloud_home() / CACHE_DIR) / sha256
    kept = folder / given.name
    if kept.is_file() and file_sha256(kept) == sha256:
        return str(kept)
    _fetch_into(kept, sha256, fetch, node)
    return str(kept)


def _fetch_into(target: Path, sha256: str, fetch: Callable[[], bytes], node: str) -> None:
    """`fetch()` the file's bytes, check them against `sha256` and write them to `target`."""
    try:
        data = fetch()
    except Exception as exc:
        raise ShippingError(f"model file {target.name} is not on node {node}, and fetching it from the "
                            f"head failed: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ShippingError(f"model file {target.name} fetched to node {node} does not match its "
                            f"SHA-256 {sha256[:12]}: not used")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=".fetching-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(staging, target)  # atomic: a replica starting beside this one sees all or nothing


#: A checkpoint's files as shipped: relative path -> (SHA-256, [object ref of the bytes]).
Files = dict[str, tuple[str, list[Any]]]


def local_checkpoint(directory: str, files: Files, fetch: Callable[[list[Any]], bytes], *, node: str,
                     cache: Path | None = None) -> str:
    """The checkpoint directory with `files` on this node: the head's `directory` when every file
    there has the same bytes, else this node's cached copy, each missing or stale file fetched
    (`fetch(shipped)`)."""
    given = Path(directory)
    if all((given / rel).is_file() and file_sha256(given / rel) == sha for rel, (sha, _) in files.items()):
        return directory
    listing = json.dumps(sorted((rel, sha) for rel, (sha, _) in files.items())).encode()
    folder = (cache or kcloud_home() / CACHE_DIR) / hashlib.sha256(listing).hexdigest()
    for rel, (sha, shipped) in files.items():
        target = folder / rel
        if not (target.is_file() and file_sha256(target) == sha):
            _fetch_into(target, sha, lambda shipped=shipped: fetch(shipped), node)
    return str(folder)


class Shipments:
    """The head's side: each model file's bytes put into the object store once per content."""

    def __init__(self) -> None:
        #: (path, size, mtime) -> (sha256, object ref)
        self._put: dict[tuple[str, int, int], tuple[str, Any]] = {}

    def ship(self, path: Path) -> tuple[str, Any]:
        """(SHA-256, object ref of the bytes) for `path`, put on first use (the head must be a
        Ray driver)."""
        import ray

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._put:
            data = path.read_bytes()
            self._put[key] = (hashlib.sha256(data).hexdigest(), ray.put(data))
        return self._put[key]

    def ship_dir(self, directory: Path) -> Files:
        """Every file under `directory` (hidden ones left out), by relative path."""
        files: Files = {}
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                sha, ref = self.ship(path)
                files[str(rel)] = (sha, [ref])
        return files
