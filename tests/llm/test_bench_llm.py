"""`kcloud bench run` on the chat model (issue 15, item 7): LoadGen's token-latency mode, over HTTP
to the shared gateway and in-process to an engine of the bench's own, and the greedy accuracy gate.

The LoadGen runs are short (a few seconds, 16 samples of 16 tokens): they check that every figure
is computed and sourced, not what this 2-core machine achieves. The tie rule is tested alone,
without an engine, on the numbers measured between vLLM-CPU and the reference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from llm_support import ChatFarm
from typer.testing import CliRunner

from kcloud.bench.errors import BenchError
from kcloud.bench.llm_accuracy import (
    TIE_MARGIN_NATS,
    EngineOutput,
    judge_divergence,
    score_case,
    score_outputs,
)
from kcloud.bench.llm_run import CHAT_QUICK
from kcloud.bench.loadgen_logs import parse_summary, token_latency_stats_ns
from kcloud.bench.runner import RunRequest, prepare_run
from kcloud.bench.settings import BenchSettings, merge_settings, settings_from_flags
from kcloud.cli import app
from kcloud.models import builtin
from kcloud.models.builtin import SMOLLM
from kcloud.models.errors import BuildError
from kcloud.models.smollm import ChatReference, ReferenceCase

EXAMPLE_FARM = Path(__file__).resolve().parents[2] / "examples" / "k-cloud-phase1.toml"
EMULATED_NPU = "naver-private-1/rngd0"
#: A short LoadGen run: 16 samples of 16 tokens, at least a second.
SHORT = ("--max-tokens", "16", "--min-query-count", "16", "--min-duration-s", "1", "--max-duration-s", "60")


def bench(*args: str) -> Any:
    return CliRunner().invoke(app, ["bench", "run", "--no-progress", *args], env={"COLUMNS": "200"})


def result_of(out: Path, scenario: str, mode: str) -> dict[str, Any]:
    [path] = out.rglob(f"{scenario}/{mode}/result.json")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------- the tie rule, alone


def test_a_near_tie_in_the_reference_is_a_tie() -> None:
    # measured: the reference took "The" (504) over "L" (60) by 0.25 nats; vLLM took "L" by 0.125
    verdict = judge_divergence(
        0, 504, 60, [[504, -1.7641], [60, -2.0141], [15319, -2.2641]], [[60, -1.8315], [504, -1.9565]]
    )
    assert (
        verdict.tie
        and verdict.reference_gap == pytest.approx(0.25)
        and verdict.engine_gap == pytest.approx(0.125)
    )


def test_an_exact_tie_in_the_engine_is_a_tie_even_where_the_reference_was_surer() -> None:
    # measured with a batch: the engine had " Sc" and " scattering" both at -0.7462
    verdict = judge_divergence(
        18, 24484, 2147, [[24484, -0.4791], [2147, -1.1041]], [[2147, -0.7462], [24484, -0.7462]]
    )
    assert verdict.tie and verdict.reference_gap == pytest.approx(0.625) and verdict.engine_gap == 0.0


def test_a_token_outside_the_references_top5_is_a_mismatch() -> None:
    verdict = judge_divergence(3, 10, 99, [[10, -0.1], [11, -0.2], [12, -3.0]], [[99, -0.1], [10, -0.1]])
    assert not verdict.tie and verdict.reference_gap is None and "top-5" in verdict.why


def test_tokens_far_apart_on_both_sides_are_a_mismatch() -> None:
    verdict = judge_divergence(3, 10, 11, [[10, -0.1], [11, -1.5]], [[11, -0.2], [10, -1.4]])
    assert not verdict.tie and "not a tie" in verdict.why


def test_the_margin_decides_and_allows_the_references_rounding() -> None:
    top = [[1, -1.0], [2, -1.25]]  # 0.25 apart, as stored with 4 decimals
    assert judge_divergence(0, 1, 2, top, None).tie
    assert not judge_divergence(0, 1, 2, [[1, -1.0], [2, -1.3]], None).tie
    assert not judge_divergence(0, 1, 2, top, None, margin=0.05).tie  # the first measured case fails at 0.05


def _reference(*outputs: list[int]) -> ChatReference:
    cases = [
        ReferenceCase(
            messages=[{"role": "user", "content": f"q{i}"}],
            prompt=f"q{i}",
            prompt_token_ids=[1, 2, 3],
            output_token_ids=out,
            output_top_logprobs=[[[t, -0.5], [t + 100, -0.6], [t + 200, -4.0]] for t in out],
            output_text="",
        )
        for i, out in enumerate(outputs)
    ]
    return ChatReference(max_new_tokens=4, eos_token_id=2, generator={}, cases=cases)


def test_the_gate_passes_matches_and_ties_and_fails_anything_else() -> None:
    reference = _reference([5, 6, 7, 8], [5, 6, 2], [9, 9, 9, 9])
    same = EngineOutput([5, 6, 7, 8], [])
    tie = EngineOutput([5, 106, 1, 1], [[], [[106, -0.5], [6, -0.55]]])  # 106: 0.1 below in the reference
    far = EngineOutput([9, 209, 1, 1], [[], [[209, -0.1], [9, -3.0]]])  # 209: 3.5 nats below, not a tie

    block = score_outputs(
        reference, {0: same, 1: EngineOutput([5, 6, 2], []), 2: EngineOutput([9, 9, 9, 9], [])}
    )
    assert block["passed"] and block["score"] == 1.0 and block["mean_matched_prefix_ratio"] == 1.0

    block = score_outputs(reference, {0: same, 1: tie, 2: EngineOutput([9, 9, 9, 9], [])})
    assert block["passed"] and block["exact_matches"] == 2 and block["ties"] == 1
    assert block["mean_matched_prefix_ratio"] == pytest.approx((1 + 1 / 3 + 1) / 3)

    block = score_outputs(reference, {0: same, 1: tie, 2: far})
    assert not block["passed"] and block["mismatches"] == 1 and "cases [2]" in block["reason"]

    block = score_outputs(reference, {0: same, 1: tie})
    assert not block["passed"] and "no answer" in block["reason"]

    cut = score_case(0, reference.cases[0], EngineOutput([5, 6], []))
    assert cut.verdict == "short" and not cut.passed
    assert (
        score_outputs(reference, {0: EngineOutput([5], []), 1: tie, 2: same})["tie_margin_nats"]
        == TIE_MARGIN_NATS
    )


def test_an_engine_output_survives_the_accuracy_log() -> None:
    output = EngineOutput([5, 6], [[[5, -0.1], [7, -2.0]], [[6, -0.2]]])
    assert EngineOutput.from_bytes(bytes.fromhex(output.to_bytes().hex())) == output


def test_loadgens_token_latencies_and_its_two_early_stopping_sections_are_read_as_written() -> None:
    events = {
        "result_first_token_mean_latency_ns": 158721804,
        "result_first_token_99.00_percentile_latency_ns": 215242054,
        "result_time_per_output_token_50.00_percentile_ns": 76291311,
        "result_time_to_output_token_max": 88223655,
        "result_50.00_percentile_latency_ns": 1285855129,  # a sample latency, not a token one
    }
    assert token_latency_stats_ns(events) == {
        "ttft": {"mean": 158721804.0, "p99": 215242054.0},
        "tpot": {"max": 88223655.0, "p50": 76291311.0},
    }
    summary = parse_summary(
        "Mode     : PerformanceOnly\nCompleted samples per second    : 4.00\n"
        "Completed tokens per second: 66.78\nResult is : INVALID\n  Early stopping satisfied: NO\n"
        "Recommendations:\nTTFT Early Stopping Result:\n\n"
        "TPOT Early Stopping Result:\n * Run unsuccessful.\n * Processed 24 queries.\n"
    )
    assert summary.recommendations == [] and summary.early_stopping == [
        "Run unsuccessful.",
        "Processed 24 queries.",
    ]


# ------------------------------------------------------------------------------- bad input


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--model", "digits-cnn", "--scenario", "Offline", "--max-tokens", "16"),
            "--max-tokens applies to chat models; digits-cnn is not one",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--max-tokens", "0"),
            "--max-tokens: Input should be greater than or equal to 2",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--max-tokens", "1"),
            "--max-tokens: Input should be greater than or equal to 2",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--max-tokens", "5000"),
            "exceeds SmolLM2-135M-Instruct's context of 4096 tokens; give at most",
        ),
        (
            ("--model", SMOLLM, "--scenario", "SingleStream"),
            "chat models run the Server and Offline scenarios",
        ),
        (
            ("--model", SMOLLM, "--scenario", "offline", "--ttft-ms", "500"),
            "--ttft-ms applies to Server, not Offline",
        ),
        (
            ("--model", SMOLLM, "--scenario", "server", "--latency-bound-ms", "500"),
            "judged on --ttft-ms and --tpot-ms",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--mode", "accuracy", "--max-tokens", "8"),
            "--max-tokens applies to performance runs; an accuracy run generates the reference's 32 tokens",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--tie-margin-nats", "0.1"),
            "--tie-margin-nats applies to accuracy runs",
        ),
        (
            ("--model", SMOLLM, "--scenario", "Offline", "--mode", "accuracy", "--tie-margin-nats", "-1"),
            "--tie-margin-nats: Input should be greater than or equal to 0",
        ),
    ],
)
def test_bad_chat_input_is_one_clear_line(
    builtin_repository, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = bench(*args, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.slow
def test_a_refused_key_is_named_before_anything_starts(chat_farm: ChatFarm, tmp_path: Path) -> None:
    result = bench(
        "--model",
        SMOLLM,
        "--scenario",
        "Server",
        "--url",
        chat_farm.url,
        "--api-key",
        "kc_wrong_key",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 2
    assert "requires an API key (GET /v1/models answered 401): the key was refused" in " ".join(
        result.output.split()
    )


@pytest.mark.slow
def test_the_chat_model_without_its_extra_names_the_install_not_an_unknown_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def missing() -> str:
        raise BuildError(
            "building SmolLM2-135M-Instruct needs torch (the [llm] extra); install it with: "
            "pip install 'kcloud[llm]'"
        )

    fake = dataclasses.replace(
        builtin.BUILTINS[SMOLLM], source_sha256=missing, unavailable=lambda: "no extra"
    )
    monkeypatch.setitem(builtin.BUILTINS, SMOLLM, fake)
    with pytest.raises(BenchError) as caught:
        prepare_run(RunRequest(model=SMOLLM, scenario="Offline", repository=tmp_path / "models"))
    assert "pip install 'kcloud[llm]'" in str(caught.value) and "unknown model" not in str(caught.value)


@pytest.mark.slow
def test_quick_has_a_chat_profile_under_what_the_user_gave(builtin_repository, tmp_path: Path) -> None:
    def prepared(mode: str, **flags: Any) -> BenchSettings:
        given = settings_from_flags(flags)
        request = RunRequest(
            model=SMOLLM,
            scenario="Server",
            mode=mode,
            quick=True,
            out=tmp_path,
            repository=builtin_repository.root,
            settings=merge_settings("Server", quick=True, file=None, flags=given),
            explicit=merge_settings("Server", quick=False, file=None, flags=given),
        )
        return prepare_run(request).request.settings

    quick = prepared("performance")
    assert (quick.min_query_count, quick.max_tokens, quick.max_duration_s) == (16, 32, 60)
    assert prepared("performance", min_query_count=8, max_tokens=4).model_dump(exclude_none=True) == {
        **CHAT_QUICK,
        "min_query_count": 8,
        "max_tokens": 4,
    }
    assert prepared("accuracy").max_tokens is None  # accuracy generates the reference's tokens


# ------------------------------------------------------------------------- real LoadGen runs


@pytest.mark.slow
def test_a_server_run_over_http_reports_tokens_per_second_ttft_and_tpot(
    chat_farm: ChatFarm, tmp_path: Path
) -> None:
    result = bench(
        "--model",
        SMOLLM,
        "--scenario",
        "server",
        "--url",
        chat_farm.url,
        "--api-key",
        chat_farm.admin_key,
        *SHORT,
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    run = result_of(tmp_path, "Server", "performance")
    assert run["complete"] and run["sut"]["kind"] == "network"
    assert run["sut_stats"]["errors"] == 0 and run["loadgen"]["errors"] == 0
    assert run["loadgen"]["validity"] in (
        "VALID",
        "INVALID",
    )  # LoadGen's verdict, whatever this host achieves
    assert run["metric"]["name"] == "completed_tokens_per_second" and run["metric"]["value"] > 0
    tokens = run["tokens"]
    assert (
        tokens["max_tokens"] == 16 and tokens["tokens_per_sample"] == 16
    )  # ignore_eos: every sample is full
    assert tokens["tokens_generated"] == 16 * run["sut_stats"]["completed"]
    for figure in ("ttft_ns", "tpot_ns"):  # LoadGen's own token latencies
        assert 0 < tokens[figure]["p50"] <= tokens[figure]["p99"]
    assert tokens["ttft_ns"]["p99"] < run["latency_ns"]["p99"]
    constraints = tokens["constraints"]
    assert (constraints["ttft_ms"], constraints["tpot_ms"], constraints["percentile"]) == (2000, 100, 99)
    assert run["settings"]["loadgen_test_settings"]["use_token_latencies"] is True
    energy = run["energy"]
    assert energy["efficiency"]["name"] == "joules_per_token"
    assert (energy["efficiency"]["value"] is None) == (energy["joules"] is None)
    if energy["joules"] is None:
        assert energy["reason"]
    assert "TTFT p99 [ms]" in result.output and "completed_tokens_per_second" in result.output


@pytest.mark.slow
def test_an_offline_run_in_process_on_an_emulated_npu_has_the_chips_modelled_energy_per_token(
    builtin_repository, tmp_path: Path
) -> None:
    result = bench(
        "--model",
        SMOLLM,
        "--scenario",
        "offline",
        "--device",
        EMULATED_NPU,
        "--farm",
        str(EXAMPLE_FARM),
        *SHORT,
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    run = result_of(tmp_path, "Offline", "performance")
    assert run["complete"] and run["sut"]["kind"] == "in-process" and run["sut"]["engine"] == "vllm"
    assert run["sut_stats"]["errors"] == 0
    assert run["metric"]["name"] == "tokens_per_second" and run["metric"]["value"] > 0
    tokens = run["tokens"]
    assert tokens["tokens_generated"] == 16 * run["sut_stats"]["completed"]
    assert not tokens["ttft_ns"]  # LoadGen has no token latencies in Offline ...
    measured = tokens["sut_measured"]  # ... the SUT's own are there instead
    assert measured["samples"] == run["sut_stats"]["completed"] and measured["ttft"]["p50"] > 0
    # The host's engine speed is never divided by the chip's modelled energy ...
    energy = run["energy"]
    assert energy["modelled"] and energy["joules"] is None and energy["efficiency"]["value"] is None
    assert "would mix the host's speed with the chip's power" in energy["reason"]
    assert run["metric"]["measured_on"] == f"the host's engine computing for emulated device {EMULATED_NPU}"
    # ... the chip's own figures are modelled from its catalog profile alone.
    model = run["device_model"]
    assert model["modelled"] and model["chip"] == "furiosa-rngd" and model["tokens_per_second"] > 0
    assert model["efficiency"] == {
        "name": "joules_per_token",
        "unit": "J/token",
        "value": pytest.approx(model["power_watts"] / model["tokens_per_second"]),
    }
    assert any("EMULATED" in note for note in run["notes"])


@pytest.mark.slow
def test_an_accuracy_run_compares_greedy_tokens_with_the_reference(
    chat_farm: ChatFarm, tmp_path: Path
) -> None:
    result = bench(
        "--model",
        SMOLLM,
        "--scenario",
        "Offline",
        "--mode",
        "accuracy",
        "--url",
        chat_farm.url,
        "--api-key",
        chat_farm.admin_key,
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    accuracy = result_of(tmp_path, "Offline", "accuracy")["accuracy"]
    assert (
        accuracy["kind"] == "chat-greedy"
        and accuracy["cases_answered"] == accuracy["cases_in_reference"] == 8
    )
    assert accuracy["exact_matches"] + accuracy["ties"] + accuracy["mismatches"] == 8
    assert accuracy["score"] == accuracy["exact_matches"] / 8
    assert 0 < accuracy["mean_matched_prefix_ratio"] <= 1
    for case in accuracy["cases"]:
        assert (case["divergence"] is None) == (case["verdict"] == "match")
        assert 0 <= case["matched_prefix"] <= case["reference_tokens"] <= 32
    # the real gate: vLLM-CPU leaves the reference only where the two tokens are (nearly) tied
    assert accuracy["passed"], accuracy["reason"]
    assert "accuracy gate" in result.output and "PASS" in result.output
