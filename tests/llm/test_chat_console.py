"""The console's chat-model figures from a real vLLM CPU engine, in Debian's Chromium: a tenant's
chat deployment under load shows its engine's time to first token and tokens per second, on the
chat models page and on the deployment's page; the tenant sees only its own chat model."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_support import TENANT, TENANT_DEPLOYMENT, ChatFarm

from kcloud.models.builtin import SMOLLM

pytestmark = pytest.mark.slow

SERVED = f"{TENANT}:{TENANT_DEPLOYMENT}"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tenant_load(chat_farm: ChatFarm) -> Iterator[None]:
    """Two clients asking the tenant's chat model for 24 tokens each, back to back, until the test ends."""
    stop = threading.Event()

    def ask() -> None:
        with chat_farm.client(chat_farm.tenant_key) as client:
            while not stop.is_set():
                client.post("/v1/chat/completions", json={
                    "model": TENANT_DEPLOYMENT, "max_tokens": 24, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "Count from one to twenty."}]})

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join(120)


def wait_for_figures(chat_farm: ChatFarm, timeout_s: float = 90) -> dict[str, Any]:
    """The tenant's chat row once its engine reports tokens per second and a time to first token."""
    deadline = time.monotonic() + timeout_s
    with chat_farm.client(chat_farm.tenant_key) as tenant:
        while True:
            rows = tenant.get("/api/v1/console/chat").json()["deployments"]
            now = rows[0]["now"] if rows else None
            if now and now["output_tokens_per_s"] and now["ttft_p50_ms"] is not None:
                return {"rows": rows, "now": now}
            assert time.monotonic() < deadline, f"no engine figures after {timeout_s:.0f} s: {rows}"
            time.sleep(1)


def test_a_chat_models_figures_in_the_console(
    chat_farm: ChatFarm, chromium_browser, tenant_load, tmp_path: Path
) -> None:
    """Also draws docs/console/chat.png with `KCLOUD_UPDATE_SCREENSHOTS=1` (see the console's
    screenshot test)."""
    pictures = ROOT / "docs" / "console" if os.environ.get("KCLOUD_UPDATE_SCREENSHOTS") == "1" else tmp_path
    seen = wait_for_figures(chat_farm)
    assert [r["deployment"] for r in seen["rows"]] == [SERVED]  # the tenant's own chat model only
    row = seen["rows"][0]
    assert row["engine"] == "vllm" and row["running"] == 1
    assert seen["now"]["engines_reporting"] == 1 and seen["now"]["ttft_p50_ms"] > 0
    with chat_farm.client() as admin:
        every = admin.get("/api/v1/console/chat").json()["deployments"]
        assert {r["deployment"] for r in every} == {SMOLLM, SERVED}

    context = chromium_browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(f"sessionStorage.setItem('kcloud.key', {json.dumps(chat_farm.tenant_key)});")
        page = context.new_page()
        page.goto(f"{chat_farm.url}/ui/#/chat")
        page.wait_for_selector("#page-chat[data-ready]", state="attached", timeout=30_000)
        assert page.locator("#nav-chat").count() == 1
        cells = f'#chat-models tr[data-deployment="{SERVED}"] td'
        # output tokens/s and TTFT p50 (columns 7 and 9) filled in from the engine's own figures
        page.wait_for_function(
            "sel => { const c = document.querySelectorAll(sel); return c.length > 8 && c[6].textContent && "
            "c[8].textContent; }", arg=cells, timeout=30_000)
        assert page.locator("#chat-models tbody tr").count() == 1
        page.screenshot(path=str(pictures / "chat.png"))
        page.click(f"{cells} a")
        page.wait_for_selector("#page-deployment[data-ready]", state="attached", timeout=30_000)
        page.wait_for_selector("#chart-ttft .main-svg", timeout=30_000)  # the engine's charts drawn
        page.wait_for_selector("#chart-tokens .main-svg", timeout=30_000)
        assert page.locator("#main .error").count() == 0
        page.locator("#engine-plots").screenshot(path=str(pictures / "chat-deployment.png"))
    finally:
        context.close()
