"""Pipeline partitioning: split an ONNX graph into stages that run on different devices.

A model larger than any one device's memory can still be served if its graph is cut into stages,
each small enough for a device, that run one after another on a micro-batch while the next
micro-batch enters the first stage. Where to cut is this module's answer:

- **Where a graph can be cut.** ONNX nodes are in topological order, so every position between
  two nodes is a cut; the tensors that cross it are those made before it (or graph inputs) and
  used after it (or graph outputs). The narrow waists, the positions where the fewest tensors
  cross (a transformer's hidden state and attention mask between two layers), are the cut
  candidates: they move the least data between devices.
- **How to balance.** Each node's cost is measured (ONNX Runtime's per-node profile over the
  model's own calibration samples, graph optimisations off so the profile names the graph's own
  nodes) or, without samples, modelled as the bytes of weights it reads. A dynamic programme
  over the candidates picks the cuts that minimise the most expensive stage, with every stage's
  weights within the memory limit.
- **The stages** are cut out with `onnx.utils.Extractor`; run in order, passing each stage the
  tensors it names, they compute what the whole graph computes.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kcloud.models.errors import ModelFileError


class PartitionError(ModelFileError):
    """The graph cannot be split as asked; the message says where it can be."""


@dataclass(frozen=True)
class Stage:
    index: int
    #: Node positions [first, last) in the graph's topological order.
    first: int
    last: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weight_bytes: int
    #: This stage's share of the whole graph's cost (the stages' shares add up to 1).
    cost_share: float
    path: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "nodes": [self.first, self.last],
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "weight_bytes": self.weight_bytes,
            "cost_share": self.cost_share,
            "path": str(self.path) if self.path else None,
        }


@dataclass(frozen=True)
class Partition:
    stages: tuple[Stage, ...]
    #: How node costs were found: measured (profiled) or modelled (weight bytes).
    cost_basis: str
    graph_outputs: tuple[str, ...] = field(default=())

    @property
    def balance(self) -> float:
        """The costliest stage against the mean stage (1.0: perfectly balanced)."""
        shares = [s.cost_share for s in self.stages]
        return max(shares) * len(shares)

    def describe(self) -> dict[str, Any]:
        return {
            "stages": [s.describe() for s in self.stages],
            "balance": self.balance,
            "cost_basis": self.cost_basis,
            "graph_outputs": list(self.graph_outputs),
        }


def _weights(model: onnx.ModelProto) -> dict[str, int]:
    return {
        init.name: int(np.prod(init.dims, dtype=np.int64)) * _itemsize(init.data_type)
        for init in model.graph.initializer
    }


def _itemsize(data_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4


def crossings(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """For each interior position p (1 … nodes-1), the tensors that cross a cut before node p."""
    nodes = list(model.graph.node)
    weights = {init.name for init in model.graph.initializer}
    produced_at = {i.name: -1 for i in model.graph.input if i.name not in weights}
    for position, node in enumerate(nodes):
        for name in node.output:
            produced_at[name] = position
    last_use: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in node.input:
            if name in produced_at:
                last_use[name] = position
    for output in model.graph.output:
        last_use[output.name] = len(nodes)
    return [
        tuple(sorted(name for name, made in produced_at.items() if made < p and last_use.get(name, -1) >= p))
        for p in range(1, len(nodes))
    ]


#: Most tensors a cut may send between devices: past this, a cut would move much of the graph's
#: working state instead of one activation and a few masks.
MAX_CUT_WIDTH = 4
#: A split whose costliest stage is within this factor of the mean is balanced enough to stop
#: widening the cut candidates for a better one.
BALANCED = 1.2


def cut_candidates(crossing: list[tuple[str, ...]], width: int = MAX_CUT_WIDTH) -> list[int]:
    """Positions where at most `width` tensors cross (`crossing`: the graph's `crossings`), in order."""
    return [p + 1 for p, c in enumerate(crossing) if len(c) <= width]


def node_costs(model_path: Path, feeds: list[dict[str, np.ndarray]] | None) -> tuple[list[float], str]:
    """Each node's cost: measured by ONNX Runtime's profiler over `feeds`, else its weight bytes."""
    model = onnx.load(str(model_path))
    nodes = list(model.graph.node)
    weights = _weights(model)
    if not feeds:
        return [
            float(sum(weights.get(i, 0) for i in n.input)) for n in nodes
        ], "modelled: weight bytes each node reads"
    import onnxruntime as ort

    for position, node in enumerate(model.graph.node):  # the profile names nodes: name them all
        node.name = f"kcloud_node_{position}"
    with tempfile.TemporaryDirectory() as scratch:
        named = Path(scratch) / "named.onnx"
        onnx.save(model, str(named))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(named), options, providers=["CPUExecutionProvider"])
        for feed in feeds:
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    spent: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            name = event["name"].removesuffix("_kernel_time")
            spent[name] = spent.get(name, 0.0) + float(event.get("dur", 0))
    return (
        [spent.get(f"kcloud_node_{p}", 0.0) for p in range(len(nodes))],
        f"measured: onnxruntime node profile over {len(feeds)} calibration batches",
    )


