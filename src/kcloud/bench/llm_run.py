"""`kcloud bench run` for chat models: LoadGen's token-latency mode and the greedy accuracy gate.

`runner.prepare_run` hands a generative model here after the checks every run shares. The
query sample library is the model's chat reference (`reference.json`: prompts with transformers'
greedy outputs); `execute_run` drives a `ChatPreparedRun` through the same hooks as a tensor run.

Performance (Server, Offline): every sample generates `max_tokens` tokens (`ignore_eos`, greedy)
and LoadGen measures tokens, not samples: tokens per second is the metric, and in Server its
TTFT and TPOT percentiles are judged against `ttft_ms`/`tpot_ms` (by default MLPerf's Llama 3.1
8B Server constraints, its smallest LLM: 2 s and 100 ms at the 99th percentile). Energy per token
comes from the same counters as energy per sample.

Accuracy: the reference's `max_new_tokens`, stopping at EOS, with the engine's top log-probabilities,
scored by `kcloud.bench.llm_accuracy` (matched prefix, ties, a pass/fail gate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlperf_loadgen as lg
import numpy as np

from kcloud.bench.calibrate import Calibration
from kcloud.bench.device_model import chat_device_model
from kcloud.bench.energy import token_efficiency
from kcloud.bench.errors import BenchError
from kcloud.bench.llm_accuracy import TIE_MARGIN_NATS, read_outputs, score_outputs
from kcloud.bench.llm_backend import (
    ChatBackend,
    ChatEngineBackend,
    ChatNetworkBackend,
    ChatRequestShape,
    ChatSample,
)
from kcloud.bench.llm_sut import ChatLoadGenSUT, calibrate_chat
from kcloud.bench.loadgen_logs import ACCURACY_FILE, SUMMARY_FILE, token_latency_stats_ns
from kcloud.bench.result import TIMINGS_FILE
from kcloud.bench.runner import (
    CALIBRATION_S,
    Meter,
    RunRequest,
    default_out_dir,
    energy_block,
    local_device,
    read_run,
    safe_name,
    sut_counts,
)
from kcloud.bench.settings import BenchSettings, to_loadgen
from kcloud.bench.sut import AsyncSUT
from kcloud.devices.device import Device
from kcloud.models.errors import ModelFileError
from kcloud.models.repository import ModelEntry, ModelRepository
from kcloud.models.smollm import REFERENCE_FILE, ChatReference, read_reference
from kcloud.runtimes.plugin import UnsupportedDeviceError

#: The scenarios LoadGen's token-latency mode reports tokens per second in.
CHAT_SCENARIOS = ("Server", "Offline")
#: Tokens each sample generates in performance runs, unless `--max-tokens` says otherwise.
DEFAULT_MAX_TOKENS = 128
#: `--quick` for chat models: a generation takes a second, not a millisecond, so fewer samples
#: and a longer limit than the tensor models' quick profile (`settings.QUICK`).
CHAT_QUICK: dict[str, Any] = {
    "min_duration_s": 1.0,
    "max_duration_s": 60.0,
    "min_query_count": 16,
    "max_tokens": 32,
}
#: MLPerf's Llama 3.1 8B Server constraints (mlperf.conf: ttft_latency 2000, tpot_latency 100 ms).
DEFAULT_TTFT_MS = 2000.0
DEFAULT_TPOT_MS = 100.0
#: Samples in flight at once by default: enough for an engine's continuous batching to fill.
CHAT_MAX_IN_FLIGHT = 16

#: LoadGen's token metric per scenario: (result.json name, detail-log key).
TOKEN_METRIC = {
    "Offline": ("tokens_per_second", "result_tokens_per_second"),
    "Server": ("completed_tokens_per_second", "result_completed_tokens_per_second"),
}


@dataclass
class ChatPreparedRun:
    """A checked run of a chat model; `runner.execute_run` drives it (see `runner.PreparedRun`)."""

    request: RunRequest
    entry: ModelEntry
    reference: ChatReference
    samples: list[ChatSample]
    backend: ChatBackend
    run_dir: Path
    system: str
    device: Device | None
    inventory: Any
    max_in_flight: int
    shape: ChatRequestShape
    ttft_ms: float
    tpot_ms: float
    tie_margin_nats: float

    @property
    def sample_count(self) -> int:
        return len(self.samples)

    def sample_set(self) -> dict[str, Any]:
        return {
            "path": str(self.entry.model_dir / REFERENCE_FILE),
            "samples": len(self.samples),
            "metric": "greedy token match" if self.request.mode == "accuracy" else "tokens",
            "prompt_tokens": [s.prompt_tokens for s in self.samples],
            "reference_generator": self.reference.generator,
        }

    def new_sut(self) -> AsyncSUT:
        return ChatLoadGenSUT(
            self.backend,
            self.samples,
            max_in_flight=self.max_in_flight,
            first_token=self.request.mode == "performance" and self.request.scenario != "Offline",
            accuracy=self.request.mode == "accuracy",
        )

    def warm_up(self, sut: AsyncSUT) -> Calibration:
        request = self.request
        return sut.run(
            calibrate_chat(
                self.backend,
                self.samples,
                request.scenario,
                mode=request.mode,
                budget_s=CALIBRATION_S[request.quick],
                max_in_flight=self.max_in_flight,
            )
        )

    def loadgen_settings(self, settings: BenchSettings) -> lg.TestSettings:
        return chat_loadgen_settings(
            self.entry.name, self.request.scenario, self.request.mode, settings, self.ttft_ms, self.tpot_ms
        )

    def reset_stats(self) -> None:
        self.backend.reset_stats()

    def sut_stats(self, sut: AsyncSUT) -> dict[str, Any]:
        return {**sut_counts(sut), "engine": self.backend.stats()}

    def finish(self, result: dict[str, Any], sut: AsyncSUT, meter: Meter | None) -> None:
        assert isinstance(sut, ChatLoadGenSUT)
        _finish_chat(self, result, sut, meter)


def chat_loadgen_settings(
    model: str, scenario: str, mode: str, settings: BenchSettings, ttft_ms: float, tpot_ms: float
) -> lg.TestSettings:
    """`to_loadgen`, then LoadGen's token-latency mode for performance runs.

    Server's end-to-end latency bound does not apply to generations of any length: MLPerf sets
    it to 0 for its LLMs and judges TTFT and TPOT instead, and so does this."""
    ts = to_loadgen(model, scenario, mode, settings)
    if mode == "performance":
        ts.use_token_latencies = True
        if scenario == "Server":
            ts.server_target_latency_ns = 0
            ts.ttft_latency = round(ttft_ms * 1e6)
            ts.tpot_latency = round(tpot_ms * 1e6)
    return ts


def _check_settings(request: RunRequest, entry: ModelEntry, reference: ChatReference) -> int:
    """Chat-specific checks of the settings; returns the tokens a sample generates."""
    given = request.settings.given()
    if request.scenario not in CHAT_SCENARIOS:
        raise BenchError(
            f"chat models run the {' and '.join(CHAT_SCENARIOS)} scenarios (LoadGen's token-latency "
            f"mode), not {request.scenario}"
        )
    if "latency_bound_ms" in given:
        raise BenchError(
            "--latency-bound-ms bounds a whole answer of a tensor model; a chat model's Server run is "
            "judged on --ttft-ms and --tpot-ms"
        )
    if request.mode == "accuracy":
        for key in ("max_tokens", "ttft_ms", "tpot_ms"):
            if key in given:
                raise BenchError(
                    f"--{key.replace('_', '-')} applies to performance runs; an accuracy run generates "
                    f"the reference's {reference.max_new_tokens} tokens greedily, stopping at EOS"
                )
        return reference.max_new_tokens
    if "tie_margin_nats" in given:
        raise BenchError("--tie-margin-nats applies to accuracy runs (--mode accuracy)")
    max_tokens = request.settings.max_tokens or DEFAULT_MAX_TOKENS
    generation = entry.config.generation
    assert generation is not None
    longest = max(len(case.prompt_token_ids) for case in reference.cases)
    if longest + max_tokens > generation.context_length:
        raise BenchError(
            f"--max-tokens {max_tokens} with the longest prompt ({longest} tokens) exceeds "
            f"{entry.name}'s context of {generation.context_length} tokens; give at most "
            f"{generation.context_length - longest}"
        )
    return max_tokens


def prepare_chat_run(request: RunRequest, repository: ModelRepository, entry: ModelEntry) -> ChatPreparedRun:
    """Every check a chat run can fail, before anything starts (as `runner.prepare_run`)."""
    generation = entry.config.generation
    assert generation is not None
    if not generation.chat:
        raise BenchError(
            f"model {entry.name!r} is served for completions only; kcloud bench runs chat models"
        )
    try:
        reference = read_reference(entry.model_dir)
    except ModelFileError as exc:
        raise BenchError(
            f"model {entry.name!r} has no chat reference to take its prompts and greedy outputs from: {exc}"
        ) from None
    if not reference.cases:
        raise BenchError(f"the chat reference of {entry.name!r} has no cases")
    if request.quick and request.explicit is not None:
        profile = {k: v for k, v in CHAT_QUICK.items() if k != "max_tokens" or request.mode == "performance"}
        quick = {**profile, **request.explicit.given()}
        request = dataclasses.replace(request, settings=BenchSettings.model_validate(quick))
    max_tokens = _check_settings(request, entry, reference)
    settings = request.settings
    ttft_ms = settings.ttft_ms or DEFAULT_TTFT_MS
    tpot_ms = settings.tpot_ms or DEFAULT_TPOT_MS
    # the settings must be acceptable to LoadGen before anything starts
    chat_loadgen_settings(entry.name, request.scenario, request.mode, settings, ttft_ms, tpot_ms)
    accuracy = request.mode == "accuracy"
    shape = ChatRequestShape(max_tokens=max_tokens, ignore_eos=not accuracy, logprobs=accuracy)
    samples = [ChatSample(case.messages, len(case.prompt_token_ids)) for case in reference.cases]
    in_flight = settings.max_in_flight or CHAT_MAX_IN_FLIGHT
    inventory = None
    device = None
    backend: ChatBackend
    if request.url is not None:
        network = ChatNetworkBackend(
            request.url, entry, shape, max_in_flight=in_flight, api_key=request.api_key,
            served_name=request.served_name,
        )
        network.preflight()
        backend = network
        system = request.system or f"gateway-{network.url.split('://', 1)[1]}"
    else:
        inventory, device = local_device(request)
        if device.spec.kind not in entry.config.device_kinds:
            raise BenchError(
                f"model {entry.name} may run on {', '.join(entry.config.device_kinds)}; "
                f"device {device.uid} is a {device.spec.kind}"
            )
        try:
            backend = ChatEngineBackend(
                entry, device, shape, max_in_flight=in_flight, emulation=inventory.emulated
            )
        except (UnsupportedDeviceError, TypeError) as exc:
            raise BenchError(f"device {device.uid} cannot run {entry.name} here: {exc}") from None
        system = request.system or f"{device.node}-{device.id}" + ("-emulated" if device.emulated else "")
    system = safe_name(system)
    run_dir = (
        (request.out or default_out_dir()) / system / safe_name(entry.name) / request.scenario / request.mode
    )
    if run_dir.exists() and not run_dir.is_dir():
        raise BenchError(f"{run_dir} exists and is not a directory")
    return ChatPreparedRun(
        request,
        entry,
        reference,
        samples,
        backend,
        run_dir,
        system,
        device,
        inventory,
        in_flight,
        shape,
        ttft_ms,
        tpot_ms,
        settings.tie_margin_nats if settings.tie_margin_nats is not None else TIE_MARGIN_NATS,
    )


# ------------------------------------------------------------------------------ the result


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {
        "min": float(values.min()),
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
    }


def sut_token_latencies(
    first_token_ns: list[int], latency_ns: list[int], tokens: list[int]
) -> dict[str, Any]:
    """TTFT and TPOT as the SUT's clients saw them, by LoadGen's definitions, over answered samples.

    Measured from LoadGen's `issue_query` call (LoadGen measures from the scheduled time)."""
    first = np.asarray(first_token_ns, dtype=np.float64)
    total = np.asarray(latency_ns, dtype=np.float64)
    count = np.asarray(tokens, dtype=np.float64)
    ok = (first >= 0) & (count > 1)
    tpot = (total[ok] - first[ok]) / (count[ok] - 1)
    return {"ttft": _percentiles(first[ok]), "tpot": _percentiles(tpot), "samples": int(ok.sum())}


