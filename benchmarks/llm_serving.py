"""LLM serving through the kcloud gateway against the same vLLM engine called directly, and
prefix-aware routing against round-robin (issue 15, "Speed").

(a) overhead: one gateway (its own process, as a user runs it) serving the bundled chat model
    (SmolLM2-135M-Instruct on the vLLM CPU engine, one replica). A fixed prompt set is streamed
    at 1, 8 and 32 concurrent streams (64 output tokens each, `ignore_eos` so every stream is
    the same length, greedy), alternately to the gateway and to the engine's own port, in
    rounds. Per phase: output tokens/s, TTFT p50/p99, inter-token p50. Per concurrency: the
    median over rounds of gateway/direct throughput (target >= 0.95) and of the TTFT p50 the
    gateway adds (target <= 5 ms), measured two ways: the difference of the two sides' client
    TTFT p50s (end to end, but the engine's own round-to-round noise is larger than the target),
    and the gateway's own sensor of its part of each stream's first token
    (`kcloud_llm_gateway_first_token_seconds`: arrival to sending, plus the first event's relay),
    read from its /metrics around each gateway phase.
(b) routing: a gateway with two engine replicas (the cores shared between them), once with
    `token_policy = "prefix"` and once with "round-robin", under a shared-system-prompt workload:
    16 long system prompts (~1,400 tokens each), each followed by 4 user questions, asked
    question-major (every prompt's first question in a shuffled order, then every second one,
    ...) at 4 concurrent streams. Round-robin sends a prompt's later questions to the engine
    that has not seen it; prefix routing to the one that has. TTFT p50/p99, output tokens/s,
    and the engines' own prefix-cache hit rate for both.

The client is an aiohttp streaming client in this process; the gateway and its engines run in
a child process, so the client's CPU is not the gateway's. Everything binds to 127.0.0.1.

Writes benchmarks/results/llm_serving.json and prints it.

    python benchmarks/llm_serving.py            # full run (~20 min on 2 cores)
    python benchmarks/llm_serving.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL = "SmolLM2-135M-Instruct"

QUESTIONS = [
    "Name three uses of a neural processing unit.",
    "Explain what a key-value cache does in one paragraph.",
    "Write a haiku about data centres.",
    "What is the difference between latency and throughput?",
    "Give two reasons to batch inference requests.",
    "Summarise the idea of continuous batching.",
    "List four Korean cities.",
    "Why does quantisation make models faster?",
]


# ------------------------------------------------------------------------------ gateway child
def serve_child(policy: str, replicas: int, info_file: Path) -> None:
    """Run a gateway with the chat model (in the child process) until stdin closes."""
    from kcloud.app.background import BackgroundGateway
    from kcloud.app.options import ServeOptions
    from kcloud.app.stack import prepare_repository
    from kcloud.serving.engine import EngineReplica

    repository = prepare_repository(progress=False)
    options = ServeOptions(port=0, models=[MODEL], replicas=replicas, token_policy=policy)  # type: ignore[arg-type]
    gateway = BackgroundGateway(options, repository=repository, start_timeout_s=900).start()
    assert gateway.stack is not None
    engines = [r.base_url for r in gateway.stack.router.replicas(MODEL) if isinstance(r, EngineReplica)]
    info_file.write_text(json.dumps({"url": gateway.url, "engines": engines, "pid": os.getpid()}))
    sys.stdin.read()
    gateway.stop()


class Gateway:
    def __init__(self, policy: str, replicas: int, home: Path) -> None:
        self.info_file = home / f"gateway-{policy}-{replicas}.json"
        self.info_file.unlink(missing_ok=True)
        env = os.environ | {"KCLOUD_HOME": str(home)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", policy, str(replicas), str(self.info_file)],
            stdin=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + 900
        while not self.info_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start in 15 minutes")
            time.sleep(0.5)
        info = json.loads(self.info_file.read_text())
        self.url: str = info["url"]
        self.engines: list[str] = info["engines"]

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ------------------------------------------------------------------------------ client
@dataclass
class StreamResult:
    ttft_s: float
    total_s: float
    tokens: int
    gaps_s: list[float]


async def one_stream(
    session: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int
) -> StreamResult:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    end = time.perf_counter()
    return StreamResult((first or end) - started, end - started, tokens, gaps)


async def run_load(url: str, prompts: list[list[dict]], concurrency: int, max_tokens: int) -> dict:
    """Every prompt once, `concurrency` streams at a time; figures for the phase."""
    queue: asyncio.Queue[list[dict]] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    results: list[StreamResult] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def worker() -> None:
            while not queue.empty():
                results.append(await one_stream(session, url, queue.get_nowait(), max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ttfts = sorted(r.ttft_s for r in results)
    gaps = sorted(g for r in results for g in r.gaps_s)
    return {
        "requests": len(results),
        "output_tokens": sum(r.tokens for r in results),
        "wall_s": wall,
        "output_tokens_per_s": sum(r.tokens for r in results) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "inter_token_p50_ms": 1000 * statistics.median(gaps) if gaps else None,
    }


def chat(question: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}]


async def prefix_hits(engines: list[str]) -> dict[str, float]:
    """The engines' own prefix-cache counters, summed (vLLM's /metrics)."""
    totals = {"queries": 0.0, "hits": 0.0}
    async with aiohttp.ClientSession() as session:
        for engine in engines:
            async with session.get(engine + "/metrics") as response:
                for line in (await response.text()).splitlines():
                    for key in totals:
                        if line.startswith(f"vllm:prefix_cache_{key}_total"):
                            totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def system_prompts(count: int, words: int) -> list[str]:
    """`count` distinct long system prompts (~1.3 tokens a word)."""
    prompts = []
    for index in range(count):
        body = " ".join(
            f"rule{index}-{w} applies to service {index} clause {w % 17}." for w in range(words // 6)
        )
        prompts.append(f"You are assistant number {index} of the K-Cloud farm. {body}")
    return prompts


# ------------------------------------------------------------------------------ phases
FIRST_TOKEN = "kcloud_llm_gateway_first_token_seconds"


async def first_token_sensor(url: str) -> tuple[dict[float, float], float, float]:
    """The gateway's first-token histogram for MODEL now: (bucket bound -> cumulative count, sum, count)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        text = await response.text()
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != FIRST_TOKEN:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != MODEL:
                continue
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return buckets, total, count


