"""The two `Pipeline`s: plain tensors, and text in / sentence embedding out.

Every check a client can fail happens in `prepare`, once per request and before the request
takes a place in a batch, so one bad request is refused alone (`InputError`, answered 4xx) and
never spoils the batch it would have joined. `collate` and `split` then only move rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from kcloud.datatypes import DATATYPE_TO_NUMPY, oip_datatype
from kcloud.models.config import ModelConfig, TensorSpec
from kcloud.models.errors import ModelFileError
from kcloud.models.graph import read_signature
from kcloud.models.pipeline import InputError, Pipeline, Prepared
from kcloud.models.repository import ModelEntry

__all__ = [
    "InputError",
    "SentenceEmbeddingPipeline",
    "TensorPipeline",
    "graph_feeds",
    "load_tokenizer",
    "pipeline_for",
]


def pipeline_for(entry: ModelEntry) -> Pipeline:
    """The pipeline that the model's `processing.kind` calls for."""
    kind = entry.config.processing.kind
    if kind == "sentence-embedding":
        graph_inputs = tuple(t.name for t in read_signature(entry.weights_path).inputs)
        return SentenceEmbeddingPipeline(
            entry.config, entry.file(entry.config.processing.tokenizer or ""), graph_inputs
        )
    return TensorPipeline(entry.config)


def graph_feeds(
    entry: ModelEntry, inputs: list[dict[str, np.ndarray]], batch: int = 8
) -> list[dict[str, np.ndarray]]:
    """Public samples (a data set's) turned into the graph's own feeds, tokenised and padded as
    a batch would be, `batch` samples at a time: for calibration, profiling and speed checks."""
    pipeline = pipeline_for(entry)
    feeds = []
    for start in range(0, len(inputs), batch):
        feeds.append(pipeline.collate([pipeline.prepare(sample) for sample in inputs[start : start + batch]]))
    return feeds


def _check_names(inputs: dict[str, Any], specs: list[TensorSpec]) -> None:
    if not isinstance(inputs, dict):
        raise InputError(f"inputs must be a mapping of input name to tensor, got {type(inputs).__name__}")
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in inputs]
    extra = sorted(n for n in inputs if n not in expected)
    problems = []
    if missing:
        problems.append(f"missing input(s) {missing}")
    if extra:
        problems.append(f"unexpected input(s) {extra}")
    if problems:
        raise InputError(f"{'; '.join(problems)}; the model takes {expected}")


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    raise InputError(f"input `{name}`: expected a tensor (numpy array), got {type(value).__name__}")


def _check_rows(name: str, rows: int, max_batch_size: int) -> None:
    if rows == 0:
        raise InputError(f"input `{name}` is empty (0 rows); send at least one")
    if max_batch_size and rows > max_batch_size:
        raise InputError(
            f"input `{name}` has {rows} rows, more than this model's max batch size {max_batch_size}; "
            f"split the request"
        )


#: Text elements (BYTES) a request may carry and still be prepared on the event loop; past it,
#: decoding (and tokenising) moves to a worker thread. Preparing this many short texts is ~0.1 ms.
INLINE_ELEMENTS = 1024
#: Text bytes a request may carry and still be tokenised on the event loop: about 0.5 ms of
#: MiniLM's tokenizer (measured: ~0.7 µs a character for long texts on this machine kind).
INLINE_TEXT_BYTES = 1024
#: A tokenizer reads at most this many characters into one token: WordPiece (BERT, MiniLM) turns a
#: longer word into one [UNK] (`max_input_chars_per_word`). So `max_length` × this many characters
#: hold more than `max_length` tokens, and cutting a text there before tokenising changes nothing
#: but the time it takes (unless the text is mostly whitespace, which makes no tokens).
CHARS_PER_TOKEN_BOUND = 100


def _bytes_heavy(inputs: dict[str, np.ndarray], names: list[str], limit: int) -> bool:
    """True when the BYTES inputs `names` hold more than INLINE_ELEMENTS elements or `limit` bytes."""
    try:
        size = 0
        for name in names:
            array = inputs.get(name)
            if not isinstance(array, np.ndarray) or array.dtype != object:
                continue
            if array.size > INLINE_ELEMENTS:
                return True
            for item in array.flat:
                size += len(item) if isinstance(item, bytes | str) else 0
                if size > limit:
                    return True
    except Exception:  # a malformed input is prepare's to refuse, quickly
        return False
    return False


