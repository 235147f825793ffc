"""The FuriosaAI Warboy target, run against stand-ins for the vendor's tools (no Warboy here).

The stand-ins follow furiosa-sdk 0.10's documented interfaces (furiosa-ai/furiosa-sdk:
docs/en/source/software/compiler.rst, python/furiosa-quantizer/furiosa/quantizer/__init__.py,
examples/quantizers/quantize.py): `optimize_model(ModelProto)`, `Calibrator(model,
CalibrationMethod.MIN_MAX_ASYM)` with `collect_data([[inputs...]])` and `compute_range()`,
`quantize(model, ranges) -> bytes`, and the CLI `furiosa-compiler SOURCE -o OUT --target-npu
warboy-2pe --batch-size N` (`-V/--version` prints "Furiosa SDK Compiler v0.10.0 (...)"). The
fake compiler records its argv, so the test checks the exact command kcloud runs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from compiled_models import write_mlp_model
from kcloud.models.compiler import compile_model
from kcloud.models.repository import ModelRepository
from kcloud.models.targets import UnknownTargetError
from kcloud.models.vendor_compilers import ToolMissingError, VendorCompileError

FAKE_SDK = '''
import enum

class CalibrationMethod(enum.Enum):
    MIN_MAX_ASYM = 1

class Calibrator:
    def __init__(self, model, method):
        assert method is CalibrationMethod.MIN_MAX_ASYM
        self.batches = []
    def collect_data(self, batches):
        self.batches.extend(batches)
    def compute_range(self):
        assert self.batches, "no calibration data"
        return {"x": (-1.0, 1.0)}

def quantize(model, ranges):
    assert ranges
    return b"DFG" + model.SerializeToString()[:16]
'''

FAKE_COMPILER = '''#!{python}
import json, sys
if sys.argv[1:] in (["--version"], ["-V"]):
    print("Furiosa SDK Compiler v0.10.0 (test stand-in)")
    sys.exit(0)
open({log!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")
if {fail}:
    print("error: unsupported operator Erf", file=sys.stderr)
    sys.exit(3)
out = sys.argv[sys.argv.index("-o") + 1]
open(out, "wb").write(b"ENF" + open(sys.argv[1], "rb").read())
'''


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    repository.add(write_mlp_model(tmp_path / "src"))
    return repository


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sdk: bool = True, compiler: bool = True,
             fail: bool = False) -> Path:
    log = tmp_path / "compiler-argv.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if compiler:
        script = bin_dir / "furiosa-compiler"
        script.write_text(FAKE_COMPILER.format(python=sys.executable, log=str(log), fail=fail))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if sdk:
        package = tmp_path / "sdk" / "furiosa"
        package.mkdir(parents=True, exist_ok=True)
        (package / "optimizer.py").write_text("def optimize_model(model):\n    return model\n")
        (package / "quantizer.py").write_text(FAKE_SDK)
        monkeypatch.syspath_prepend(str(tmp_path / "sdk"))
    for name in ("furiosa", "furiosa.optimizer", "furiosa.quantizer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return log


def test_furiosa_target_quantizes_and_runs_the_documented_command(repo, tmp_path, monkeypatch) -> None:
    log = _install(tmp_path, monkeypatch)
    artifact = compile_model(repo.get("mlp"), "furiosa").artifact
    assert artifact.path.name == "model.enf" and artifact.path.read_bytes().startswith(b"ENFDFG")
    [argv] = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[0].endswith("model.dfg") and argv[2].endswith("model.enf")
    assert argv[1:] == ["-o", argv[2], "--target-npu", "warboy-2pe", "--batch-size", "1"]
    record = artifact.record
    assert record["build"]["compiler_version"] == "Furiosa SDK Compiler v0.10.0 (test stand-in)"
    assert record["accuracy"] is None and "not on this host" in record["accuracy_note"]
    assert not list(artifact.path.parent.glob("*.dfg"))  # the intermediate is not kept


def test_furiosa_without_its_compiler(repo, tmp_path, monkeypatch) -> None:
    _install(tmp_path, monkeypatch, compiler=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ToolMissingError, match="`furiosa-compiler` is not on PATH"):
        compile_model(repo.get("mlp"), "furiosa")


def test_furiosa_without_its_quantizer(repo, tmp_path, monkeypatch) -> None:
    _install(tmp_path, monkeypatch, sdk=False)
    monkeypatch.setitem(sys.modules, "furiosa", None)  # as if not installed, whatever this machine has
    with pytest.raises(ToolMissingError, match=r"furiosa-sdk\[quantizer\]"):
        compile_model(repo.get("mlp"), "furiosa")


def test_a_failing_vendor_compiler_is_reported_with_what_it_said(repo, tmp_path, monkeypatch) -> None:
    _install(tmp_path, monkeypatch, fail=True)
    with pytest.raises(VendorCompileError, match=r"exit 3\): error: unsupported operator Erf"):
        compile_model(repo.get("mlp"), "furiosa")


@pytest.mark.parametrize("name", ["rbln", "rngd"])
def test_vendor_targets_kcloud_does_not_build_say_why(repo, name: str) -> None:
    with pytest.raises(UnknownTargetError, match="not ONNX graphs"):
        compile_model(repo.get("mlp"), name)
