"""`EngineMetrics`: engines' own /metrics, scraped over real HTTP and re-exported as `kcloud_llm_`.

The engine is played by a small Starlette app under uvicorn on a loopback port, in its own
thread (as a real engine is another process), serving `recorded/vllm-0.32.0-cpu.metrics.txt`
(a real vLLM answer; its header says how it was recorded) or text a test sets. No engine runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fake_engines import FakeEngines
from kcloud.serving.engine_metrics import BASE_LABELS, FAMILIES, EngineMetrics

pytestmark = pytest.mark.anyio

RECORDED = (Path(__file__).parent / "recorded" / "vllm-0.32.0-cpu.metrics.txt").read_text()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def engines() -> Iterator[FakeEngines]:
    with FakeEngines() as server:
        yield server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def rendered(registry: CollectorRegistry) -> dict[str, Metric]:
    """The registry's exposition, parsed back: the families a Prometheus server would see."""
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def vllm_labels(replica: str = "r1", deployment: str = "chat", device: str = "node-a/cpu0") -> dict[str, str]:
    return {"deployment": deployment, "replica": replica, "device": device, "engine": "vllm"}


def watch(metrics: EngineMetrics, url: str, replica: str = "r1", deployment: str = "chat",
          device: str = "node-a/cpu0") -> None:
    metrics.watch(replica, deployment=deployment, device=device, url=url, engine="vllm")


async def test_recorded_vllm_answer_is_renamed_and_relabelled(engines, registry):
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("recorded", RECORDED))
    await metrics.scrape_once()

    families = rendered(registry)
    exported = {name for name in families if name.startswith("kcloud_llm_")}
    assert exported == {family.name for family in FAMILIES} | {"kcloud_llm_engine_up"}
    assert not any(name.startswith("vllm:") for name in families)
    for name in exported:
        for sample in families[name].samples:
            assert {k: sample.labels[k] for k in BASE_LABELS} == vllm_labels(), sample
            assert "model_name" not in sample.labels  # the engine's own labels are dropped...
    labels = vllm_labels()
    # ...except those that say something, such as why requests finished.
    assert value(registry, "kcloud_llm_requests_finished_total", **labels, finished_reason="length") == 8
    # The figures of the recording: 8 requests running, prefix-cache hits on a shared system prompt.
    assert value(registry, "kcloud_llm_requests_running", **labels) == 8
    assert value(registry, "kcloud_llm_requests_waiting", **labels) == 0
    assert value(registry, "kcloud_llm_kv_cache_usage_ratio", **labels) == pytest.approx(0.030303, abs=1e-6)
    assert value(registry, "kcloud_llm_prompt_tokens_total", **labels) == 5008
    assert value(registry, "kcloud_llm_generation_tokens_total", **labels) == 297
    assert value(registry, "kcloud_llm_prefix_cache_queries_total", **labels) == 5008
    assert value(registry, "kcloud_llm_prefix_cache_hits_total", **labels) == 3840
    assert value(registry, "kcloud_llm_preemptions_total", **labels) == 0
    assert value(registry, "kcloud_llm_engine_up", **labels) == 1
    text = generate_latest(registry).decode()
    assert "_created" not in text  # the engine's creation times are not re-exported
    assert "# TYPE kcloud_llm_time_to_first_token_seconds histogram" in text
    assert "# TYPE kcloud_llm_prompt_tokens_total counter" in text

    snapshot = metrics.snapshot("r1")
    assert {k: snapshot[k] for k in ("running", "waiting", "prefix_cache_queries", "prefix_cache_hits")} == {
        "running": 8, "waiting": 0, "prefix_cache_queries": 5008, "prefix_cache_hits": 3840}
    assert snapshot["kv_cache_usage"] == pytest.approx(0.030303, abs=1e-6)
    assert 0 <= snapshot["age_s"] < 5


def engine_samples(text: str, name: str) -> list[tuple[str, str | None, float]]:
    """(sample suffix, le, value) of one engine metric, in exposition order."""
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return [(s.name.removeprefix(name), s.labels.get("le"), s.value) for s in family.samples
            if not s.name.endswith("_created")]


@pytest.mark.parametrize(("source", "target"), [
    ("vllm:time_to_first_token_seconds", "kcloud_llm_time_to_first_token_seconds"),
    ("vllm:inter_token_latency_seconds", "kcloud_llm_inter_token_latency_seconds"),
    ("vllm:e2e_request_latency_seconds", "kcloud_llm_e2e_request_latency_seconds"),
    ("vllm:request_queue_time_seconds", "kcloud_llm_queue_time_seconds"),
])
async def test_histogram_buckets_are_kept_as_the_engine_has_them(engines, registry, source, target):
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("recorded", RECORDED))
    await metrics.scrape_once()
    assert engine_samples(generate_latest(registry).decode(), target) == engine_samples(RECORDED, source)
    assert len(engine_samples(RECORDED, source)) > 10  # the engine's own bounds, +Inf, _count, _sum


