"""An emulated device's figures under the run's own load: the twin's, labelled modelled, apart from
the host's.

`device_model(...)["under_load"]` is what `kcloud bench run` writes for an emulated device once
LoadGen has finished (`test_matrix.py` checks it end to end); here it is built from the load a
run's LoadGen settings describe, without running LoadGen, so each scenario is checked in well
under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kcloud.bench.device_model import ACCURACY_RUN, NO_LLM, chat_device_model, device_model, offered_load
from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.models.config import Batching, Generation, ModelConfig, TensorSpec
from kcloud.models.repository import ModelEntry

#: MiniLM's figures (its bundled config): FLOPs at 32 tokens, FP32 weights, batching.
FLOPS, WEIGHTS = 688_914_432.0, 90_258_772
BATCHING = Batching(max_batch_size=64, max_queue_delay_ms=2.0, preferred_batch_size={"cpu": 8})


def _entry() -> ModelEntry:
    config = ModelConfig(
        name="minilm-like",
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, 384])],
        batching=BATCHING,
        flops_per_sample=FLOPS,
        memory_bytes=WEIGHTS,
    )
    return ModelEntry("minilm-like", 1, config, Path("/nonexistent/1"), Path("/nonexistent"),
                      Path("/nonexistent/1/model.onnx"), "0" * 64)


def _device(chip: str = "furiosa-rngd") -> Device:
    spec = load_catalog().get(chip)
    return Device(id="npu0", node="n", plugin="emulated", vendor=spec.vendor, spec=spec, name=spec.chip,
                  emulated=True)


def _effective(scenario: str, **more: Any) -> dict[str, Any]:
    """LoadGen's effective settings as the detail log gives them (the ones the twin reads)."""
    found = {"scenario": scenario, "samples_per_query": 1, "target_latency_ns": 0,
             "target_latency_percentile": {"SingleStream": 0.9}.get(scenario, 0.99),
             "schedule_rng_seed": 16159082839903944936}
    return found | more


def _run(scenario: str, queries: int, chip: str = "furiosa-rngd", **effective: Any) -> dict[str, Any]:
    offered = offered_load(scenario, "performance", _effective(scenario, **effective), queries)
    return device_model(_entry(), _device(chip), scenario, 8, offered)


def _server(qps: float, queries: int = 20_000) -> dict[str, Any]:
    return _run("Server", queries, target_qps=qps, target_latency_ns=10_000_000)


