"""A real kcloud cluster on loopback, started as a user starts one (`kcloud.cluster.local`):
`kcloud cluster start` and three `kcloud cluster join` processes. Shared by the tests of one
module: starting it costs ~15 s on 2 cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kcloud.cluster.local import ClusterWaitError, LocalCluster


@pytest.fixture(scope="module")
def cluster(builtin_repository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Head (gateway + control plane + Ray head, serving digits-cnn) and nodes n1, n2, n3."""
    logs = tmp_path_factory.mktemp("cluster-logs")
    try:
        started = LocalCluster.start(logs, head_args=["--model", "digits-cnn", "--replicas", "1",
                                                      "--db", f"sqlite:///{logs / 'kcloud.db'}"])
    except ClusterWaitError as exc:
        pytest.fail(str(exc))
    try:
        for name in ("n1", "n2", "n3"):
            started.join(name)
        yield started
    finally:
        started.stop()