def _stage_weights(nodes: list[onnx.NodeProto], weights: dict[str, int], first: int, last: int) -> int:
    names = {name for node in nodes[first:last] for name in node.input if name in weights}
    return sum(weights[name] for name in names)


def choose_cuts(
    model: onnx.ModelProto,
    crossing: list[tuple[str, ...]],
    costs: list[float],
    stages: int,
    *,
    memory_limit: int | None = None,
    cut_after: list[str] | None = None,
) -> list[int]:
    """Cut positions for `stages` stages: the ones asked for (`cut_after` node names), or those
    that minimise the costliest stage with every stage's weights within `memory_limit`, trying
    the narrowest cuts first and widening them (up to `MAX_CUT_WIDTH` tensors) only while that
    buys a better balance."""
    nodes = list(model.graph.node)
    if stages < 1:
        raise PartitionError(f"a pipeline needs at least 1 stage, got {stages}")
    allowed = cut_candidates(crossing)
    if stages - 1 > len(allowed):
        raise PartitionError(
            f"{model.graph.name or 'the graph'} can be cut into at most {len(allowed) + 1} stages "
            f"(it has {len(allowed)} places where at most {MAX_CUT_WIDTH} tensors cross); asked for {stages}"
        )
    if cut_after:
        return _asked_cuts(nodes, allowed, cut_after, stages)
    weights = _weights(model)
    total = sum(costs) or 1.0
    best: tuple[float, list[int]] | None = None
    widths = sorted({len(c) for c in crossing if len(c) <= MAX_CUT_WIDTH})
    for width in widths:
        candidates = cut_candidates(crossing, width)
        if stages - 1 > len(candidates):
            continue
        found = _balanced_cuts(nodes, costs, weights, candidates, stages, memory_limit)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
        if best is not None and best[0] * stages / total <= BALANCED:
            break
    if best is None:
        biggest = max(weights.values(), default=0)
        raise PartitionError(
            f"no split into {stages} stages keeps every stage within {memory_limit} bytes of weights "
            f"(the largest single weight is {biggest} bytes); ask for more stages or bigger devices"
        )
    return best[1]


def _balanced_cuts(
    nodes: list[onnx.NodeProto],
    costs: list[float],
    weights: dict[str, int],
    candidates: list[int],
    stages: int,
    memory_limit: int | None,
) -> tuple[float, list[int]] | None:
    """(costliest stage, cuts) of the split over `candidates` that minimises the costliest stage
    with every stage's weights within `memory_limit`; None when none fits."""
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    bounds = [0, *candidates, len(nodes)]
    last = len(bounds) - 1
    # best[j][b]: the least possible costliest stage covering nodes up to bounds[b] in j stages.
    best = [[np.inf] * len(bounds) for _ in range(stages + 1)]
    came = [[-1] * len(bounds) for _ in range(stages + 1)]
    best[0][0] = 0.0

    @functools.cache
    def fits(a: int, b: int) -> bool:  # asked once per stage count otherwise: the same span's weights
        return memory_limit is None or _stage_weights(nodes, weights, bounds[a], bounds[b]) <= memory_limit

    for j in range(1, stages + 1):
        for b in range(1, len(bounds)):
            for a in range(b):
                if best[j - 1][a] == np.inf or not fits(a, b):
                    continue
                value = max(best[j - 1][a], float(prefix[bounds[b]] - prefix[bounds[a]]))
                if value < best[j][b]:
                    best[j][b], came[j][b] = value, a
    if best[stages][last] == np.inf:
        return None
    cuts, b = [], last
    for j in range(stages, 0, -1):
        b = came[j][b]
        cuts.append(bounds[b])
    return best[stages][last], sorted(cuts)[1:]


