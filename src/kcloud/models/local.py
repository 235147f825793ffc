"""A plain in-process path through a model: pipeline + one ONNX Runtime CPU session.

The serving runtime (batcher, replicas, devices) lives elsewhere; this is the reference path
used to measure a model's FP32 accuracy when it is built, and by tests to check a model end to
end without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        self.session = ort.InferenceSession(str(entry.weights_path), options,
                                            providers=["CPUExecutionProvider"])
        self.graph_outputs = [o.name for o in self.session.get_outputs()]

    def run(self, requests: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Answer several requests as one batch; outputs come back in request order."""
        items = [self.pipeline.prepare(request) for request in requests]
        feeds = self.pipeline.collate(items)
        values = self.session.run(self.graph_outputs, feeds)
        return self.pipeline.split(dict(zip(self.graph_outputs, values, strict=True)), items)

    def run_all(
        self,
        requests: Sequence[dict[str, np.ndarray]],
        batch_rows: int = 32,
        sort_key: Callable[[dict[str, np.ndarray]], float] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Answer many requests in batches of about `batch_rows` rows, in request order.

        `sort_key` (e.g. text length) groups similar requests into a batch, as
        sentence-transformers does, so that little compute goes to padding.
        """
        limit = self.entry.config.batching.max_batch_size or 1
        batch_rows = max(1, min(batch_rows, limit))
        order = list(range(len(requests)))
        if sort_key is not None:
            order.sort(key=lambda i: sort_key(requests[i]))
        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        batch: list[int] = []
        rows = 0

        def flush() -> None:
            for index, output in zip(batch, self.run([requests[i] for i in batch]), strict=True):
                results[index] = output

        for index in order:
            n = (
                next(iter(requests[index].values())).shape[0]
                if self.entry.config.batching.max_batch_size
                else 1
            )
            if batch and rows + n > batch_rows:
                flush()
                batch, rows = [], 0
            batch.append(index)
            rows += n
        if batch:
            flush()
        return results


def text_length(request: dict[str, np.ndarray]) -> float:
    """A sort key for text requests: total bytes of their BYTES inputs."""
    return float(
        sum(len(item) for array in request.values() if array.dtype == object for item in array.reshape(-1))
    )
