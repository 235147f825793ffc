"""Model files on a node: the head's path where the node has the same bytes, else a copy fetched
once into the node's cache and checked by SHA-256 (`kcloud.cluster.shipping`). The fetch stands
in for `ray.get` of the head's object ref; the cluster tests run the real one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kcloud.cluster.shipping import ShippingError, local_weights

MODEL = b"onnx bytes " * 1000
SHA = hashlib.sha256(MODEL).hexdigest()


class Fetch:
    def __init__(self, data: bytes = MODEL) -> None:
        self.data, self.calls = data, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def test_the_heads_path_is_used_where_the_node_has_the_same_bytes(tmp_path: Path):
    model = tmp_path / "model.onnx"
    model.write_bytes(MODEL)
    fetch = Fetch()
    assert local_weights(str(model), SHA, fetch, node="n1", cache=tmp_path / "cache") == str(model)
    assert fetch.calls == 0


def test_a_missing_or_different_file_is_fetched_once_and_kept(tmp_path: Path):
    missing = tmp_path / "elsewhere" / "model.onnx"
    fetch, cache = Fetch(), tmp_path / "cache"
    kept = local_weights(str(missing), SHA, fetch, node="n1", cache=cache)
    assert Path(kept).read_bytes() == MODEL and Path(kept).parent == cache / SHA and fetch.calls == 1
    assert local_weights(str(missing), SHA, fetch, node="n1", cache=cache) == kept and fetch.calls == 1
    other = tmp_path / "model.onnx"
    other.write_bytes(b"another version of the model")  # same path, other content: not used
    assert local_weights(str(other), SHA, fetch, node="n1", cache=cache) == kept
    Path(kept).write_bytes(b"torn")  # a torn copy is fetched again
    assert Path(local_weights(str(missing), SHA, fetch, node="n1", cache=cache)).read_bytes() == MODEL
    assert fetch.calls == 2


def test_bytes_that_do_not_match_or_a_failed_fetch_are_clear_errors(tmp_path: Path):
    missing = str(tmp_path / "model.onnx")
    with pytest.raises(ShippingError, match=r"fetched to node n1 does not match its SHA-256"):
        local_weights(missing, SHA, Fetch(b"tampered"), node="n1", cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / SHA / "model.onnx").exists()

    def head_gone() -> bytes:
        raise ConnectionError("the head's object store is unreachable")

    with pytest.raises(ShippingError, match=r"not on node n1, and fetching it from the head failed"):
        local_weights(missing, SHA, head_gone, node="n1", cache=tmp_path / "cache")


@pytest.mark.slow
def test_a_replica_host_without_the_file_serves_the_copy_shipped_through_ray(tmp_path: Path):
    """Real Ray (one local node on loopback): the actor is given a path that does not exist on its
    node, fetches the bytes from the driver's object store, keeps them, and serves the session."""
    import asyncio
    import sys

    import numpy as np
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtimes"))
    from synthetic_models import build_double, cpu_device

    from kcloud.cluster.host import ReplicaHost
    from kcloud.cluster.shipping import Shipments
    from kcloud.serving.worker import SocketWorker

    model = build_double(tmp_path / "head" / "double.onnx")
    node_home = tmp_path / "node-home"
    ray.init(_node_ip_address="127.0.0.1", num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"KCLOUD_HOME": str(node_home)}})
    try:
        sha, ref = Shipments().ship(model)
        host = ray.remote(ReplicaHost).options(num_cpus=0).remote()
        elsewhere = str(tmp_path / "not-on-this-node" / "double.onnx")
        address = ray.get(host.open.remote(elsewhere, cpu_device(), 1, {}, b"k" * 32, sha, [ref]))[:2]
        kept = node_home / "cluster-cache" / sha / "double.onnx"
        assert kept.read_bytes() == model.read_bytes()

        async def run() -> np.ndarray:
            worker = SocketWorker(model, cpu_device(), threads=1, address=address, authkey=b"k" * 32)
            await worker.start()
            try:
                computed = await worker.run({"x": np.ones((2, 4), np.float32)}, [(2, None)])
                return computed.outputs["y"]
            finally:
                await worker.close()

        np.testing.assert_array_equal(asyncio.run(run()), np.full((2, 4), 2, np.float32))
    finally:
        ray.shutdown()