async def test_two_replicas_keep_their_own_labels_and_figures(engines, registry):
    metrics = EngineMetrics(registry)
    busier = RECORDED.replace('vllm:num_requests_waiting{engine="0",model_name="smol"} 0.0',
                              'vllm:num_requests_waiting{engine="0",model_name="smol"} 5.0')
    watch(metrics, engines.set("a", RECORDED), replica="chat-0", device="node-a/cpu0")
    watch(metrics, engines.set("b", busier), replica="summarise-0", deployment="summarise",
          device="node-b/npu1")
    await metrics.scrape_once()

    first = vllm_labels("chat-0", "chat", "node-a/cpu0")
    second = vllm_labels("summarise-0", "summarise", "node-b/npu1")
    assert value(registry, "kcloud_llm_requests_waiting", **first) == 0
    assert value(registry, "kcloud_llm_requests_waiting", **second) == 5
    assert value(registry, "kcloud_llm_prompt_tokens_total", **first) == 5008
    assert value(registry, "kcloud_llm_prompt_tokens_total", **second) == 5008
    waiting = rendered(registry)["kcloud_llm_requests_waiting"]
    assert [s.labels["replica"] for s in waiting.samples] == ["chat-0", "summarise-0"]
    assert metrics.snapshot("summarise-0")["waiting"] == 5
    assert metrics.snapshot("chat-0")["waiting"] == 0


async def test_forget_drops_the_replicas_series(engines, registry):
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("a", RECORDED), replica="r1")
    watch(metrics, engines.set("b", RECORDED), replica="r2")
    await metrics.scrape_once()
    metrics.forget("r1")
    metrics.forget("never-watched")  # no-op

    replicas = {s.labels["replica"] for f in rendered(registry).values() for s in f.samples
                if "replica" in s.labels}
    assert replicas == {"r2"}
    assert metrics.snapshot("r1") == {}
    assert metrics.watched() == ["r2"]
    await metrics.scrape_once()
    assert value(registry, "kcloud_llm_engine_up", **vllm_labels("r1")) is None


async def test_a_scrape_in_flight_when_forgotten_does_not_bring_the_replica_back(engines, registry):
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("slow", RECORDED, delay=0.3))
    scrape = asyncio.create_task(metrics.scrape_once())
    await asyncio.sleep(0.1)
    metrics.forget("r1")
    await scrape
    assert not [f for f in rendered(registry) if f.startswith("kcloud_llm_")]
    assert metrics.snapshot("r1") == {}


@pytest.mark.parametrize("failure", ["status 500", "not found", "refused", "timeout", "not metrics"])
async def test_a_failed_scrape_drops_the_series_and_is_logged_once(engines, registry, caplog, failure,
                                                                   free_port):
    metrics = EngineMetrics(registry, timeout_s=0.3)
    url = engines.set("flaky", RECORDED)
    watch(metrics, url)
    await metrics.scrape_once()
    assert value(registry, "kcloud_llm_requests_running", **vllm_labels()) == 8

    if failure == "status 500":
        engines.set("flaky", "engine error", status=500)
    elif failure == "not found":
        watch(metrics, engines.url("nothing-here"))
    elif failure == "refused":
        watch(metrics, f"http://127.0.0.1:{free_port}/metrics")
    elif failure == "timeout":
        engines.set("flaky", RECORDED, delay=1.0)
    else:
        engines.set("flaky", "<html><body>a login page</body></html>")  # 200, but not metrics
    caplog.set_level(logging.DEBUG, logger="kcloud.serving.engine_metrics")
    for _ in range(3):
        await metrics.scrape_once()
        assert value(registry, "kcloud_llm_engine_up", **vllm_labels()) == 0
        assert value(registry, "kcloud_llm_requests_running", **vllm_labels()) is None  # nothing stale
        assert metrics.snapshot("r1") == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "r1" in warnings[0].getMessage()

    engines.set("flaky", RECORDED)
    if failure in ("not found", "refused"):
        watch(metrics, url)
    await metrics.scrape_once()
    assert value(registry, "kcloud_llm_engine_up", **vllm_labels()) == 1
    assert value(registry, "kcloud_llm_requests_running", **vllm_labels()) == 8


async def test_recovery_is_logged_and_a_new_failure_warns_again(engines, registry, caplog):
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("flaky", "oops", status=503))
    caplog.set_level(logging.INFO, logger="kcloud.serving.engine_metrics")
    await metrics.scrape_once()
    engines.set("flaky", RECORDED)
    await metrics.scrape_once()
    engines.set("flaky", "oops", status=503)
    await metrics.scrape_once()
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO", "WARNING"]


