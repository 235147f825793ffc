"""`kcloud twin run`: a scenario placed by kcloud's placement, simulated, reported; and what it refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chromium import rendered_dom
from kcloud.cli import app
from kcloud.farm.profiles import MeasuredProfileFile, ProfileBook, save_measured_profile
from kcloud.models.repository import ModelRepository
from kcloud.runtimes.modelled import roofline
from kcloud.twin.scenario import load_scenario
from kcloud.twin.scenario import place as scenario_place
from tiny_models import build_model

FARM = """
[farm]
name = "twin-test"

[[nodes]]
name = "a"
devices = [{ chip = "furiosa-rngd", count = 2 }, { chip = "sapeon-x220-enterprise", count = 1 }]

[[nodes]]
name = "b"
devices = [{ chip = "furiosa-rngd", count = 1 }, { chip = "rebellions-atom-ca22", count = 1 }]
"""

DEPLOYMENT = """
[[deployments]]
name = "emb"
model = "tiny"
replicas = 2
vendor = "furiosa"
deadline_ms = 500
load = { kind = "poisson", rate = 400 }
"""
SCENARIO = (
    """
[twin]
farm = "farm.toml"
duration_s = 20
seed = 2
"""
    + DEPLOYMENT
    + """
[[failures]]
device = "{failed}"
at_s = 5
restart_s = 3
"""
)


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a farm file, a one-model repository and an empty profiles directory."""
    root = tmp_path_factory.mktemp("twin")
    (root / "farm.toml").write_text(FARM)
    build_model(ModelRepository(root / "models"), "tiny", flops_per_sample=2e9)
    (root / "profiles").mkdir()
    return root


def twin(place: Path, scenario: str, *extra: str, name: str = "scenario.toml"):
    path = place / name
    path.write_text(scenario)
    args = [
        "twin",
        "run",
        str(path),
        "--repo",
        str(place / "models"),
        "--profiles",
        str(place / "profiles"),
        "--out",
        str(place / "out"),
        *extra,
    ]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def scenario_failing(device: str) -> str:
    return SCENARIO.replace("{failed}", device)


@pytest.fixture(scope="module")
def result(place: Path) -> dict:
    done = twin(place, scenario_failing("a/rngd0"))
    assert done.exit_code == 0, done.output
    assert "MODELLED" in done.output and "moves to" in done.output
    return json.loads((place / "out" / "twin-result.json").read_text())


def test_a_run_places_simulates_and_labels_everything_modelled(result: dict) -> None:
    assert result["modelled"] is True and result["farm"] == "farm" and result["duration_s"] == 20
    (emb,) = result["deployments"]
    assert emb["requests"] == pytest.approx(8000, rel=0.05)
    assert (
        emb["answered"]
        + emb["shed_429"]
        + emb["timed_out_504"]
        + emb["no_replica_503"]
        + emb["failed_502"]
        + emb["unfinished"]
        == emb["requests"]
    )
    assert emb["throughput_rps"] == pytest.approx(emb["offered_rps"], rel=0.02)
    lat = emb["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert len(emb["timeline"]["answered_per_s"]) == len(result["timeline_s"]) == 20
    # placed by kcloud's placement on RNGDs, profiles modelled from the catalog and saying so
    assert {r["chip"] for r in emb["replicas"]} == {"furiosa-rngd"}
    assert all(r["profile"] == "modelled" and "catalog" in r["basis"] for r in emb["replicas"])
    assert any("no measured profile" in w for w in result["warnings"])


def test_a_failed_device_moves_its_replica_and_no_request_is_lost(result: dict) -> None:
    (emb,) = result["deployments"]
    failed = [r for r in emb["replicas"] if r["device"] == "a/rngd0"]
    assert failed and failed[0]["serves_until_s"] == 5
    moved = [r for r in emb["replicas"] if r["serves_from_s"] == 8]
    assert len(moved) == 1 and moved[0]["device"] != "a/rngd0"
    assert any("a/rngd0 failed" in e for e in result["events"])
    assert emb["failed_502"] == 0 and emb["no_replica_503"] == 0  # the other replica took the traffic


def test_a_failure_after_the_run_ends_is_not_simulated(place: Path, tmp_path: Path) -> None:
    # the last --out wins: the module's result in place/out stays as it is
    done = twin(place, scenario_failing("a/rngd0"), "--duration", "4", "--out", str(tmp_path),
                name="short.toml")
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "twin-result.json").read_text())
    (emb,) = result["deployments"]
    assert len(emb["replicas"]) == 2 and all(r["serves_until_s"] is None for r in emb["replicas"])
    assert "5 s: a/rngd0's failure is not simulated: the run ends at 4 s" in result["events"]
    assert not any("a/rngd0 failed" in e for e in result["events"])


