"""Fixtures for the model tests: the bundled models, really built (once, see tests/conftest.py)."""

from __future__ import annotations

import pytest

from kcloud.models.repository import ModelEntry, ModelRepository


@pytest.fixture(scope="session")
def minilm(builtin_repository: ModelRepository) -> ModelEntry:
    return builtin_repository.get("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def digits(builtin_repository: ModelRepository) -> ModelEntry:
    return builtin_repository.get("digits-cnn")
