"""`kcloud up` as a user runs it: a real subprocess on a loopback port."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from up_support import wait_until_ready

KCLOUD = str(Path(sys.executable).with_name("kcloud"))
FARM = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"


@pytest.fixture
def home_with_an_unplaceable_model(builtin_repository, tmp_path) -> Path:
    """A KCLOUD_HOME with the bundled models plus `npu-only`, which may not run on a CPU."""
    from kcloud.models.repository import ModelRepository

    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    for entry in builtin_repository.list():
        (models / entry.name).symlink_to(entry.model_dir.resolve(), target_is_directory=True)
    noop = builtin_repository.get("noop")
    source = tmp_path / "npu-only"
    (source / "1").mkdir(parents=True)
    (source / "1" / "model.onnx").write_bytes(noop.weights_path.read_bytes())
    (source / "config.toml").write_text(
        'name = "npu-only"\ndevice_kinds = ["npu"]\n'
        '[[inputs]]\nname = "input"\ndatatype = "FP32"\nshape = [-1, 16]\n'
        '[[outputs]]\nname = "output"\ndatatype = "FP32"\nshape = [-1, 16]\n'
    )
    ModelRepository(models).add(source)
    return tmp_path / "home"


def _admin_key(home: Path) -> str:
    """`kcloud up` asks every route but health for an API key: make one as an operator would."""
    done = subprocess.run([KCLOUD, "keys", "create-admin", "--name", "test_up"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KCLOUD_HOME": str(home)}, check=True)
    match = re.search(r"\bkc_\w+", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    return match.group(0)


@pytest.mark.slow
def test_up_serves_the_bundled_models_and_stops_cleanly(home_with_an_unplaceable_model, free_port,
                                                         builtin_repository):
    url = f"http://127.0.0.1:{free_port}"
    env = {**os.environ, "COLUMNS": "200", "KCLOUD_HOME": str(home_with_an_unplaceable_model)}
    auth = {"Authorization": f"Bearer {_admin_key(home_with_an_unplaceable_model)}"}
    process = subprocess.Popen(
        [KCLOUD, "up", "--port", str(free_port), "--replicas", "1", "--farm", str(FARM)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_until_ready(url, process, timeout_s=300)  # the bundled chat model's engine starts in ~30 s
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) >= 3  # one worker process per bundled model
        models = {m["id"] for m in httpx.get(f"{url}/v1/models", headers=auth).json()["data"]}
        chat = {e.name for e in builtin_repository.list() if e.config.generative}  # with the [llm] extra
        assert models == {"all-MiniLM-L6-v2", "digits-cnn", "noop"} | chat  # not npu-only
        for name in chat:  # the bundled chat model answers out of the box
            reply = httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=60, json={
                "model": name, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1, reply.text
        request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["up, serving"]}]}
        answer = httpx.post(f"{url}/v2/models/all-MiniLM-L6-v2/infer", json=request, headers=auth)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 384]
        metrics = httpx.get(f"{url}/metrics", headers=auth).text
        assert 'emulated="true"' in metrics  # the farm file's devices are metered
        assert 'emulated="false"' in metrics  # and this machine's CPU
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    for path in ("/v2", "/v1", "/metrics", "/docs"):
        assert f"{url}{path}" in out
    assert "kcloud stopped." in out
    warning = " ".join((out + err).split())
    assert "npu-only v1 is not served" in warning and "npu" in warning
    _, alive = psutil.wait_procs(workers, timeout=10)  # the workers end with the server, not later
    assert not alive, [p.cmdline() for p in alive]
    # the printed curl example is a real, working request
    example = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
    assert "/infer" in example
    if chat:
        lines = [line.strip() for line in out.splitlines()]
        assert any(line.startswith("curl -sN") and "/v1/chat/completions" in line for line in lines)


def test_printed_curl_example_works(start_gateway):
    from kcloud.app.serve import curl_example

    gateway = start_gateway(models=["all-MiniLM-L6-v2"])
    example = curl_example(gateway.url, gateway.stack.entries)
    assert example is not None
    done = subprocess.run(shlex.split(example), capture_output=True, text=True, timeout=60, check=True)
    assert '"name":"embedding"' in done.stdout and '"shape":[1,384]' in done.stdout


def test_port_in_use_is_one_clear_line_and_exit_2(builtin_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([KCLOUD, "up", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"port {port}" in lines[0] and "already in use" in lines[0]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--farm", "/nonexistent/farm.toml"], "not found"),
        (["--replicas", "0"], "--replicas"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
        (["--isolation", "container"], "--isolation"),
    ],
)
def test_bad_options_are_refused_without_a_traceback(free_port, args, words):
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_address_not_on_this_machine_is_one_clear_line(builtin_repository, free_port):
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port), "--host", "192.0.2.1", "--model", "noop"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cannot listen on 192.0.2.1:{free_port}:" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stdout + done.stderr


def test_a_broken_model_directory_is_named_not_blamed_on_the_port(tmp_path, free_port):
    """A dangling symlink where a bundled model goes: the error names the file, not the listen address."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "noop").symlink_to(tmp_path / "gone")
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port), "--model", "noop"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "KCLOUD_HOME": str(tmp_path)})
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "kcloud could not start: Not a directory:" in said and str(tmp_path / "models" / "noop") in said
    assert "listen" not in said and "Traceback" not in said


def test_an_unknown_model_is_refused_before_anything_starts(builtin_repository, free_port):
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port), "--model", "nope"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model 'nope' not found" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stdout + done.stderr


def test_serving_named_models_builds_only_those_bundled_models(tmp_path):
    """`kcloud up --model noop` builds the no-op model and nothing else (no chat model conversion)."""
    from kcloud.app.stack import prepare_repository

    repository = prepare_repository(progress=False, root=tmp_path / "models", models=["noop", "not-bundled"])
    assert [entry.name for entry in repository.list()] == ["noop"]
    assert prepare_repository(progress=False, root=tmp_path / "empty", models=[]).list() == []


def test_replica_layout_follows_the_runtime_or_the_option(builtin_repository):
    from kcloud.app.stack import local_cpu, replica_layout
    from kcloud.devices.inventory import Inventory
    from kcloud.runtimes import default_layout, host_cores

    cpu = local_cpu(Inventory.build((), include_local=True))
    assert replica_layout(cpu, None) == default_layout(cpu, host_cores())
    assert replica_layout(cpu, 1) == (1, host_cores())  # one replica gets every core
    assert replica_layout(cpu, 4 * host_cores()) == (4 * host_cores(), 1)
    with pytest.raises(ValueError, match="replicas"):
        replica_layout(cpu, 0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KCLOUD_USAGE_FLUSH_MS", "soon"), ("KCLOUD_USAGE_FLUSH_MS", "0"), ("KCLOUD_USAGE_DURABILITY", "maybe")],
)
def test_bad_usage_settings_are_one_clear_line_before_anything_starts(free_port, tmp_path, variable, value):
    env = {**os.environ, "KCLOUD_HOME": str(tmp_path), variable: value}
    done = subprocess.run([KCLOUD, "up", "--port", str(free_port)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2
    assert variable in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "models").exists()  # refused before any model was built