def test_devices_report_utilisation_and_energy_with_unknowns_left_out(result: dict) -> None:
    devices = {d["uid"]: d for d in result["devices"]}
    rngd = devices["b/rngd0"] if devices["b/rngd0"]["replicas"] else devices["a/rngd1"]
    assert 0 < rngd["utilisation"] < 1 and rngd["power"] == "modelled" and rngd["energy_j"] > 0
    # an idle RNGD draws its modelled idle power all run long
    idle = [d for d in result["devices"] if d["chip"] == "furiosa-rngd" and not d["replicas"]]
    for device in idle:
        assert device["utilisation"] == 0 and device["energy_j"] > 0
    sapeon = (
        devices["a/x220-enterprise0"]
        if "a/x220-enterprise0" in devices
        else next(d for d in result["devices"] if d["chip"].startswith("sapeon"))
    )
    if sapeon["energy_j"] is None:  # the catalog has no TDP: left out, and the farm total says so
        assert sapeon["uid"] in result["energy"]["devices_without_power"]
        assert result["energy"]["complete"] is False and result["energy"]["note"]
    assert result["energy"]["energy_j"] == pytest.approx(
        sum(d["energy_j"] for d in result["devices"] if d["energy_j"] is not None), rel=1e-6
    )


def test_modelled_service_times_follow_the_chips_roofline_at_every_batch(place: Path) -> None:
    # tiny: 2 GFLOP a row, 100 MiB of FP32 weights (read as BF16 on an RNGD), batches up to 16
    path = place / "roofline.toml"
    path.write_text(SCENARIO.split("[[failures]]")[0])
    placed = scenario_place(load_scenario(path), ModelRepository(place / "models"), ProfileBook())
    replica = placed.deployments[0].replicas[0]
    line = roofline(replica.device.spec, 2e9, weight_bytes=100 * 2**20)
    assert 1 < line.knee_rows < 16  # memory bound at small batches, compute bound at large ones
    assert list(replica.times.service_s[1:]) == pytest.approx([line.seconds(b) for b in range(1, 17)])
    basis = replica.profile.basis
    assert "memory bound below" in basis and "efficiency 0.4 (default 0.4: no MLPerf" in basis


