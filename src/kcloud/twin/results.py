"""Where `kcloud twin run` keeps its runs, and reading one back (the console lists them).

A run is a directory holding `twin-result.json` (every figure, modelled) and `twin-report.html`;
by default `$KCLOUD_HOME/twin/<UTC time>`, named by its directory relative to that root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kcloud.home import kcloud_home

RESULT_FILE = "twin-result.json"
REPORT_FILE = "twin-report.html"
#: Keys every twin result has; a file without them is not one.
REQUIRED = ("farm", "basis", "duration_s", "created", "deployments", "devices", "energy", "simulation")


class TwinResultError(ValueError):
    """A file that should be a twin result and is not (unreadable, not JSON, missing keys)."""


def default_twin_dir() -> Path:
    """Where `kcloud twin run` writes its runs when no `--out` is given."""
    return kcloud_home() / "twin"


def load_twin_result(path: Path) -> dict[str, Any]:
    """The result at `path`; `TwinResultError` naming the file when it is not one."""
    try:
        result = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TwinResultError(f"{path}: not a readable twin result ({exc})") from None
    if not isinstance(result, dict):
        raise TwinResultError(f"{path}: not a twin result (a JSON object is expected)")
    if result.get("kind") != "kcloud-twin-run":
        raise TwinResultError(f"{path}: not a twin result (its kind is {result.get('kind')!r})")
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise TwinResultError(f"{path}: not a twin result (missing {', '.join(missing)})")
    return result
