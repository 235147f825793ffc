"""`kcloud bench run --quick` in all four scenarios in three places, then report and compare.

Places: this machine's CPU (in-process SUT), an emulated FuriosaAI RNGD from the K-Cloud
phase-1 example farm (in-process, modelled energy), and over HTTP against a real `kcloud up`
subprocess on loopback (network SUT). digits-cnn carries most of the matrix; MiniLM runs at
least once per place; one accuracy run per place scores LoadGen's accuracy log. The report is
opened in headless Chromium and must have drawn its plotly plots.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bench_helpers import EMULATED_NPU, FARM, run_cli

from chromium import rendered_dom
from kcloud.devices.catalog import load_catalog
from kcloud.devices.device import Device
from kcloud.farm.profiles import MeasuredProfileFile, ProfileBook

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits-cnn"
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")

#: (place, model, scenario, mode)
RUNS = [
    *[("cpu", DIGITS, s, "performance") for s in SCENARIOS],
    ("cpu", MINILM, "SingleStream", "performance"),
    ("cpu", MINILM, "Offline", "accuracy"),
    *[("npu", DIGITS, s, "performance") for s in SCENARIOS],
    ("npu", MINILM, "MultiStream", "performance"),
    ("npu", DIGITS, "Offline", "accuracy"),
    *[("http", DIGITS, s, "performance") for s in SCENARIOS],
    ("http", MINILM, "Server", "performance"),
    ("http", DIGITS, "Server", "accuracy"),
]
HEADLINE = {
    "SingleStream": "p90_latency_ms",
    "MultiStream": "p99_latency_ms",
    "Server": "completed_samples_per_second",
    "Offline": "samples_per_second",
}


def _key(run: tuple[str, str, str, str]) -> str:
    return "-".join(run)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, bench_models, gateway: str) -> dict[str, tuple]:
    """Every run of the matrix, once: key -> (CLI result, run directory)."""
    out = tmp_path_factory.mktemp("bench-runs")
    done = {}
    for index, run in enumerate(RUNS):
        place, model, scenario, mode = run
        where = {
            "cpu": [],
            "npu": ["--farm", str(FARM), "--device", EMULATED_NPU],
            "http": ["--url", gateway],
        }[place]
        args = [
            "bench",
            "run",
            "--model",
            model,
            "--scenario",
            scenario,
            "--mode",
            mode,
            "--quick",
            "--out",
            str(out),
            "--system",
            f"test-{place}",
            *where,
        ]
        if index:  # the first run shows its live progress bars; the rest stay quiet
            args.append("--no-progress")
        result = run_cli(*args)
        done[_key(run)] = (result, out / f"test-{place}" / model / scenario / mode)
    done["_out"] = out
    return done


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=_key)
def test_quick_run_writes_loadgen_logs_and_result(matrix, run, bench_models):
    place, model, scenario, mode = run
    cli, run_dir = matrix[_key(run)]
    assert cli.exit_code == 0, cli.output
    for name in (
        "mlperf_log_summary.txt",
        "mlperf_log_detail.txt",
        "mlperf_log_accuracy.json",
        "result.json",
    ):
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "result.json").read_text())
    summary = (run_dir / "mlperf_log_summary.txt").read_text()
    assert result["complete"] is True and result["status"] == "finished"
    assert (result["scenario"], result["mode"], result["model"]["name"]) == (scenario, mode, model)
    assert result["model"]["sha256"] == bench_models.get(model).sha256
    assert result["sut_stats"]["errors"] == 0, result["sut_stats"]["first_error"]
    assert result["environment"]["kcloud_version"] and result["environment"]["onnxruntime"]["version"]
    assert result["settings"]["effective"]["scenario"] == scenario
    if place == "http":
        assert result["sut"]["kind"] == "network" and result["sut"]["protocol"].startswith("OIP v2")
    else:
        device = result["sut"]["device"]
        assert device["emulated"] is (place == "npu")
        assert device["spec"]["key"] == ("furiosa-rngd" if place == "npu" else "cpu-generic")
    if mode == "accuracy":
        accuracy = result["accuracy"]
        assert result["loadgen"]["validity"] is None  # LoadGen judges performance runs only
        assert result["mlperf_rules"]["followed"] is None
        assert accuracy["samples_scored"] == accuracy["samples_in_dataset"] > 0
        assert accuracy["score"] >= accuracy["threshold"] and accuracy["passed"] is True
        return
    profile = result.get("profile")
    if place == "cpu":  # a real device: its measured service times are left for placement
        assert profile["written"] and profile["latency_by_batch"] and profile["replicas"] >= 1
        measured = MeasuredProfileFile.model_validate_json(Path(profile["path"]).read_text())
        assert (measured.chip_key, measured.device_uid) == ("cpu-generic", device["uid"])
        assert measured.model == model
        assert measured.source.startswith("bench run ")  # the latest run on the device (each merges in)
        # how much this run's batch times varied (the file holds the device's latest run's)
        assert profile["service_sigma"] >= 0 and measured.service_sigma >= 0
        spec = bench_models.get(model).config
        found = ProfileBook.load().for_device(_host_cpu(device["uid"]), model, spec.flops_per_sample)
        assert found.modelled is False and found.samples_per_second > 0
    elif place == "npu":
        assert profile == {"written": False, "reason": "emulated device: the host computed its work"}
    # validity exactly as LoadGen's summary states it
    validity = re.search(r"Result is : (\w+)", summary).group(1)
    assert result["loadgen"]["validity"] == validity
    # --quick is VALID in LoadGen's sense only, and the result says why it is not MLPerf's
    assert result["mlperf_rules"]["followed"] is False
    assert "min duration 1 s, below the rules' 600 s" in result["mlperf_rules"]["departures"]
    assert "MLPerf rules" in cli.output and "not followed" in cli.output
    assert result["metric"]["name"] == HEADLINE[scenario] and result["metric"]["value"] > 0
    assert result["latency_ns"]["p50"] <= result["latency_ns"]["p99"]
    energy = result["energy"]
    if place == "npu":
        # No figure mixes the host's measured speed with the chip's modelled power: the energy
        # block is empty with the reason, and the chip's own figures are all modelled.
        assert energy["modelled"] is True and energy["joules"] is None
        assert energy["efficiency"]["value"] is None
        assert "would mix the host's speed with the chip's power" in energy["reason"]
        assert result["metric"]["measured_on"] == f"the host CPU computing for emulated device {EMULATED_NPU}"
        model = result["device_model"]
        assert model["modelled"] is True and model["chip"] == "furiosa-rngd" and model["reason"] is None
        assert model["service_time_ms"]["batch_1"] > 0 and model["samples_per_second"] > 0
        chip_figure = {  # from the chip's throughput, service time and power alone
            "Offline": model["samples_per_second"] / model["power_watts"],
            "Server": model["samples_per_second"] / model["power_watts"],
            "SingleStream": model["power_watts"] * model["service_time_ms"]["batch_1"],
        }.get(scenario)
        assert model["efficiency"]["value"] > 0
        assert chip_figure is None or model["efficiency"]["value"] == pytest.approx(chip_figure)
        # and the chip under this run's own load, simulated by the twin (test_emulated_twin.py)
        under = model["under_load"]
        assert under["modelled"] is True and under["basis"].startswith("twin: ") and under["reason"] is None
        assert under["samples_per_second"] > 0 and under["latency_ms"]["p99"] > 0
        assert (under["bound_met"] is not None) == (scenario == "Server")
        assert under["energy"]["efficiency"]["value"] > 0
        assert "under this run's load" in cli.output
    elif energy["joules"] is None:
        assert energy["reason"]  # no readable counter here: null with the reason, never 0
    else:
        assert energy["joules"] > 0 and energy["modelled"] is False
    expected = "samples_per_joule" if scenario in ("Offline", "Server") else "millijoules_per_query"
    assert energy["efficiency"]["name"] == expected


@pytest.mark.slow
def test_first_run_showed_live_progress(matrix):
    cli, _ = matrix[_key(RUNS[0])]
    assert "issued" in cli.output and "completed" in cli.output and "min duration" in cli.output


@pytest.mark.slow
def test_report_renders_in_headless_chromium(matrix, tmp_path: Path):
    report = tmp_path / "report.html"
    cli = run_cli("bench", "report", str(matrix["_out"]), "-o", str(report))
    assert cli.exit_code == 0, cli.output
    assert f"({len(RUNS)} runs)" in cli.output
    html = report.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # self-contained: plotly.js is inline, no CDN
    assert "<th class=\"l\">MLPerf rules</th>" in html and "not followed: min duration 1 s" in html
    expected = int(re.search(r"data-figures='(\d+)'", html).group(1))
    assert expected >= 2 * len(SCENARIOS)  # at least latency + throughput per scenario
    dom = rendered_dom(report, tmp_path / "chromium")
    # plotly draws each plot into its div as <svg class="main-svg">; none exist before its JS runs
    drawn = {m for m in re.findall(r'id="(plot-\d+)"[^>]*class="[^"]*js-plotly-plot', dom)}
    assert len(drawn) == expected, f"{len(drawn)} of {expected} plots drawn"
    assert dom.count('class="main-svg"') >= expected
    assert "MODELLED" in dom and "VALID" in dom
    assert "MODELLED by the digital twin" in html  # the emulated runs' table of the chip's own figures


@pytest.mark.slow
def test_compare_shows_deltas(matrix):
    cpu = matrix[_key(("cpu", DIGITS, "Offline", "performance"))][1]
    npu = matrix[_key(("npu", DIGITS, "Offline", "performance"))][1]
    cli = run_cli("bench", "compare", str(cpu), str(npu))
    assert cli.exit_code == 0, cli.output
    text = cli.output
    assert "B - A" in text and "samples_per_second" in text and "%" in text
    assert "MODELLED" in text  # the emulated device's energy is labelled in the comparison
    assert "under this run's load" in text  # and the twin's figures for the chip, labelled too


@pytest.mark.slow
def test_gateway_without_a_key_is_refused_before_loadgen(gateway: str, tmp_path: Path) -> None:
    result = run_cli(
        "bench", "run", "--model", DIGITS, "--url", gateway, "--scenario", "Offline", "--quick",
        "--out", str(tmp_path), env={"KCLOUD_API_KEY": ""},
    )
    assert result.exit_code != 0
    assert "requires an API key" in result.output
    assert not list(tmp_path.rglob("mlperf_log_summary.txt"))


@pytest.mark.slow
def test_a_deployment_served_under_its_own_name_is_benched_with_served_name(gateway: str, tmp_path: Path):
    made = run_cli("deploy", "create", DIGITS, "--name", "digits-two", "--url", gateway)
    assert made.exit_code == 0, made.output
    result = run_cli("bench", "run", "--model", DIGITS, "--url", gateway, "--served-name", "digits-two",
                     "--scenario", "Offline", "--quick", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    [path] = tmp_path.rglob("result.json")
    run = json.loads(path.read_text())
    assert run["complete"] and run["sut"]["served_name"] == "digits-two" and run["sut_stats"]["errors"] == 0
    assert run["model"]["name"] == DIGITS  # the data set, signature and accuracy are the model's
    unknown = run_cli("bench", "run", "--model", DIGITS, "--url", gateway, "--served-name", "nope",
                      "--scenario", "Offline", "--quick", "--out", str(tmp_path / "nope"))
    assert unknown.exit_code != 0 and "does not serve model 'nope'" in unknown.output


def _host_cpu(uid: str) -> Device:
    node, local = uid.split("/")
    return Device(id=local, node=node, plugin="cpu", vendor="cpu", spec=load_catalog().get("cpu-generic"),
                  name="host CPU")
