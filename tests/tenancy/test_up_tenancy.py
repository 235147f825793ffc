"""Tenancy in `kcloud up` as a user runs it (a real subprocess on a loopback port, the embedded
SQLite database in a fresh kcloud home): the admin key printed at the first start only, every
route behind it, and `--insecure-no-auth` announced loudly."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
KEY_LINE = re.compile(r"export KCLOUD_API_KEY=(kc_\S+)")
#: The ONNX models only: the chat model's engine would add ~40 s to each start and test nothing here.
SMALL_MODELS = ("--model", "all-MiniLM-L6-v2", "--model", "digits-cnn", "--model", "noop")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def home(builtin_repository, tmp_path) -> Path:
    """A fresh kcloud home (new database, new server secret) with the bundled models linked in."""
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    for entry in builtin_repository.list():
        (models / entry.name).symlink_to(entry.model_dir.resolve(), target_is_directory=True)
    return tmp_path / "home"


class Up:
    """`kcloud up` until it prints "Press Ctrl-C", then stopped with SIGINT."""

    def __init__(self, home: Path, *args: str) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        env = {"PATH": str(Path(sys.executable).parent), "KCLOUD_HOME": str(home), "COLUMNS": "200"}
        self.process = subprocess.Popen(
            [KCLOUD, "up", "--port", self.url.rsplit(":", 1)[1], "--replicas", "1", "--isolation", "thread",
             *SMALL_MODELS, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: list[str] = []
        timer = threading.Timer(180, self.process.kill)
        timer.start()
        try:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if "Press Ctrl-C to stop." in line:
                    break
        finally:
            timer.cancel()
        if self.process.poll() is not None:
            pytest.fail("kcloud up exited:\n" + "".join(self.lines))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        rest, _ = self.process.communicate(timeout=90)
        assert self.process.returncode == 0, self.output + rest
        return self.output + rest


def test_first_start_prints_the_admin_key_once_and_every_route_needs_a_key(home):
    first = Up(home)
    try:
        keys = KEY_LINE.findall(first.output)
        assert len(keys) == 1, first.output
        key = keys[0]
        assert 'curl -s -H "Authorization: Bearer $KCLOUD_API_KEY"' in first.output
        assert f"Web console                 {first.url}/ui/  (sign in with an API key)" in first.output
        console_page = httpx.get(f"{first.url}/ui/")
        assert console_page.status_code == 200 and "kcloud console" in console_page.text
        assert httpx.get(f"{first.url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{first.url}/v1/models").status_code == 401
        listed = httpx.get(f"{first.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert {m["id"] for m in listed.json()["data"]} == {"all-MiniLM-L6-v2", "digits-cnn", "noop"}
    finally:
        first.stop()
    second = Up(home)
    try:
        assert "kc_" not in second.output  # never printed again
        whoami = httpx.get(f"{second.url}/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert whoami.json()["role"] == "admin"  # and still valid after a restart
    finally:
        second.stop()


def test_insecure_no_auth_is_loud(home):
    up = Up(home, "--insecure-no-auth")
    try:
        assert "INSECURE" in up.output  # the banner's title
        assert "WARNING kcloud.tenancy.service: AUTHENTICATION IS OFF" in up.output  # and the log
        assert "kc_" not in up.output
        assert f"Web console                 {up.url}/ui/\n" in up.output  # no key to sign in with
        response = httpx.get(f"{up.url}/v1/models")
        assert response.status_code == 200 and response.headers["x-kcloud-insecure"] == "auth-disabled"
    finally:
        up.stop()
