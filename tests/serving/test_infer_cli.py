"""`kcloud infer` against the real gateway on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kcloud.cli import app

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def gateway(start_gateway):
    return start_gateway(models=["noop", MINILM])


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_text_model_as_json(gateway):
    result = _run("infer", MINILM, "--text", "first sentence", "--text", "둘째 문장",
                  "--url", gateway.url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["model_name"], body["model_version"]) == (MINILM, "1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [2, 384])
    vectors = np.array(output["data"]).reshape(2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tensor_from_npy_file_printed(gateway, tmp_path):
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    np.save(tmp_path / "x.npy", x)
    result = _run("infer", "noop", "--input", f"input={tmp_path / 'x.npy'}", "--url", gateway.url)
    assert result.exit_code == 0, result.output
    assert "output FP32 [2, 16]" in result.stdout
    assert "31." in result.stdout


def test_specific_version(gateway, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 16), np.float32))
    result = _run("infer", "noop", "--version", "1", "--input", f"input={tmp_path / 'x.npy'}",
                  "--url", gateway.url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["data"] == [1.0] * 16


def test_url_from_environment(gateway, tmp_path):
    """`$KCLOUD_URL` names the gateway when `--url` is not given, as in every client command."""
    np.save(tmp_path / "x.npy", np.ones((1, 16), np.float32))
    result = CliRunner().invoke(app, ["infer", "noop", "--input", f"input={tmp_path / 'x.npy'}", "--json"],
                                env={"KCLOUD_URL": gateway.url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["data"] == [1.0] * 16


def _fails(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


def test_unreachable_gateway(free_port):
    _fails(_run("infer", MINILM, "--text", "x", "--url", f"http://127.0.0.1:{free_port}"),
           "cannot reach the kcloud gateway", str(free_port))


def test_unknown_model(gateway):
    _fails(_run("infer", "nope", "--text", "x", "--url", gateway.url), "404", "nope")


def test_server_refusal_is_shown(gateway, tmp_path):
    np.save(tmp_path / "wrong.npy", np.ones((1, 16), np.float64))
    _fails(_run("infer", "noop", "--input", f"input={tmp_path / 'wrong.npy'}", "--url", gateway.url),
           "400", "FP64")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["noop", "--text", "x"], ["BYTES input"]),
        (["noop", "--input", "input"], ["NAME=FILE.npy"]),
        (["noop", "--input", "input=/nonexistent.npy"], ["no such file"]),
        (["noop"], ["--text", "--input"]),
    ],
)
def test_bad_arguments(gateway, args, words):
    _fails(_run("infer", *args, "--url", gateway.url), *words)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not numpy", ["not a readable .npy"]),
        (b"", ["not a readable .npy", "empty or cut short"]),
        (b"\x93NUMPY\x01\x00", ["not a readable .npy"]),  # numpy's magic, then nothing
    ],
)
def test_not_an_npy_file(gateway, tmp_path, content, words):
    (tmp_path / "bad.npy").write_bytes(content)
    _fails(_run("infer", "noop", "--input", f"input={tmp_path / 'bad.npy'}", "--url", gateway.url),
           *words)
