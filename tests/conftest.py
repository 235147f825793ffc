"""Fixtures shared by every test package.

- `kcloud_home` (session, autouse): KCLOUD_HOME points at a temporary directory, so no test
  reads or writes the user's ~/.kcloud.
- `builtin_repository` (session): the bundled models (MiniLM, digits-cnn, noop), really built.
  They are built once into pytest's cache directory and reused by later sessions while their
  sources are unchanged (`ensure_builtin_models` checks digests), then linked into the
  temporary home, so `kcloud up` run by a test finds them where it looks.
- `free_port`: a TCP port on 127.0.0.1 that was free a moment ago.
- `start_gateway` (module): starts the real gateway (uvicorn, replicas in worker processes)
  in a background thread on a free loopback port; stopped at the end of the module.
- `chromium_browser` (module): Debian's Chromium, headless, driven by Playwright (the console's
  pages).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def kcloud_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("kcloud-home")
    previous = os.environ.get("KCLOUD_HOME")
    os.environ["KCLOUD_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("KCLOUD_HOME", None)
    else:
        os.environ["KCLOUD_HOME"] = previous


@pytest.fixture(scope="session")
def builtin_repository(kcloud_home: Path, pytestconfig: pytest.Config):
    from kcloud.app.stack import prepare_repository
    from kcloud.models.repository import ModelRepository

    cached = Path(pytestconfig.cache.mkdir("kcloud-builtin-models"))
    prepare_repository(progress=False, root=cached)
    home_models = kcloud_home / "models"
    if not home_models.exists():
        home_models.symlink_to(cached, target_is_directory=True)
    return ModelRepository(home_models)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def start_gateway(builtin_repository) -> Iterator[Callable[..., object]]:
    """`start_gateway(**ServeOptions fields)` -> a started `BackgroundGateway` (stopped after the module).

    Defaults for tests: port 0 (the OS picks a free one), one replica per model, worker
    processes as in production.
    """
    from kcloud.app.background import BackgroundGateway
    from kcloud.app.options import ServeOptions

    started: list[BackgroundGateway] = []

    def start(*, repository=None, **options: object) -> BackgroundGateway:
        options.setdefault("port", 0)
        options.setdefault("replicas", 1)
        repository = repository or builtin_repository
        # An LLM engine takes ~30 s to start: tests that want one ask for it (tests/llm).
        options.setdefault("models", [e.name for e in repository.list() if not e.config.generative])
        gateway = BackgroundGateway(ServeOptions(**options), repository=repository)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        gateway.stop()


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[object]:
    """Debian's Chromium (`make test` installs it), headless, driven by Playwright; no download.

    Per module, not per session: Playwright's sync API keeps an event loop running in this thread
    while it is open, and every later test that calls `asyncio.run` would fail."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed for the console tests (`make test` installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()