DATA_PARALLEL = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 100.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 50.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.5
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 3.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.25
"""


async def test_a_data_parallel_engines_series_are_merged(engines, registry):
    """Series that differed only in the dropped engine index: summed, a fraction averaged."""
    metrics = EngineMetrics(registry)
    watch(metrics, engines.set("dp", DATA_PARALLEL))
    await metrics.scrape_once()
    labels = vllm_labels()
    assert value(registry, "kcloud_llm_requests_running", **labels) == 7
    assert value(registry, "kcloud_llm_kv_cache_usage_ratio", **labels) == pytest.approx(0.4)
    assert value(registry, "kcloud_llm_prompt_tokens_total", **labels) == 150
    ttft = "kcloud_llm_time_to_first_token_seconds"
    assert value(registry, f"{ttft}_bucket", **labels, le="0.1") == 4
    assert value(registry, f"{ttft}_bucket", **labels, le="+Inf") == 5
    assert value(registry, f"{ttft}_count", **labels) == 5
    assert value(registry, f"{ttft}_sum", **labels) == 0.75
    # What the engine does not report is absent, not 0.
    assert value(registry, "kcloud_llm_requests_waiting", **labels) is None
    assert set(metrics.snapshot("r1")) == {"running", "kv_cache_usage", "age_s"}


# Made up from furiosa-llm's documented metric names (furiosa-llm-serve, "Monitoring the
# OpenAI-Compatible Server"; it disables `_created` samples): no recorded answer was available.
FURIOSA_LLM = """\
# HELP furiosa_llm:num_requests_running Number of requests currently running on RNGD.
# TYPE furiosa_llm:num_requests_running gauge
furiosa_llm:num_requests_running{model_name="m"} 2.0
# HELP furiosa_llm:prompt_tokens_total Number of prefill tokens processed.
# TYPE furiosa_llm:prompt_tokens_total counter
furiosa_llm:prompt_tokens_total{model_name="m"} 42.0
# HELP furiosa_llm:time_per_output_token_seconds Histogram of time per output token in seconds.
# TYPE furiosa_llm:time_per_output_token_seconds histogram
furiosa_llm:time_per_output_token_seconds_bucket{le="0.01",model_name="m"} 1.0
furiosa_llm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 9.0
furiosa_llm:time_per_output_token_seconds_count{model_name="m"} 9.0
furiosa_llm:time_per_output_token_seconds_sum{model_name="m"} 0.4
"""


async def test_furiosa_llm_names_map_to_the_same_families(engines, registry):
    metrics = EngineMetrics(registry)
    metrics.watch("f1", deployment="chat", device="node-a/npu0", url=engines.set("furiosa", FURIOSA_LLM),
                  engine="furiosa-llm")
    await metrics.scrape_once()
    labels = {"deployment": "chat", "replica": "f1", "device": "node-a/npu0", "engine": "furiosa-llm"}
    assert value(registry, "kcloud_llm_requests_running", **labels) == 2
    assert value(registry, "kcloud_llm_prompt_tokens_total", **labels) == 42
    assert value(registry, "kcloud_llm_inter_token_latency_seconds_bucket", **labels, le="+Inf") == 9
    assert value(registry, "kcloud_llm_kv_cache_usage_ratio", **labels) is None


async def test_the_scraper_task_refreshes_and_its_figures_age_out_when_stopped(engines, registry):
    metrics = EngineMetrics(registry, timeout_s=0.2)
    watch(metrics, engines.set("live", RECORDED))
    metrics.start(interval_s=0.05)
    metrics.start(interval_s=0.05)  # already running: no second task

    async def until(check) -> None:
        deadline = time.monotonic() + 5
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    await until(lambda: metrics.snapshot("r1").get("running") == 8)
    engines.set("live", re.sub(r'(vllm:num_requests_running\{[^}]*\}) 8\.0', r"\1 2.0", RECORDED))
    await until(lambda: metrics.snapshot("r1").get("running") == 2)
    await metrics.stop()
    await metrics.stop()  # idempotent
    # No scraper: after one interval plus the timeout nothing is stale-served.
    await until(lambda: metrics.snapshot("r1") == {})
    assert value(registry, "kcloud_llm_requests_running", **vllm_labels()) is None


async def test_collect_from_another_thread_while_scraping(engines, registry):
    """/metrics renders in a worker thread while the scraper, watch and forget run on the loop."""
    metrics = EngineMetrics(registry)
    url = engines.set("recorded", RECORDED)
    stop = threading.Event()
    failures: list[BaseException] = []

    def render() -> None:
        while not stop.is_set():
            try:
                list(text_string_to_metric_families(generate_latest(registry).decode()))
            except Exception as error:  # reported by the assert below
                failures.append(error)
                return

    renderer = threading.Thread(target=render)
    renderer.start()
    try:
        for i in range(8):
            for r in range(4):
                watch(metrics, url, replica=f"r{r}")
            await metrics.scrape_once()
            metrics.forget(f"r{i % 4}")
    finally:
        stop.set()
        renderer.join()
    assert failures == []


async def test_an_unknown_engine_is_refused_and_a_second_collector_clashes(registry):
    metrics = EngineMetrics(registry)
    with pytest.raises(ValueError, match="no metric names known for engine 'tgi'"):
        metrics.watch("r1", deployment="d", device="n/0", url="http://127.0.0.1:1/metrics", engine="tgi")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        EngineMetrics(registry)
    await metrics.scrape_once()  # nothing watched: nothing to do
    assert not [name for name in rendered(registry) if name.startswith("kcloud_llm_")]
