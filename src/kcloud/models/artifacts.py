"""Compiled artifacts: per-target builds of one model version, kept beside it in the repository.

```
<repo>/<model>/<version>/model.onnx                        the source graph
<repo>/<model>/<version>/artifacts/<target>/model.onnx     what that target runs (.rbln, .enf for NPUs)
<repo>/<model>/<version>/artifacts/<target>/build.json     its build record
```

A build record says what the artifact is made of and how good it is: the source's digest, the
target and settings (together the cache key), the tools' versions, the calibration data's digest
and the accuracy the gate measured. A refused build leaves a record too (`status = "refused"`,
no file), so asking again for the same key answers at once with the same reason instead of
compiling for a minute to fail the same way.

Every read checks the record against the files: an artifact whose bytes changed is corrupt, one
whose source weights changed is stale; both are refused by name (`ArtifactError`), never served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcloud.models.errors import ModelFileError
from kcloud.models.graph import file_sha256
from kcloud.models.repository import ModelEntry

ARTIFACTS_DIR = "artifacts"
RECORD_FILE = "build.json"
BUILT = "built"
REFUSED = "refused"


class ArtifactError(ModelFileError):
    """An artifact on disk is unusable: corrupt, stale or unreadable; the message says which."""


class ArtifactRefusedError(ModelFileError):
    """A build was refused (its accuracy missed the gate, or the target's tool failed); the record
    of the refusal says by how much, and `kcloud models compile --force` tries again."""


@dataclass(frozen=True)
class Artifact:
    """One built artifact of one model version for one target."""

    target: str
    #: The file the target's runtime loads.
    path: Path
    record: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.record["key"])

    @property
    def sha256(self) -> str:
        return str(self.record["artifact_sha256"])

    def summary(self) -> str:
        """One line for listings and placement explain: the target, its key and its gate."""
        gate = self.record.get("accuracy") or {}
        speed = self.record.get("speed") or {}
        parts = [f"{self.target} {self.key[:12]}"]
        if gate.get("summary"):
            parts.append(gate["summary"])
        if speed.get("ratio") is not None:
            parts.append(f"{speed['ratio']:.2f}x the source's throughput on the build host")
        return "; ".join(parts)

    def describe(self) -> dict[str, Any]:
        """What an API or `--json` shows of it."""
        return {
            "target": self.target,
            "key": self.key,
            "path": str(self.path),
            "sha256": self.sha256,
            "summary": self.summary(),
        }


def cache_key(source_sha256: str, target: str, settings: dict[str, Any]) -> str:
    """The identity of a build: same source bytes, target and settings give the same artifact."""
    blob = json.dumps({"source": source_sha256, "target": target, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def artifact_dir(entry: ModelEntry, target: str) -> Path:
    return entry.path / ARTIFACTS_DIR / target


def _read_record(directory: Path) -> dict[str, Any] | None:
    path = directory / RECORD_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: not a readable build record ({exc}); run `kcloud models compile --force` to rebuild it"
        ) from None
    if not isinstance(record, dict) or record.get("status") not in (BUILT, REFUSED):
        raise ArtifactError(
            f"{path}: not a build record (no `status`); run `kcloud models compile --force` to rebuild it"
        )
    return record


def load_artifact(entry: ModelEntry, target: str, key: str | None = None) -> Artifact | None:
    """The checked artifact of `entry` for `target`; None when none was built (or, given `key`,
    none with that key). `ArtifactError` for a corrupt or stale one, `ArtifactRefusedError`
    when the last build for this key was refused."""
    directory = artifact_dir(entry, target)
    record = _read_record(directory)
    if record is None or (key is not None and record.get("key") != key):
        return None
    where = f"artifact {target} of {entry.config.name} version {entry.version} ({directory})"
    if record.get("source_sha256") != entry.sha256:
        raise ArtifactError(
            f"{where} is stale: it was compiled from weights with sha256 "
            f"{str(record.get('source_sha256'))[:12]}…, "
            f"the model's weights now have {entry.sha256[:12]}…; run "
            f"`kcloud models compile {entry.config.name} --target {target} --force`"
        )
    if record["status"] == REFUSED:
        raise ArtifactRefusedError(f"{where} was refused: {record.get('reason')}")
    path = directory / str(record.get("file", ""))
    if not path.is_file():
        raise ArtifactError(f"{where} is corrupt: its file {path.name!r} is missing; rebuild with --force")
    if file_sha256(path) != record.get("artifact_sha256"):
        raise ArtifactError(
            f"{where} is corrupt: {path.name} does not match the digest in its build "
            f"record; rebuild with `kcloud models compile {entry.config.name} --target {target} --force`"
        )
    return Artifact(target, path, record)


def list_artifacts(entry: ModelEntry) -> list[tuple[str, Artifact | None, str | None]]:
    """(target, artifact or None, problem or None) for every target directory of `entry`."""
    root = entry.path / ARTIFACTS_DIR
    found: list[tuple[str, Artifact | None, str | None]] = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if not directory.is_dir() or directory.name.startswith("."):
            continue
        try:
            found.append((directory.name, load_artifact(entry, directory.name), None))
        except ModelFileError as exc:
            found.append((directory.name, None, str(exc)))
    return found


def _replace_dir(staging: Path, directory: Path) -> None:
    """Move a finished staging directory into place, replacing an older build whole."""
    if directory.exists():
        old = directory.with_name(f".old-{directory.name}-{staging.name}")
        directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(directory)


def staging_dir(entry: ModelEntry) -> Path:
    """A fresh hidden directory beside the artifacts, where a build writes before it is moved in.

    Called under the artifacts lock, so any other staging (or replaced) directory there is what
    a killed build left behind: it is removed first."""
    root = entry.path / ARTIFACTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    for leftover in [*root.glob(".staging-*"), *root.glob(".old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))


def save_artifact(
    entry: ModelEntry, target: str, staging: Path, file_name: str, record: dict[str, Any]
) -> Artifact:
    """Record a built artifact (`staging/file_name`) and move it into place atomically."""
    record = {
        **record,
        "status": BUILT,
        "file": file_name,
        "artifact_sha256": file_sha256(staging / file_name),
        "source_sha256": entry.sha256,
    }
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    directory = artifact_dir(entry, target)
    _replace_dir(staging, directory)
    return Artifact(target, directory / file_name, record)


def save_refusal(entry: ModelEntry, target: str, staging: Path, record: dict[str, Any]) -> None:
    """Record a refused build (no artifact file) so the same request is answered at once."""
    for child in staging.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    record = {**record, "status": REFUSED, "source_sha256": entry.sha256}
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    _replace_dir(staging, artifact_dir(entry, target))


def with_artifact(entry: ModelEntry, artifact: Artifact) -> ModelEntry:
    """`entry` served from `artifact`: the same model and processing, the artifact's graph."""
    return dataclasses.replace(entry, weights_path=artifact.path, artifact=artifact)
