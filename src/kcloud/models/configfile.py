"""`config.toml` <-> `ModelConfig`, with errors a person can act on.

A model's contract is edited by hand, so a mistake must come back as one line per problem that
names the file and the key (`inputs[0].shape`), not as a pydantic traceback.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from kcloud.models.config import ModelConfig
from kcloud.models.errors import ModelFileError

CONFIG_FILE = "config.toml"


def _key(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad key (rather than value) of a table
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `<source>: key <key>: <what is wrong>`."""
    lines = []
    for item in error.errors():
        key = _key(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            problem = "unknown key"
        elif kind == "missing":
            problem = "missing required key"
        else:
            message = item["msg"].removeprefix("Value error, ")
            problem = f"{message} (got {item['input']!r})"
        lines.append(f"{source}: key `{key}`: {problem}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelFileError(describe_validation_error(exc, source)) from None


def load_config(path: Path) -> ModelConfig:
    """Read and validate a `config.toml`; raise `ModelFileError` naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: cannot read config: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelFileError(f"{path}: TOML syntax error: {exc}") from None
    return config_from_dict(data, str(path))


def config_to_toml(config: ModelConfig) -> str:
    """TOML text of a config; `None` fields are left out (TOML has no null, and absent = `None`)."""
    data = config.model_dump(mode="json", exclude_none=True)
    if not data["batching"]["preferred_batch_size"]:  # an empty table reads as noise in the file
        del data["batching"]["preferred_batch_size"]
    return tomli_w.dumps(data)


def save_config(config: ModelConfig, path: Path) -> None:
    """Write atomically, so a reader never sees half a config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config_to_toml(config))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