def token_block(
    prepared: ChatPreparedRun, events: dict[str, Any], sut: ChatLoadGenSUT, recommendations: list[str]
) -> dict[str, Any]:
    """Tokens per second, TTFT and TPOT with their constraints; LoadGen's figures where it has them."""
    scenario = prepared.request.scenario
    name, key = TOKEN_METRIC[scenario]
    loadgen = token_latency_stats_ns(events)
    times = sut.times
    block: dict[str, Any] = {
        "max_tokens": prepared.shape.max_tokens,
        "ignore_eos": prepared.shape.ignore_eos,
        "tokens_generated": int(sum(times.tokens)),
        "tokens_per_sample": float(np.mean(times.tokens)) if times.tokens else None,
        name: events.get(key),
        "tokens_per_second_source": f"mlperf_log_detail.txt: {key} (LoadGen's token count / its run time)",
        "ttft_ns": loadgen.get("ttft", {}),
        "tpot_ns": loadgen.get("tpot", {}),
        "latency_source": (
            "LoadGen (mlperf_log_detail.txt: result_first_token_*, result_time_per_output_token_*)"
        ),
        "sut_measured": sut_token_latencies(times.first_token_ns, times.latency_ns, times.tokens),
    }
    if scenario == "Offline":
        block["latency_source"] = (
            "LoadGen reports no token latencies in Offline; `sut_measured` has the SUT's own (from "
            f"issue_query to the first streamed token and to the end, {TIMINGS_FILE})"
        )
    if scenario == "Server":
        percentile = float(events.get("effective_target_latency_percentile") or 0.99)
        said = " ".join(recommendations)
        block["constraints"] = {
            "percentile": percentile * 100,
            "ttft_ms": prepared.ttft_ms,
            "tpot_ms": prepared.tpot_ms,
            # LoadGen's own words in the summary's recommendations (sic: "constrain")
            "ttft_met": "TTFT constrain not met" not in said,
            "tpot_met": "TPOT constrain not met" not in said,
            "source": (
                "LoadGen's performance-constraint check; the percentile values are in ttft_ns/tpot_ns. "
                "Defaults: MLPerf's Llama 3.1 8B Server constraints"
            ),
        }
    return block


