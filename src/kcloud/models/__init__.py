"""kcloud.models: the model repository, the bundled models, and their pipelines.

Public names are loaded on first use, so that importing the CLI does not import ONNX.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "kcloud.models.config",
    "ModelEntry": "kcloud.models.repository",
    "ModelRepository": "kcloud.models.repository",
    "default_repository_path": "kcloud.models.repository",
    "ModelFileError": "kcloud.models.errors",
    "ModelNotFoundError": "kcloud.models.errors",
    "BuildError": "kcloud.models.errors",
    "ensure_builtin_models": "kcloud.models.builtin",
    "pipeline_for": "kcloud.models.pipelines",
    "InputError": "kcloud.models.pipeline",
    "Prepared": "kcloud.models.pipeline",
    "load_dataset": "kcloud.models.datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kcloud.models' has no attribute {name!r}")
