"""Every console page drawn in Chromium from the phase-1 farm while a deployment serves traffic, as
PNG files: in a temporary directory, or into `docs/console/` (the pictures docs/console.md shows)
when `KCLOUD_UPDATE_SCREENSHOTS=1`:

    KCLOUD_UPDATE_SCREENSHOTS=1 .venv/bin/pytest tests/console/test_console_screenshots.py \
        tests/llm/test_chat_console.py

(The chat models page needs a real LLM engine: tests/llm/test_chat_console.py draws that one.)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from console_support import ROOT, ConsoleFarm

pytestmark = pytest.mark.slow

#: file name -> route, as a user would open them.
PAGES = {
    "overview": "overview",
    "devices": "devices",
    "device": "device/{device}",
    "nodes": "nodes",
    "deployments": "deployments",
    "deployment": "deployment/web-digits",
    "bench": "bench",
    "run": "run/{a}",
    "compare": "compare/{a}/{b}",
    "twin": "twin",
    "twin-run": "twin-run/{twin}",
    "usage": "usage",
    "keys": "keys",
    "audit": "audit",
}


def _serve_traffic(farm: ConsoleFarm, stop: threading.Event) -> int:
    """Digits to web-digits, a few batches a second, until `stop`: what the live charts show."""
    images = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                        "data": images.ravel().tolist()}]}
    sent = 0
    with farm.client("admin") as admin:
        while not stop.is_set():
            assert admin.post("/v2/models/web-digits/infer", json=body).status_code == 200
            sent += 1
            time.sleep(0.02)
    return sent


def test_every_page_as_a_picture(open_page, console_farm: ConsoleFarm, tmp_path: Path) -> None:
    out = ROOT / "docs" / "console" if os.environ.get("KCLOUD_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    with console_farm.client("admin") as admin:
        [replica] = admin.get("/api/v1/deployments/web-digits").json()["replica_list"]
    device = replica["device"]
    a, b = (quote(run, safe="") for run in console_farm.runs)
    stop = threading.Event()
    load = threading.Thread(target=_serve_traffic, args=(console_farm, stop), daemon=True)
    load.start()
    try:
        time.sleep(7)  # three sampler ticks with traffic: the live charts have lines
        for name, route in PAGES.items():
            page = open_page("admin", route.format(device=quote(device, safe=""), a=a, b=b,
                                                   twin=quote(console_farm.twin_run, safe="")))
            if name in ("device", "deployment", "run", "compare", "usage", "twin-run"):
                page.wait_for_function("() => !document.querySelector('.plot:empty')", timeout=30_000)
            page.wait_for_timeout(500)  # charts settle
            page.screenshot(path=str(out / f"{name}.png"), full_page=name not in ("devices", "deployment"))
    finally:
        stop.set()
        load.join(30)
    for name in PAGES:
        assert (out / f"{name}.png").stat().st_size > 10_000, name
