"""Where kcloud keeps its state on this machine.

One directory holds the embedded database, built model artifacts and bench results, so that
removing it is a clean reset. `KCLOUD_HOME` moves it (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path


def kcloud_home() -> Path:
    """The kcloud home directory, created on first use."""
    home = Path(os.environ.get("KCLOUD_HOME") or Path.home() / ".kcloud").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
