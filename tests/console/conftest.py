"""Fixtures for the console tests: one real gateway on loopback (control plane, tenancy, the console)
over the K-Cloud phase-1 farm file, with real benchmark results, a real twin run, tenants and keys,
started once for the package (a gateway takes seconds); and pages of it in Debian's Chromium
(`chromium_browser` is in tests/conftest.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_support import DEPLOYMENTS, MARKUP, PHASE1, TWIN_PHASE1, ConsoleFarm
from typer.testing import CliRunner

from kcloud.app.background import BackgroundGateway
from kcloud.app.options import ServeOptions
from kcloud.cli import app


def _bench_runs(root: Path) -> list[str]:
    """Two real quick runs of `kcloud bench run` (digits-cnn on this machine's CPU, in process)."""
    runner = CliRunner()
    for scenario in ("Offline", "SingleStream"):
        out = root / scenario.lower()
        result = runner.invoke(app, ["bench", "run", "-m", "digits-cnn", "-s", scenario, "--quick",
                                     "--out", str(out)], env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("result.json"))


def _twin_run(root: Path) -> str:
    """One real `kcloud twin run` of the example phase-1 scenario (a minute of it simulated), written
    where the console reads twin runs."""
    result = CliRunner().invoke(app, ["twin", "run", str(TWIN_PHASE1), "--duration", "60", "--out",
                                      str(root / "phase1")], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return "phase1"


@pytest.fixture(scope="session")
def console_farm(builtin_repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFarm]:
    base = tmp_path_factory.mktemp("console")
    bench_root = base / "bench"
    runs = _bench_runs(bench_root)
    twin_run = _twin_run(base / "twin")
    announced: list[str] = []
    gateway = BackgroundGateway(
        ServeOptions(port=0, replicas=1, models=["noop"], isolation="thread", control_plane=True,
                     tenancy=True, db_url=f"sqlite:///{base / 'kcloud.db'}", farm_files=[PHASE1],
                     bench_results=bench_root, twin_results=base / "twin"),
        repository=builtin_repository, announce=announced.append,
    ).start()
    try:
        key = re.search(r"export KCLOUD_API_KEY=(kc_\S+)", "\n".join(announced))
        assert key, announced
        farm = ConsoleFarm(gateway.url, bench_root, {"admin": key.group(1)}, runs, twin_run)
        with farm.client("admin") as admin:
            for tenant in ("alpha", "beta"):
                body = {"name": tenant, "description": f"{tenant} {MARKUP}"}
                made = admin.post("/api/v1/tenants", json=body)
                assert made.status_code == 201, made.text
            for who, body in {
                "alpha": {"tenant": "alpha", "name": f"alpha app {MARKUP}"},
                "alpha-readonly": {"tenant": "alpha", "name": "alpha viewer", "role": "readonly"},
                "beta": {"tenant": "beta", "name": "beta app"},
            }.items():
                made = admin.post("/api/v1/keys", json=body)
                assert made.status_code == 201, made.text
                farm.keys[who] = made.json()["key"]
            for name, (model, tenant) in DEPLOYMENTS.items():
                body = {"model": model, "name": name, "replicas": 1, "tenant": tenant}
                made = admin.post("/api/v1/deployments", json=body)
                assert made.status_code == 201 and made.json()["name"] == name, made.text
        yield farm
    finally:
        gateway.stop()


@pytest.fixture
def open_page(chromium_browser, console_farm: ConsoleFarm):
    """`open_page(who, route)` -> a Playwright page of the console at `#/route`, signed in as `who`
    (its key already in the tab's session storage, as after a sign-in), drawn (`data-ready`)."""
    contexts = []

    def open_(who: str | None, route: str = "overview", ready: str | None = None):
        context = chromium_browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        if who is not None:
            key = json.dumps(console_farm.keys[who])
            context.add_init_script(f"sessionStorage.setItem('kcloud.key', {key});")
        page = context.new_page()
        page.goto(f"{console_farm.url}/ui/#/{route}")
        if who is not None:
            name = ready or route.split("/")[0]
            page.wait_for_selector(f"#page-{name}[data-ready]", state="attached", timeout=30_000)
        return page

    yield open_
    for context in contexts:
        context.close()
