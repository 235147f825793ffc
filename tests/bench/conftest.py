"""Fixtures for the bench tests: the bundled models, a farm with emulated NPUs, a real `kcloud up`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bench_helpers import KCLOUD, free_port

from up_support import wait_until_ready


@pytest.fixture(scope="session")
def bench_models(builtin_repository):
    """The bundled models, built once for the session and linked into KCLOUD_HOME."""
    return builtin_repository


@pytest.fixture(scope="session")
def misfit_home(tmp_path_factory: pytest.TempPathFactory, bench_models) -> Path:
    """A KCLOUD_HOME whose `digits-misfit` model has a data set that does not fit its signature
    (images flattened to [N, 64] while the model takes [N, 1, 8, 8])."""
    from kcloud.models.repository import ModelRepository

    home = tmp_path_factory.mktemp("misfit-home")
    digits = bench_models.get("digits-cnn")
    source = home / "source"
    shutil.copytree(
        digits.model_dir, source, ignore=shutil.ignore_patterns("build.json", "graph-signature.json")
    )
    dataset = source / digits.config.accuracy.dataset
    with np.load(dataset) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["input.image"] = arrays["input.image"].reshape(len(arrays["reference"]), 64)
    np.savez(dataset, **arrays)
    ModelRepository(home / "models").add(source, name="digits-misfit")
    return home


@pytest.fixture(scope="module")
def gateway(bench_models) -> Iterator[str]:
    """`kcloud up` as a user runs it (a subprocess on a loopback port, one replica per model).

    The gateway asks for an API key: an operator's admin key is made first, and the bench
    commands find it in `$KCLOUD_API_KEY`, as a user's shell would hand it to them.
    """
    made = subprocess.run(
        [KCLOUD, "keys", "create-admin", "--name", "bench-tests"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    key = re.search(r"\bkc_\w+", made.stdout + made.stderr)
    assert key, made.stdout + made.stderr
    previous_key = os.environ.get("KCLOUD_API_KEY")
    os.environ["KCLOUD_API_KEY"] = key.group(0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        # the models the bench tests run; the chat model's engine would add ~40 s and serve nothing here
        [KCLOUD, "up", "--port", str(port), "--replicas", "1", "--model", "digits-cnn",
         "--model", "all-MiniLM-L6-v2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        if previous_key is None:
            os.environ.pop("KCLOUD_API_KEY", None)
        else:
            os.environ["KCLOUD_API_KEY"] = previous_key
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