def _finish_chat(
    prepared: ChatPreparedRun, result: dict[str, Any], sut: ChatLoadGenSUT, meter: Meter | None
) -> None:
    request, run_dir = prepared.request, prepared.run_dir
    times = sut.times
    events = read_run(prepared, result, sut, first_token_ns=np.asarray(times.first_token_ns, dtype=np.int64),
                      tokens=np.asarray(times.tokens, dtype=np.int64))
    if request.mode == "performance":
        tokens = token_block(prepared, events, sut, result["loadgen"].get("recommendations") or [])
        result["tokens"] = tokens
        name, _ = TOKEN_METRIC[request.scenario]
        if result.get("metric") is not None:
            result["metric"] = {
                "name": name,
                "unit": "tokens/s",
                "value": tokens.get(name),
                "source": f"{SUMMARY_FILE} / mlperf_log_detail.txt: LoadGen's token throughput",
            }
    else:
        try:
            outputs, empty = read_outputs(run_dir / ACCURACY_FILE)
            accuracy = score_outputs(prepared.reference, outputs, prepared.tie_margin_nats)
            accuracy["failed_responses"] = empty
        except ValueError as exc:
            accuracy = {"kind": "chat-greedy", "score": None, "passed": False, "reason": str(exc)}
        accuracy["source"] = f"{ACCURACY_FILE} (LoadGen) against {prepared.entry.model_dir / REFERENCE_FILE}"
        result["accuracy"] = accuracy
        result["metric"] = {
            "name": "accuracy_exact_match_rate",
            "unit": "ratio",
            "value": accuracy.get("score"),
            "source": f"{ACCURACY_FILE} scored by kcloud (greedy tokens against the reference)",
        }
    energy = energy_block(request.scenario, events, sut, meter, result)
    if request.mode == "performance":
        tokens_total = result["tokens"]["tokens_generated"]
        energy["samples_efficiency"] = energy["efficiency"]
        energy["efficiency"] = token_efficiency(energy.get("joules"), tokens_total)
        energy["tokens"] = tokens_total
    result["energy"] = energy
    device = prepared.device
    if device is not None and device.emulated:
        result["device_model"] = chat_device_model(prepared.entry, device)
        if result.get("metric"):
            result["metric"]["measured_on"] = f"the host's engine computing for emulated device {device.uid}"
