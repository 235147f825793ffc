"""A trace recorded by the real gateway (`kcloud up --record-trace`) replays in the twin."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from kcloud.app.background import BackgroundGateway
from kcloud.app.options import ServeOptions
from kcloud.cli import app
from kcloud.farm.profiles import MeasuredProfileFile, save_measured_profile
from kcloud.serving.trace import TraceFileError, TraceRecorder
from kcloud.twin.load import TraceError, read_trace

DIGITS = "digits-cnn"


def image_request(rows: int) -> dict:
    pixels = np.zeros((rows, 1, 8, 8), np.float32)
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }


@pytest.mark.slow
def test_a_trace_recorded_by_the_gateway_replays_in_the_twin(builtin_repository, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    options = ServeOptions(port=0, replicas=1, models=[DIGITS], record_trace=trace)
    with (
        BackgroundGateway(options, repository=builtin_repository) as gateway,
        httpx.Client(base_url=gateway.url, timeout=60) as client,
    ):
        for rows in (1, 3, 2, 1):
            answer = client.post(f"/v2/models/{DIGITS}/infer", json=image_request(rows))
            assert answer.status_code == 200, answer.text
        assert client.post("/v2/models/nope/infer", json=image_request(1)).status_code == 404  # not recorded
    header, *lines = trace.read_text().splitlines()
    assert header == "t_s,rows,model" and len(lines) == 4
    assert [line.split(",")[1:] for line in lines] == [
        ["1", DIGITS],
        ["3", DIGITS],
        ["2", DIGITS],
        ["1", DIGITS],
    ]
    assert "image" not in trace.read_text()  # sizes and times only, no content
    times, rows = read_trace(trace, DIGITS)
    assert rows.tolist() == [1, 3, 2, 1] and (np.diff(times) >= 0).all()

    # this machine's CPU has no catalog figures: the twin needs its measured profile (bench writes one)
    profiles = tmp_path / "profiles"
    save_measured_profile(
        MeasuredProfileFile(
            chip_key="cpu-generic",
            device_uid="host/cpu0",
            model=DIGITS,
            latency_by_batch=[(1, 0.0002), (128, 0.002)],
            source="a test",
        ),
        profiles,
    )
    scenario = tmp_path / "replay.toml"
    scenario.write_text(f"""
[twin]
include_local = true
duration_s = 10

[[deployments]]
name = "digits"
model = "{DIGITS}"
node = "host"
load = {{ kind = "trace", trace = "{trace.name}", model = "{DIGITS}" }}
""")
    done = CliRunner().invoke(
        app,
        [
            "twin",
            "run",
            str(scenario),
            "--repo",
            str(builtin_repository.root),
            "--profiles",
            str(profiles),
            "--json",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert done.exit_code == 0, done.output
    (digits,) = json.loads(done.output)["deployments"]
    assert digits["requests"] == 4 and digits["answered"] == 4 and digits["offered_rows_per_s"] == 0.7


def test_a_trace_of_another_model_is_refused_naming_it(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    recorder = TraceRecorder(trace)
    recorder.record("a", 1)
    recorder.close()
    with pytest.raises(TraceError, match="no request of model 'b'"):
        read_trace(trace, "b")


def test_an_unwritable_trace_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(TraceFileError, match="cannot write the trace"):
        TraceRecorder(tmp_path / "file" / "trace.csv")
