"""Serving on a Ray cluster: throughput under `RayExecutor`, deploy and recovery times (issue 16).

One run measures:

(a) throughput: MiniLM served by `kcloud cluster start` (replicas are Ray actors on the head's
    node; batches reach them over TCP) against the in-process ONNX Runtime limit, 64 clients,
    with `serving_throughput.py --server cluster`; and the same with `kcloud up` (the local
    executor), both in this run, so the two ratios compare on one machine state. Target:
    cluster ratio >= 0.85 (Ray Serve: 0.45 on this machine kind).
(b) membership: a head and 3 joined nodes on loopback (4 Ray nodes): seconds for each node to
    join (process start to its device listed healthy by the head); seconds from creating a
    MiniLM deployment of 4 replicas (spread) to 4 running; then one node is killed (every
    process of it, SIGKILL) and the seconds until its device is marked unhealthy and until the
    deployment runs 4 replicas again.

Everything binds to 127.0.0.1. Writes benchmarks/results/cluster_serving.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cluster_serving.json"
MINILM = "all-MiniLM-L6-v2"


def throughput(server: str, rounds: int) -> dict:
    """`serving_throughput.py` for one server kind; its JSON's headline figures."""
    out = HERE / "results" / f"cluster_serving_throughput_{server}.json"
    subprocess.run([sys.executable, str(HERE / "serving_throughput.py"), "--server", server,
                    "--rounds", str(rounds), "--out", str(out)], check=True, timeout=1800)
    result = json.loads(out.read_text())
    served = result["served"]
    return {
        "server": result["workload"]["server"],
        "json": str(out.relative_to(HERE.parent)),
        "ratio_served_to_limit": result["ratio_served_to_limit"],
        "ratio_quiet_rounds": result.get("ratio_quiet_rounds"),
        "cpu_normalised_ratio": result.get("cpu_normalised_ratio"),
        "served_requests_per_s_median": served["requests_per_s_median"],
        "p50_ms_by_round": served["p50_ms_by_round"],
        "p99_ms_by_round": served["p99_ms_by_round"],
    }


def membership(nodes: int, replicas: int) -> dict:
    from kcloud.app.stack import prepare_repository
    from kcloud.cluster.local import LocalCluster

    prepare_repository(progress=False)
    logs = Path(tempfile.mkdtemp(prefix="kcloud-bench-cluster-"))
    started = time.monotonic()
    cluster = LocalCluster.start(logs, head_args=["--model", "noop", "--replicas", "1"])
    head_s = time.monotonic() - started
    figures: dict = {"head_start_s": round(head_s, 2), "logs": str(logs)}
    try:
        joins = {}
        for index in range(1, nodes + 1):
            began = time.monotonic()
            cluster.join(f"n{index}")
            joins[f"n{index}"] = round(time.monotonic() - began, 2)
        figures["join_s"] = joins
        began = time.monotonic()
        cluster.deploy("bench-minilm", MINILM, replicas)
        cluster.wait_for(lambda: cluster.running("bench-minilm") == replicas, "the deployment to run")
        figures["deploy_to_ready_s"] = round(time.monotonic() - began, 2)
        victim = "n2"
        began = time.monotonic()
        cluster.kill(victim)
        unhealthy = cluster.wait_for(lambda: not cluster.device_healthy(f"{victim}/cpu0"), "n2 to be out")
        cluster.wait_for(lambda: cluster.running("bench-minilm") == replicas, "the deployment to recover")
        figures["node_killed"] = victim
        figures["node_marked_unhealthy_s"] = round(unhealthy, 2)
        figures["recovered_to_full_size_s"] = round(time.monotonic() - began, 2)
        events = cluster.events(deployment="bench-minilm")
        figures["events"] = [f"{e['kind']}: {e['message']}" for e in events]
    finally:
        cluster.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of serving_throughput.py per server")
    parser.add_argument("--nodes", type=int, default=3, help="nodes that join the head")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    import ray

    result: dict = {
        "benchmark": "cluster_serving",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "ray": ray.__version__,
                    "note": "one shared machine: every Ray node is a process group on 127.0.0.1"},
    }
    if not args.skip_throughput:
        print("(a) throughput: kcloud cluster start (RayExecutor)", file=sys.stderr)
        cluster = throughput("cluster", args.rounds)
        print("(a) throughput: kcloud up (LocalExecutor)", file=sys.stderr)
        local = throughput("up", args.rounds)
        result["throughput"] = {"cluster": cluster, "local": local, "target_cluster_ratio": 0.85}
    print(f"(b) membership: head + {args.nodes} nodes, {args.replicas} MiniLM replicas", file=sys.stderr)
    result["membership"] = membership(args.nodes, args.replicas)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