def sensor_figures(before: tuple[dict[float, float], float, float],
                   after: tuple[dict[float, float], float, float]) -> dict:
    """The gateway's own first-token part over one phase: mean (exact) and p50/p99 (from buckets)."""
    from kcloud.console.live import window_ms

    streams = after[2] - before[2]
    return {
        "streams": streams,
        "mean_ms": 1000 * (after[1] - before[1]) / streams if streams else None,
        "p50_ms": window_ms(0.5, before[0], after[0]),
        "p99_ms": window_ms(0.99, before[0], after[0]),
    }


def overhead(home: Path, concurrencies: list[int], rounds: int, max_tokens: int, requests: int) -> dict:
    gateway = Gateway("prefix", 1, home)
    try:
        direct_url = gateway.engines[0]
        phases: dict[str, list[dict]] = {}
        for concurrency in concurrencies:
            # At least `requests` per phase (two per stream at high concurrency): TTFT is a median.
            prompts = [chat(QUESTIONS[i % len(QUESTIONS)]) for i in range(max(requests, 2 * concurrency))]
            for url in (direct_url, gateway.url):  # warm-up, both sides
                asyncio.run(run_load(url, prompts[:concurrency], concurrency, max_tokens))
            for round_index in range(rounds):
                for side, url in (
                    (("direct", direct_url), ("gateway", gateway.url))
                    if round_index % 2 == 0
                    else (("gateway", gateway.url), ("direct", direct_url))
                ):
                    sensor = asyncio.run(first_token_sensor(gateway.url))
                    figures = asyncio.run(run_load(url, prompts, concurrency, max_tokens))
                    if side == "gateway":
                        figures["gateway_first_token"] = sensor_figures(
                            sensor, asyncio.run(first_token_sensor(gateway.url)))
                    figures.update(side=side, round=round_index, concurrency=concurrency)
                    phases.setdefault(str(concurrency), []).append(figures)
                    print(json.dumps(figures), flush=True)
        summary = {}
        for concurrency, runs in phases.items():
            ratios, added, sensed_p50, sensed_mean = [], [], [], []
            for round_index in range(rounds):
                pair = {r["side"]: r for r in runs if r["round"] == round_index}
                ratios.append(pair["gateway"]["output_tokens_per_s"] / pair["direct"]["output_tokens_per_s"])
                added.append(pair["gateway"]["ttft_p50_ms"] - pair["direct"]["ttft_p50_ms"])
                sensed = pair["gateway"]["gateway_first_token"]  # every stream of a phase reports one
                sensed_p50.append(sensed["p50_ms"])
                sensed_mean.append(sensed["mean_ms"])
            summary[concurrency] = {
                "throughput_ratio_median": statistics.median(ratios),
                "ttft_p50_added_ms_median": statistics.median(added),
                "gateway_first_token_p50_ms_median": statistics.median(sensed_p50),
                "gateway_first_token_mean_ms_median": statistics.median(sensed_mean),
                "ratios": ratios,
                "ttft_added_ms": added,
                "gateway_first_token_p50_ms": sensed_p50,
                "target": "ratio >= 0.95 and added TTFT p50 <= 5 ms",
            }
        return {"summary": summary, "phases": phases}
    finally:
        gateway.stop()


