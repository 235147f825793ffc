"""`ServedModel`: a model version as the gateway serves it, under the name clients ask for.

A deployment serves a model version under its own name (`kcloud deploy create MODEL --name N`);
the bundled models serve under their models' names. The repository's `ModelEntry` stays the
model's: its `name` is the model's, never overwritten. The router, the replicas and the gateway
speak of `ServedModel`s: `name` is what a request names and what responses, metrics and usage
carry; `entry` is the model version behind it (its files, its config).
"""

from __future__ import annotations

from dataclasses import dataclass

from kcloud.models.config import ModelConfig
from kcloud.models.repository import ModelEntry


@dataclass(frozen=True)
class ServedModel:
    """A model version under its served name."""

    name: str
    entry: ModelEntry

    @classmethod
    def of(cls, entry: ModelEntry, served_name: str | None = None) -> ServedModel:
        """`entry` served under `served_name` (by default the model's own name)."""
        return cls(served_name or entry.name, entry)

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def config(self) -> ModelConfig:
        return self.entry.config

    @property
    def key(self) -> tuple[str, int]:
        """(served name, version): what the router keys replicas by."""
        return self.name, self.entry.version
