"""Bad input to `kcloud bench run`: one clear line, exit code 2, before LoadGen starts (nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import EMULATED_NPU, FARM, free_port, run_cli


def _refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error:" in text and "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def test_unknown_scenario(bench_models, out):
    _refused(
        run_cli("bench", "run", "--model", "digits-cnn", "--scenario", "Batch", "--quick", "--out", str(out)),
        "unknown scenario 'Batch'",
        "SingleStream, MultiStream, Server, Offline",
    )
    assert not out.exists()


def test_unknown_mode(bench_models, out):
    _refused(
        run_cli("bench", "run", "-m", "digits-cnn", "-s", "Offline", "--mode", "fast", "--out", str(out)),
        "unknown mode 'fast'",
    )
    assert not out.exists()


def test_unknown_model(bench_models, out):
    _refused(
        run_cli(
            "bench", "run", "--model", "resnet-9000", "--scenario", "Offline", "--quick", "--out", str(out)
        ),
        "unknown model",
        "resnet-9000",
        "digits-cnn",
    )
    assert not out.exists()


def test_unknown_device(bench_models, out):
    _refused(
        run_cli(
            "bench",
            "run",
            "-m",
            "digits-cnn",
            "-s",
            "Offline",
            "--quick",
            "--device",
            "vm/npu9",
            "--farm",
            str(FARM),
            "--out",
            str(out),
        ),
        "unknown device 'vm/npu9'",
        EMULATED_NPU,
    )
    assert not out.exists()


def test_unreachable_gateway(bench_models, out):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _refused(
        run_cli(
            "bench", "run", "-m", "digits-cnn", "-s", "Offline", "--quick", "--url", url, "--out", str(out)
        ),
        f"gateway {url} is unreachable",
    )
    assert not out.exists()


def test_url_that_is_not_a_gateway_base(bench_models, out):
    _refused(
        run_cli(
            "bench", "run", "-m", "digits-cnn", "-s", "Offline", "--url", "127.0.0.1:8000", "--out", str(out)
        ),
        "expected http://HOST:PORT",
    )


def test_dataset_that_does_not_fit_the_model(misfit_home, out):
    result = run_cli(
        "bench",
        "run",
        "-m",
        "digits-misfit",
        "-s",
        "Offline",
        "--quick",
        "--out",
        str(out),
        env={"KCLOUD_HOME": str(misfit_home)},
    )
    _refused(result, "data set of model 'digits-misfit' does not fit it", "input `image`", "[-1, 1, 8, 8]")
    assert not out.exists()


@pytest.mark.parametrize("qps", ["0", "-5"])
def test_target_qps_not_positive(bench_models, out, qps):
    _refused(
        run_cli(
            "bench",
            "run",
            "-m",
            "digits-cnn",
            "-s",
            "Server",
            "--quick",
            "--target-qps",
            qps,
            "--out",
            str(out),
        ),
        "--target-qps: Input should be greater than 0",
    )
    assert not out.exists()


def test_bad_config_file(bench_models, out, tmp_path):
    config = tmp_path / "bench.toml"
    config.write_text("[Server]\ntarget_qps = 'fast'\n")
    _refused(
        run_cli(
            "bench",
            "run",
            "-m",
            "digits-cnn",
            "-s",
            "Server",
            "--quick",
            "--config",
            str(config),
            "--out",
            str(out),
        ),
        f"config file {config}",
        "[Server].target_qps: Input should be a valid number",
    )
    assert not out.exists()


def test_device_and_url_together(bench_models, out):
    _refused(
        run_cli(
            "bench",
            "run",
            "-m",
            "digits-cnn",
            "-s",
            "Offline",
            "--device",
            "x/y",
            "--url",
            "http://127.0.0.1:1",
            "--out",
            str(out),
        ),
        "not both",
    )


def test_report_and_compare_of_something_that_is_not_a_run(tmp_path):
    (tmp_path / "result.json").write_text("[1, 2]")
    _refused(
        run_cli("bench", "report", str(tmp_path), "-o", str(tmp_path / "r.html")), "not a kcloud bench result"
    )
    assert not (tmp_path / "r.html").exists()
    _refused(run_cli("bench", "compare", str(tmp_path / "nope"), str(tmp_path)), "nope: not found")


def test_a_served_name_without_a_gateway(bench_models, out):
    _refused(
        run_cli("bench", "run", "-m", "digits-cnn", "-s", "Offline", "--served-name", "digits-two",
                "--out", str(out)),
        "--served-name names a deployment behind a gateway: it needs --url",
    )
