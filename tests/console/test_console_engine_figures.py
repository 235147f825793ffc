"""The console's chat-model figures: engine metrics scraped over real HTTP (`EngineMetrics`), turned
into per-tick TTFT, inter-token latency and tokens per second per deployment (`LiveFigures`).

The engines are played by `fake_engines.FakeEngines`, answering vLLM's metric names; the page itself
is driven against a real vLLM engine in tests/llm/test_chat_console.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from fake_engines import FakeEngines
from kcloud.console.live import LiveFigures
from kcloud.serving.engine_metrics import EngineMetrics


def vllm_text(*, generated: int, prompt: int, finished: int, ttft: tuple[int, int, int],
              itl: tuple[int, int], running: int = 2, waiting: int = 1, kv: float = 0.25) -> str:
    """A vLLM /metrics answer, one family after another as vLLM 0.32 writes them (a counter's TYPE
    line names it with `_total`, as in tests/serving/recorded/): `ttft` counts in
    (0, 0.1], (0.1, 0.5], (0.5, inf) s; `itl` in (0, 0.05], (0.05, inf) s; two engine indices (data
    parallel), each with half of every figure, whose series kcloud merges."""
    engines = [f'model_name="m",engine="{engine}"' for engine in ("0", "1")]

    def family(name: str, kind: str, value: float, extra: str = "") -> list[str]:
        return [f"# TYPE {name} {kind}", *(f"{name}{{{labels}{extra}}} {value}" for labels in engines)]

    def histogram(name: str, bounds: tuple[str, ...], counts: tuple[int, ...]) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        for labels in engines:
            cumulative = 0.0
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count / 2
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
            lines += [f"{name}_count{{{labels}}} {cumulative}", f"{name}_sum{{{labels}}} 1.0"]
        return lines

    return "\n".join([
        *family("vllm:generation_tokens_total", "counter", generated / 2),
        *family("vllm:prompt_tokens_total", "counter", prompt / 2),
        *family("vllm:request_success_total", "counter", finished / 2, ',finished_reason="stop"'),
        *family("vllm:num_requests_running", "gauge", running / 2),
        *family("vllm:num_requests_waiting", "gauge", waiting / 2),
        *family("vllm:kv_cache_usage_perc", "gauge", kv),
        *histogram("vllm:time_to_first_token_seconds", ("0.1", "0.5", "+Inf"), ttft),
        *histogram("vllm:inter_token_latency_seconds", ("0.05", "+Inf"), itl),
    ]) + "\n"


@pytest.fixture(scope="module")
def engines() -> Iterator[FakeEngines]:
    with FakeEngines() as server:
        yield server


def figures(engine_metrics: EngineMetrics) -> LiveFigures:
    return LiveFigures(devices=list, sample=lambda d: None, device_views=list,  # type: ignore[arg-type,return-value]
                       metrics=None, engines=engine_metrics, tick_s=1.0)


def scrape_and_tick(engine_metrics: EngineMetrics, live: LiveFigures) -> None:
    asyncio.run(engine_metrics.scrape_once())
    live.tick()


def test_a_chat_deployments_engine_figures_per_tick(engines: FakeEngines) -> None:
    engine_metrics = EngineMetrics(CollectorRegistry())
    url = engines.set("a", vllm_text(generated=1000, prompt=400, finished=10, ttft=(10, 0, 0), itl=(900, 0)))
    engine_metrics.watch("chat-r1", deployment="acme:chat", device="node/cpu0", url=url, engine="vllm")
    live = figures(engine_metrics)
    scrape_and_tick(engine_metrics, live)
    assert live.engine_names == {"acme:chat": "vllm"}
    [first] = live.engine_series["acme:chat"].points
    assert first["output_tokens_per_s"] is None and first["ttft_p50_ms"] is None  # a rate needs two scrapes
    assert (first["running"], first["waiting"], first["kv_cache_usage"]) == (2, 1, 0.25)  # summed; a mean

    # Over the next scrape interval: 600 tokens out, 200 in, 4 requests finished; their first tokens
    # took 0.1–0.5 s (3 of them) and over 0.5 s (1); 600 gaps between tokens, all ≤ 50 ms.
    engines.set("a", vllm_text(generated=1600, prompt=600, finished=14, ttft=(10, 3, 1), itl=(1500, 0)))
    scrape_and_tick(engine_metrics, live)
    point = live.engine_series["acme:chat"].points[-1]
    assert point["output_tokens_per_s"] > 0
    assert point["prompt_tokens_per_s"] / point["output_tokens_per_s"] == pytest.approx(200 / 600, rel=0.01)
    assert point["finished_per_s"] / point["output_tokens_per_s"] == pytest.approx(4 / 600, rel=0.01)
    assert 100 < point["ttft_p50_ms"] < 500  # only this interval's 4 observations count, not the first 10
    assert point["ttft_p99_ms"] == 500  # in the open last bucket: its lower bound, all a histogram says
    assert 0 < point["inter_token_p50_ms"] <= 50
    assert point["engines_reporting"] == 1

    live.tick()  # no new scrape since: the same interval's figures again, not a tick of zeros
    again = live.engine_series["acme:chat"].points[-1]
    assert again == point
    assert set(live.engine_series["acme:chat"].as_json()) == {"t", *point}


def test_a_restarted_engine_counts_from_zero_and_a_silent_one_is_left_out(engines: FakeEngines) -> None:
    engine_metrics = EngineMetrics(CollectorRegistry())
    busy = vllm_text(generated=5000, prompt=100, finished=50, ttft=(50, 0, 0), itl=(10, 0))
    urls = {rid: engines.set(rid, busy) for rid in ("r1", "r2")}
    for rid, url in urls.items():
        engine_metrics.watch(rid, deployment="chat", device=f"node/{rid}", url=url, engine="vllm")
    live = figures(engine_metrics)
    scrape_and_tick(engine_metrics, live)
    assert live.engine_series["chat"].points[-1]["engines_reporting"] == 2
    # r1 restarted (its counters are back near zero: 300 new tokens); r2's metrics stop answering.
    engines.set("r1", vllm_text(generated=300, prompt=10, finished=3, ttft=(3, 0, 0), itl=(10, 0)))
    engines.set("r2", "gone", status=503)
    scrape_and_tick(engine_metrics, live)
    point = live.engine_series["chat"].points[-1]
    assert point["engines_reporting"] == 1
    assert point["output_tokens_per_s"] > 0  # r1's 300 tokens, not 300 − 5000
    assert point["finished_per_s"] / point["output_tokens_per_s"] == pytest.approx(3 / 300, rel=0.01)
    assert point["ttft_p50_ms"] is not None and point["ttft_p50_ms"] <= 100