class TensorPipeline:
    """Kind `none`: the public tensors are the graph's; check, concatenate, split by rows."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.batched = config.batching.max_batch_size > 0
        self._text_inputs = [spec.name for spec in config.inputs if spec.datatype == "BYTES"]

    def heavy(self, inputs: dict[str, np.ndarray]) -> bool:
        """Only BYTES inputs cost CPU per element to check (UTF-8 decoding)."""
        return bool(self._text_inputs) and _bytes_heavy(inputs, self._text_inputs, 1 << 20)

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared:
        _check_names(inputs, self.config.inputs)
        feeds: dict[str, np.ndarray] = {}
        rows: int | None = None
        first = ""
        for spec in self.config.inputs:
            array = self._checked(spec, _as_array(spec.name, inputs[spec.name]))
            if self.batched:
                if rows is None:
                    rows, first = array.shape[0], spec.name
                elif array.shape[0] != rows:
                    raise InputError(
                        f"inputs disagree on the batch size: `{first}` has {rows} rows, `{spec.name}` has "
                        f"{array.shape[0]}"
                    )
            feeds[spec.name] = array
        rows = rows if self.batched else 1
        assert rows is not None
        if self.batched:
            _check_rows(first, rows, self.config.batching.max_batch_size)
        shape_key = tuple(
            (name, array.shape[1:] if self.batched else array.shape) for name, array in feeds.items()
        )
        return Prepared(rows=rows, feeds=feeds, extra={"shape_key": shape_key})

    def _checked(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        got = oip_datatype(array.dtype) or str(array.dtype)
        if got != spec.datatype:
            raise InputError(f"input `{spec.name}`: datatype {got}, but the model expects {spec.datatype}")
        if array.ndim != len(spec.shape):
            raise InputError(
                f"input `{spec.name}`: shape {list(array.shape)} has rank {array.ndim}, "
                f"but the model expects "
                f"rank {len(spec.shape)} {spec.shape}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if want != -1 and want != have:
                raise InputError(
                    f"input `{spec.name}`: shape {list(array.shape)} does not fit {spec.shape} "
                    f"(dimension {axis} must be {want})"
                )
            if have == 0 and not (axis == 0 and self.batched):
                raise InputError(
                    f"input `{spec.name}`: shape {list(array.shape)} is empty at dimension {axis}"
                )
        if spec.datatype == "BYTES":
            return _decoded_strings(spec.name, array)
        return np.ascontiguousarray(array, dtype=DATATYPE_TO_NUMPY[spec.datatype])

    def collate(self, items: list[Prepared]) -> dict[str, np.ndarray]:
        """Concatenate along the batch axis; items must share `extra["shape_key"]`.

        A model with variable non-batch dimensions can receive requests that cannot share a
        batch; the batcher groups by `shape_key` (equal keys always concatenate).
        """
        if len(items) == 1:
            return items[0].feeds
        if not self.batched:
            raise ValueError(f"model {self.config.name!r} does not batch; collate one request at a time")
        try:
            return {
                spec.name: np.concatenate([it.feeds[spec.name] for it in items])
                for spec in self.config.inputs
            }
        except ValueError as exc:
            raise ValueError(
                f"requests with different shapes cannot share a batch (group by shape_key): {exc}"
            ) from None

    def split(self, outputs: dict[str, np.ndarray], items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        names = [spec.name for spec in self.config.outputs]
        if not self.batched:
            return [{name: outputs[name] for name in names}]
        return _split_rows(outputs, names, items)


def _split_rows(
    outputs: dict[str, np.ndarray], names: list[str], items: list[Prepared]
) -> list[dict[str, np.ndarray]]:
    total = sum(item.rows for item in items)
    for name in names:
        if outputs[name].shape[0] != total:
            raise RuntimeError(f"output `{name}` has {outputs[name].shape[0]} rows for a batch of {total}")
    if len(items) == 1:
        return [{name: outputs[name] for name in names}]
    result = []
    start = 0
    for item in items:
        result.append({name: outputs[name][start : start + item.rows] for name in names})
        start += item.rows
    return result


def _decoded_strings(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements as `str`, the form ONNX Runtime takes for string tensors."""
    flat = [_text(name, index, item) for index, item in enumerate(array.reshape(-1))]
    return np.array(flat, dtype=object).reshape(array.shape)


def _text(name: str, index: int, item: Any, max_chars: int | None = None) -> str:
    """A BYTES element as `str`; with `max_chars`, only its first `max_chars` characters are
    decoded (and checked): the rest of a text that long can make no difference to the model."""
    if isinstance(item, bytes):
        cut = max_chars is not None and len(item) > 4 * max_chars  # UTF-8: at most 4 bytes a character
        data = item[: 4 * max_chars] if cut else item  # type: ignore[operator]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not (cut and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data"):
                raise InputError(
                    f"input `{name}` element {index} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    f"text must be UTF-8"
                ) from None
            text = data[: exc.start].decode("utf-8")  # the cut split a character
        return text[:max_chars] if max_chars is not None else text
    if isinstance(item, str):
        return item[:max_chars] if max_chars is not None else item
    raise InputError(f"input `{name}` element {index} is {type(item).__name__}, expected bytes (BYTES)")


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """The model's own HF tokenizer, truncating at `max_length` tokens and never padding.

    The shipped `tokenizer.json` may carry its own fixed padding and truncation (MiniLM's says
    128); sentence-transformers overrides both, so do we: padding happens per batch in `collate`.
    """
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions from Rust
        raise ModelFileError(f"{path}: not a readable HF tokenizers file: {exc}") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


