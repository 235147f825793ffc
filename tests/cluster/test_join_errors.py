"""Bad input to `kcloud cluster join` and `kcloud cluster start`: one clear line, exit code 2,
nothing started. (A node or device name already in a running cluster: test_cluster.py.)"""

from __future__ import annotations

import socket
import subprocess

import pytest

from kcloud.cluster.local import KCLOUD
from kcloud.cluster.ray_node import ClusterError, check_versions, split_address


def kcloud(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KCLOUD, *args], capture_output=True, text=True, timeout=120)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_joining_a_head_that_does_not_answer():
    port = closed_port()
    result = kcloud("cluster", "join", f"127.0.0.1:{port}", "--node", "lonely")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no Ray head answers at 127.0.0.1:{port}" in result.stderr
    assert "kcloud cluster start" in result.stderr


@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "127.0.0.1:70000", ":"])
def test_a_malformed_head_address(address: str):
    result = kcloud("cluster", "join", address)
    assert result.returncode == 2
    assert "not a head address" in result.stderr


def test_a_farm_file_that_does_not_exist(tmp_path):
    result = kcloud("cluster", "join", "127.0.0.1:6379", "--farm", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "missing.toml" in result.stderr and "file not found" in result.stderr


def test_a_head_address_that_is_not_an_ip():
    result = kcloud("cluster", "start", "--node-ip-address", "my-laptop")
    assert result.returncode == 2
    assert "--node-ip-address must be an IP address" in result.stderr


def test_split_address_defaults_to_rays_port():
    assert split_address("10.0.0.5") == ("10.0.0.5", 6379)
    assert split_address("10.0.0.5:6380") == ("10.0.0.5", 6380)


# What a Ray 2.60.0 head on Python 3.11.7 returned from its GCS for `get_cluster_metadata`
# (recorded here; only these two fields are compared).
HEAD_METADATA = {"ray_version": "2.60.0", "python_version": "3.11.7", "os": "linux"}


def test_the_same_versions_join():
    import ray

    if ray.__version__ != HEAD_METADATA["ray_version"]:
        pytest.skip(f"recorded for Ray {HEAD_METADATA['ray_version']}, this is {ray.__version__}")
    check_versions(HEAD_METADATA)


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("ray_version", "2.9.3", "Ray 2.9.3"),
    ("python_version", "3.10.12", "Python 3.10"),
])
def test_a_ray_or_python_version_unlike_the_heads_is_refused(field: str, value: str, shown: str):
    with pytest.raises(ClusterError, match="version mismatch") as refused:
        check_versions(HEAD_METADATA | {field: value})
    assert shown in str(refused.value) and "install the same versions" in str(refused.value)