def routing(home: Path, prefixes: int, words: int, questions: int, concurrency: int, max_tokens: int) -> dict:
    out: dict[str, dict] = {}
    for policy in ("prefix", "round-robin"):
        gateway = Gateway(policy, 2, home)
        try:
            # Fresh prefixes per policy (the engines are new too). Question-major, and within each
            # round of questions the prompts in a shuffled order (the same for both policies), as
            # users arrive: a fixed order would let round-robin send a prompt to the same engine
            # every time by accident (an even number of prompts on two engines).
            systems = [f"[{policy}] {s}" for s in system_prompts(prefixes, words)]
            shuffle = random.Random(7)
            prompts = []
            for q in range(questions):
                order = list(range(prefixes))
                shuffle.shuffle(order)
                prompts += [chat(QUESTIONS[(q + p) % len(QUESTIONS)], systems[p]) for p in order]
            before = asyncio.run(prefix_hits(gateway.engines))
            figures = asyncio.run(run_load(gateway.url, prompts, concurrency, max_tokens))
            after = asyncio.run(prefix_hits(gateway.engines))
            queries = after["queries"] - before["queries"]
            figures["engine_prefix_cache_hit_rate"] = (
                (after["hits"] - before["hits"]) / queries if queries else None
            )
            figures.update(
                policy=policy, prefixes=prefixes, questions_per_prefix=questions, concurrency=concurrency
            )
            out[policy] = figures
            print(json.dumps(figures), flush=True)
        finally:
            gateway.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--skip-routing", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_serving.json")
    args = parser.parse_args()
    if args.serve_child:
        policy, replicas, info = args.serve_child
        serve_child(policy, int(replicas), Path(info))
        return
    quick = args.quick
    home = Path(os.environ.get("KCLOUD_HOME") or tempfile.mkdtemp(prefix="kcloud-llm-bench-"))
    result: dict[str, object] = {
        "benchmark": "llm_serving",
        "model": MODEL,
        "engine": "vLLM (CPU build, eager), one replica per engine process",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not args.skip_overhead:
        result["overhead"] = overhead(
            home, [1, 8] if quick else [1, 8, 32], 2 if quick else 3, 16 if quick else 64, 4 if quick else 8
        )
    if not args.skip_routing:
        result["routing"] = routing(
            home, 8 if quick else 16, 300 if quick else 600, 3 if quick else 4, 4, 8 if quick else 16
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "overhead"}
            | {"overhead_summary": result.get("overhead", {}).get("summary")},
            indent=2,
        )
    )  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