#: Shortest length bucket: sentences up to this many tokens share batches whatever their length.
MIN_LENGTH_BUCKET = 16


def length_bucket(tokens: int) -> int:
    """The batching key of a text request: the power of two (at least `MIN_LENGTH_BUCKET`) its
    longest sequence fits in.

    A batch is padded to its longest sequence, and attention costs grow faster than length, so
    one 256-token sentence among short ones multiplies the batch's cost (measured: MiniLM on its
    own data set, batches of 8 mixed lengths ran at 93 sentences/s). Requests of one bucket
    share batches; padding within a bucket is at most 2x.
    """
    bucket = MIN_LENGTH_BUCKET
    while bucket < tokens:
        bucket *= 2
    return bucket


class SentenceEmbeddingPipeline:
    """Kind `sentence-embedding`: BYTES text in, tokenised here, one embedding row per text out.

    Token counts (special tokens included, i.e. what the model processed) go to
    `Prepared.extra["tokens"]` (the request's total) and `extra["token_counts"]` (per text),
    for the OpenAI `usage` field.
    """

    def __init__(self, config: ModelConfig, tokenizer_path: Path, graph_inputs: tuple[str, ...]) -> None:
        if (
            len(config.inputs) != 1
            or config.inputs[0].datatype != "BYTES"
            or len(config.inputs[0].shape) != 1
        ):
            raise ModelFileError(
                f"model {config.name!r}: a sentence-embedding model takes one BYTES input of shape [-1]"
            )
        if (
            len(config.outputs) != 1
            or config.outputs[0].datatype != "FP32"
            or len(config.outputs[0].shape) != 2
        ):
            raise ModelFileError(
                f"model {config.name!r}: a sentence-embedding model gives one FP32 output [-1, dim]"
            )
        self.config = config
        self.text_input = config.inputs[0].name
        self.output = config.outputs[0].name
        self.tokenizer = load_tokenizer(tokenizer_path, config.processing.max_length)
        self.with_token_types = "token_type_ids" in graph_inputs
        #: Characters of a text that are tokenised at all (see CHARS_PER_TOKEN_BOUND).
        self.max_chars = config.processing.max_length * CHARS_PER_TOKEN_BOUND

    def heavy(self, inputs: dict[str, np.ndarray]) -> bool:
        return _bytes_heavy(inputs, [self.text_input], INLINE_TEXT_BYTES)

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared:
        _check_names(inputs, self.config.inputs)
        name = self.text_input
        array = _as_array(name, inputs[name])
        if oip_datatype(array.dtype) != "BYTES":
            raise InputError(
                f"input `{name}`: datatype {oip_datatype(array.dtype) or array.dtype}, "
                f"but the model expects BYTES"
            )
        if array.ndim != 1:
            raise InputError(
                f"input `{name}`: shape {list(array.shape)} has rank {array.ndim}, "
                f"but the model expects rank 1 [-1]"
            )
        _check_rows(name, array.shape[0], self.config.batching.max_batch_size)
        texts = [_text(name, index, item, self.max_chars) for index, item in enumerate(array.tolist())]
        # one text at a time: as fast as encode_batch for a request's few texts, and it starts
        # no Rayon thread pool to compete with ONNX Runtime or to trip over a later fork()
        encodings = [self.tokenizer.encode(text) for text in texts]
        lengths = [len(e.ids) for e in encodings]
        ids = np.zeros((len(texts), max(lengths)), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, (encoding, length) in enumerate(zip(encodings, lengths, strict=True)):
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
        return Prepared(
            rows=len(texts),
            feeds={"input_ids": ids, "attention_mask": mask},
            extra={"tokens": sum(lengths), "token_counts": lengths, "shape_key": length_bucket(max(lengths))},
        )

    def collate(self, items: list[Prepared]) -> dict[str, np.ndarray]:
        """Pad every request to the longest sequence in the batch."""
        if len(items) == 1:
            feeds = dict(items[0].feeds)
        else:
            rows = sum(item.rows for item in items)
            width = max(item.feeds["input_ids"].shape[1] for item in items)
            ids = np.zeros((rows, width), dtype=np.int64)
            mask = np.zeros_like(ids)
            start = 0
            for item in items:
                n, length = item.feeds["input_ids"].shape
                ids[start : start + n, :length] = item.feeds["input_ids"]
                mask[start : start + n, :length] = item.feeds["attention_mask"]
                start += n
            feeds = {"input_ids": ids, "attention_mask": mask}
        if self.with_token_types:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds

    def split(self, outputs: dict[str, np.ndarray], items: list[Prepared]) -> list[dict[str, np.ndarray]]:
        return _split_rows(outputs, [self.output], items)
