"""A plain in-process path through a model: pipeline + one ONNX Runtime CPU session.

The serving runtime (batcher, replicas, devices) lives elsewhere; this is the reference path
used to measure a model's FP32 accuracy when it is built, and by tests to check a model end to
end without a server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from kcloud.models.pipeline import Pipeline
from kcloud.models.pipelines import pipeline_for
from kcloud.models.repository import ModelEntry


class LocalRunner:
    def __init__(self, entry: ModelEntry, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.entry = entry
        self.pipeline: Pipeline = pipeline_for(entry)
        self.session = ort.InferenceSession(str(entry.onnx_path), options, providers=["CPUExecutionProvider"])
        self.graph_outputs = [o.name for o in self.session.get_outputs()]

    def run(self, requests: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Answer several requests as one batch; outputs come back in request order."""
        items = [self.pipeline.prepare(request) for request in requests]
        feeds = self.pipeline.collate(items)
        values = self.session.run(self.graph_outputs, feeds)
        return self.pipeline.split(dict(zip(self.graph_outputs, values, strict=True)), items)

    def run_all(self, requests: Sequence[dict[str, np.ndarray]], batch_rows: int = 32) -> list[dict[str, np.ndarray]]:
        """Answer many requests in batches of about `batch_rows` rows."""
        limit = self.entry.config.batching.max_batch_size or 1
        batch_rows = max(1, min(batch_rows, limit))
        results: list[dict[str, np.ndarray]] = []
        batch: list[dict[str, np.ndarray]] = []
        rows = 0
        for request in requests:
            n = next(iter(request.values())).shape[0] if self.entry.config.batching.max_batch_size else 1
            if batch and rows + n > batch_rows:
                results += self.run(batch)
                batch, rows = [], 0
            batch.append(request)
            rows += n
        if batch:
            results += self.run(batch)
        return results