def test_a_measured_profile_replaces_the_modelled_one(place: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    save_measured_profile(
        MeasuredProfileFile(
            chip_key="furiosa-rngd",
            model="tiny",
            latency_by_batch=[(1, 0.002), (16, 0.008)],
            power_by_util=[(0.0, 40.0), (1.0, 150.0)],
            source="a test bench run",
            service_sigma=0.3,
        ),
        profiles,
    )
    path = place / "measured.toml"
    path.write_text(
        scenario_failing("a/rngd0")
        .split("[[failures]]")[0]
        .replace('farm = "farm.toml"', f'farm = "{place / "farm.toml"}"')
    )
    done = CliRunner().invoke(
        app,
        [
            "twin",
            "run",
            str(path),
            "--repo",
            str(place / "models"),
            "--profiles",
            str(profiles),
            "--json",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    (emb,) = found["deployments"]
    assert all(r["profile"] == "measured" and r["service_ms_batch_1"] == 2.0 for r in emb["replicas"])
    assert all(r["service_sigma"] == 0.3 for r in emb["replicas"])  # batch times vary as measured
    assert not found["warnings"]
    used = [d for d in found["devices"] if d["replicas"]]
    assert used and all(d["power"] == "measured" for d in used)


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(result: dict, place: Path, tmp_path: Path) -> None:
    report = place / "out" / "twin-report.html"
    html = report.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # self-contained: plotly.js inline, no CDN
    expected = int(re.search(r"data-figures='(\d+)'", html).group(1))
    assert expected == 2  # the deployment's timeline and the devices' utilisation
    dom = rendered_dom(report, tmp_path / "chromium")
    assert dom.count("js-plotly-plot") >= expected and dom.count('class="main-svg"') >= expected
    assert "MODELLED" in dom and "a/rngd0 failed" in dom


# -------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("[twin\nfarm = 1", "not valid TOML"),
        ('[twin]\nfarm = "farm.toml"\n', "deployments: Field required"),
        (SCENARIO.replace("seed = 2", "seeds = 2"), "twin.seeds: Extra inputs are not permitted"),
        (SCENARIO.replace('model = "tiny"', 'model = "nope"'), "model 'nope' not found"),
        (SCENARIO.replace("rate = 400", "rate = 0"), "greater than 0"),
        (SCENARIO.replace('vendor = "furiosa"', 'vendor = "sapeon"'), "the speed of tiny on them is unknown"),
        (SCENARIO.replace("replicas = 2", "replicas = 2000"), "deployment emb: placed"),
        (SCENARIO.replace('farm = "farm.toml"', 'farm = "absent.toml"'), "absent.toml"),
        (SCENARIO.replace('farm = "farm.toml"', "farm = []"), "names no farm file"),
        (SCENARIO.replace("[[failures]]", DEPLOYMENT + "[[failures]]"), "twice: emb"),
        (SCENARIO.replace('"{failed}"', '"a/nothing"'), "no device 'a/nothing'"),
        (
            SCENARIO.replace("load = {", "batching = { max_batch_size = -1 }\nload = {"),
            "batching: max_batch_size",
        ),
        (SCENARIO.replace('vendor = "furiosa"', 'precision = "fp4"'), "precision must be one of"),
        (SCENARIO.replace("seed = 2", "seed = 2\npauses = { every_s = 0, mean_ms = 5 }"), "greater than 0"),
        (SCENARIO.replace("seed = 2", "seed = 2\npauses = { every_s = 1 }"), "twin.pauses.mean_ms"),
        (SCENARIO.replace("seed = 2", "seed = 2\nmost_open_per_client = 0"), "greater than or equal to 1"),
    ],
)
def test_a_bad_scenario_is_refused_with_the_reason(place: Path, scenario: str, error: str) -> None:
    done = twin(place, scenario.replace("{failed}", "a/rngd0"), name="bad.toml")
    assert done.exit_code == 2, done.output
    said = " ".join(done.output.split())
    assert error in said and "bad.toml" in said, done.output


def test_gateway_stalls_lengthen_the_tail_and_are_reported(place: Path, result: dict) -> None:
    stalls = "seed = 2\npauses = { every_s = 0.5, mean_ms = 50 }"
    stalling = scenario_failing("a/rngd0").replace("seed = 2", stalls)
    done = twin(place, stalling, "--json", name="stalls.toml")
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["pauses"] == {"every_s": 0.5, "mean_ms": 50.0} and result["pauses"] is None
    (steady,), (stalled,) = result["deployments"], found["deployments"]
    # ~9 % of the time stalled, ~50 ms each: the p99 grows by tens of ms, the p50 hardly
    assert stalled["latency_ms"]["p99"] > steady["latency_ms"]["p99"] + 20
    assert stalled["latency_ms"]["p50"] < steady["latency_ms"]["p50"] + 5
    assert stalled["answered"] == pytest.approx(steady["answered"], rel=0.01)


def test_a_gateway_bound_client_over_its_cap_is_refused_at_once(place: Path) -> None:
    # 400 requests/s through a gateway that takes 5 ms each (200/s at most): without a cap its queue
    # grows for the whole run, past the 500 ms deadline; with one, what finds 50 waiting is answered
    # 503 at once and the wait is bounded
    slow = "seed = 2\ngateway_ms = 5.0"
    found = {}
    for cap in ("", "\nmost_open_per_client = 50"):
        scenario = scenario_failing("a/rngd0").replace("seed = 2", slow + cap)
        done = twin(place, scenario, "--json", name="cap.toml")
        assert done.exit_code == 0, done.output
        found[cap] = json.loads(done.output)["deployments"][0]
    uncapped, capped = found[""], found["\nmost_open_per_client = 50"]
    assert uncapped["over_client_cap_503"] == 0 and uncapped["timed_out_504"] > 3_000
    assert capped["over_client_cap_503"] > 3_000 and capped["no_replica_503"] == capped["timed_out_504"] == 0
    assert capped["latency_ms"]["p99"] < 50 * 5 + 100  # at most 50 ahead, 5 ms each, plus the device
    assert capped["answered"] == pytest.approx(200 * 20, rel=0.05)  # the gateway's rate


def test_a_duration_of_zero_is_refused(place: Path) -> None:
    done = twin(place, scenario_failing("a/rngd0"), "--duration", "0")
    assert done.exit_code == 2 and "--duration must be > 0" in done.output