def _asked_cuts(
    nodes: list[onnx.NodeProto], candidates: list[int], cut_after: list[str], stages: int
) -> list[int]:
    index = {node.name: i for i, node in enumerate(nodes)}
    if len(cut_after) != stages - 1:
        raise PartitionError(f"{stages} stages need {stages - 1} cut(s); {len(cut_after)} given")
    cuts = []
    for name in cut_after:
        if name not in index:
            raise PartitionError(f"cannot cut after {name!r}: no node of that name in the graph")
        position = index[name] + 1
        if position not in candidates:
            where = ", ".join(nodes[p - 1].name for p in candidates[:6])
            raise PartitionError(
                f"cannot cut after {name!r}: more than {MAX_CUT_WIDTH} tensors cross there (or it is the "
                f"last node); it can be cut after: {where}{' …' if len(candidates) > 6 else ''}"
            )
        cuts.append(position)
    if sorted(set(cuts)) != cuts:
        raise PartitionError("cuts must name distinct nodes in graph order")
    return cuts


def partition(
    model_path: Path,
    stages: int,
    out_dir: Path,
    *,
    feeds: list[dict[str, np.ndarray]] | None = None,
    memory_limit: int | None = None,
    cut_after: list[str] | None = None,
) -> Partition:
    """Split the graph at `model_path` into `stages` stage files in `out_dir`."""
    model = onnx.load(str(model_path))
    costs, basis = node_costs(model_path, feeds)
    cuts = choose_cuts(model, crossings(model), costs, stages, memory_limit=memory_limit, cut_after=cut_after)
    return split_at(model, cuts, out_dir, stage_costs(costs, cuts), basis)


def stage_costs(costs: list[float], cuts: list[int]) -> list[float]:
    """Each stage's share of the graph's cost (they add up to 1) for stages cut at `cuts`."""
    bounds = [0, *cuts, len(costs)]
    total = sum(costs) or 1.0
    return [float(sum(costs[first:last]) / total) for first, last in itertools.pairwise(bounds)]


def stage_weight_bytes(model: onnx.ModelProto, cuts: list[int]) -> list[int]:
    """The weight bytes each stage cut at `cuts` holds (a weight two stages read is in both)."""
    nodes, weights = list(model.graph.node), _weights(model)
    bounds = [0, *cuts, len(nodes)]
    return [_stage_weights(nodes, weights, first, last) for first, last in itertools.pairwise(bounds)]


def split_at(
    model: onnx.ModelProto, cuts: list[int], out_dir: Path, cost_shares: list[float], cost_basis: str
) -> Partition:
    """Cut `model` before each node position in `cuts` into stage files `out_dir/stage-N.onnx`."""
    nodes = list(model.graph.node)
    bounds = [0, *cuts, len(nodes)]
    if sorted(set(bounds)) != bounds:
        raise PartitionError(f"cut positions must rise strictly within 1..{len(nodes) - 1}, got {cuts}")
    crossing = crossings(model)
    weights = _weights(model)
    graph_inputs = [i.name for i in model.graph.input if i.name not in weights]
    graph_outputs = tuple(o.name for o in model.graph.output)
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for index, (first, last) in enumerate(itertools.pairwise(bounds)):
        inputs = graph_inputs if first == 0 else list(crossing[first - 1])
        inputs = [name for name in inputs if any(name in n.input for n in nodes[first:last])]
        outputs = list(graph_outputs) if last == len(nodes) else list(crossing[last - 1])
        made_here = {name for node in nodes[first:last] for name in node.output}
        outputs = [name for name in outputs if name in made_here]
        path = out_dir / f"stage-{index}.onnx"
        stage_model = extractor.extract_model(inputs, outputs)
        onnx.save(stage_model, str(path))
        result.append(
            Stage(
                index,
                first,
                last,
                tuple(inputs),
                tuple(outputs),
                _stage_weights(nodes, weights, first, last),
                cost_shares[index],
                path,
            )
        )
    return Partition(tuple(result), cost_basis, graph_outputs)