def test_server_gets_the_twins_throughput_latency_bound_and_energy_labelled_modelled():
    model = _server(2_000)
    under = model["under_load"]
    assert model["modelled"] is True and under["modelled"] is True and under["reason"] is None
    assert under["basis"].startswith("twin: Poisson arrivals of 20,000 queries of 1 sample at 2000 queries/s")
    assert "a batch closes at 64 rows (max 64) or 2 ms after its oldest sample" in under["basis"]
    assert under["basis"].endswith("the chip's modelled profile")
    # the chip keeps up: it answers what was offered
    assert under["samples_per_second"] == pytest.approx(2_000, rel=0.05)
    latency = under["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    own = under["loadgen_percentile"]
    assert own["percentile"] == 99 and "validity" in own["use"] and own["latency_ms"] > 0
    assert under["latency_bound_ms"] == 10 and under["bound_met"] is True
    energy = under["energy"]
    assert energy["joules"] > 0 and energy["samples"] == 20_000
    assert energy["power_basis"].startswith("modelled: idle 30% of TDP 180 W")
    assert energy["efficiency"] == {"name": "samples_per_joule", "unit": "samples/J",
                                    "value": pytest.approx(energy["samples"] / energy["joules"])}
    # the full-load figures stay as they were beside it
    assert model["samples_per_second"] > 100_000 and model["efficiency"]["name"] == "samples_per_joule"


def test_a_higher_server_rate_than_the_chip_carries_misses_the_bound():
    within, beyond = _server(20_000), _server(200_000, queries=100_000)
    assert within["samples_per_second"] < 200_000  # the chip's modelled capacity, at full batches
    assert beyond["under_load"]["latency_ms"]["p99"] > 10 * within["under_load"]["latency_ms"]["p99"]
    assert within["under_load"]["bound_met"] is True and beyond["under_load"]["bound_met"] is False
    assert beyond["under_load"]["samples_per_second"] == pytest.approx(beyond["samples_per_second"], rel=0.05)


def test_offline_runs_at_the_chips_full_load_throughput():
    model = _run("Offline", 1, samples_per_query=50_000)
    under = model["under_load"]
    assert under["basis"].startswith("twin: 50,000 samples at once (one Offline query)")
    assert under["samples_per_second"] == pytest.approx(model["samples_per_second"], rel=0.02)
    assert under["utilisation"] == pytest.approx(1.0, abs=0.02)
    assert under["loadgen_percentile"] is None and under["bound_met"] is None  # Offline has no bound
    assert under["energy"]["efficiency"]["name"] == "samples_per_joule"


@pytest.mark.parametrize("scenario, per_query", [("SingleStream", 1), ("MultiStream", 8)])
def test_closed_loop_queries_take_the_batch_delay_and_the_service_time(scenario: str, per_query: int):
    model = _run(scenario, 500, samples_per_query=per_query)
    under = model["under_load"]
    sample = "1 sample" if per_query == 1 else "8 samples"
    assert under["basis"].startswith(f"twin: one query of {sample} at a time, closed loop, 500 queries")
    # alone in the replica, a query waits out the batch delay, then is computed as one batch
    # (on RNGD a MiniLM batch is memory bound below 11 rows: 1 and 8 rows take the same time)
    batch_ms = model["service_time_ms"]["batch_1"]
    expected = BATCHING.max_queue_delay_ms + batch_ms
    assert under["latency_ms"]["p50"] == under["latency_ms"]["p99"] == pytest.approx(expected, abs=2e-3)
    assert under["queries_per_second"] == pytest.approx(1e3 / expected, rel=1e-3)
    assert under["samples_per_second"] == pytest.approx(per_query * 1e3 / expected, rel=1e-3)
    own = under["loadgen_percentile"]
    assert own["percentile"] == (90 if scenario == "SingleStream" else 99) and "metric" in own["use"]
    assert under["bound_met"] is None  # LoadGen sets no latency bound here
    energy = under["energy"]
    assert energy["queries"] == 500 and energy["seconds"] == pytest.approx(500 * expected / 1e3, rel=1e-3)
    assert energy["efficiency"]["name"] == "millijoules_per_query"
    assert energy["efficiency"]["value"] == pytest.approx(energy["joules"] * 1e3 / 500)


def test_a_chip_without_figures_gets_null_with_the_reason():
    model = _run("Server", 100, chip="sapeon-x220-enterprise", target_qps=2_000, target_latency_ns=10_000_000)
    under = model["under_load"]
    assert under["modelled"] is True and under["basis"] is None
    assert "speed for minilm-like is unknown" in under["reason"]
    assert "sapeon-x220-enterprise" in under["reason"]
    for key in ("samples_per_second", "latency_ms", "loadgen_percentile", "bound_met", "energy"):
        assert under[key] is None, key
    assert under["load"]["target_qps"] == 2_000  # what it would have simulated stays said


def test_runs_without_a_load_to_simulate_say_why():
    assert offered_load("Offline", "accuracy", _effective("Offline"), 1) == ACCURACY_RUN
    assert "did not finish" in offered_load("Server", "performance", {}, None)  # type: ignore[operator]
    model = device_model(_entry(), _device(), "Offline", 8, ACCURACY_RUN)
    assert model["under_load"]["reason"] == ACCURACY_RUN and model["under_load"]["latency_ms"] is None
    assert model["samples_per_second"] > 0  # the full-load figures do not need the run's load


def test_a_chat_model_says_the_twin_does_not_model_llm_engines():
    generation = Generation(context_length=512, kv_cache_bytes=1 << 20, flops_per_token=2e8)
    config = ModelConfig(name="chat", platform="transformers", generation=generation)
    entry = ModelEntry("chat", 1, config, Path("/x/1"), Path("/x"), Path("/x/1/model.safetensors"), "0" * 64)
    under = chat_device_model(entry, _device())["under_load"]
    assert under["reason"] == NO_LLM and under["latency_ms"] is None
