"""Debian's Chromium, headless, for the tests that open a report page: the DOM after its scripts ran."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def rendered_dom(page: Path, profile_dir: Path, *, budget_ms: int = 10_000, timeout_s: float = 120) -> str:
    """Open `page` in headless Chromium, let its scripts run for `budget_ms` of virtual time, return
    the DOM. Offline: no network, no first-run, sync or component updates."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for this test (`make test` installs it)"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True).stdout
