"""Per-layer sensitivity sweeps: quality vs compression level for one layer at a time.

prune / cluster change values only, so they run on a probe (weights fed as inputs: one
onnxruntime session per worker for every trial). factorize / structured rewrite the graph, so
each trial compresses a copy restricted to one layer and runs it. Layers are spread over
``jobs`` workers with joblib; its ``parallel_config`` context (e.g. a Dask or Ray backend)
is honoured, which is how a sweep scales out to a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxcomp import io
from onnxcomp.algo import masks
from onnxcomp.graph.weights import Weight, find_weights

METHODS = ("prune", "cluster", "factorize", "structured")
LEVELS = {"prune": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95), "cluster": (8, 6, 5, 4, 3, 2),
          "factorize": (0.25, 0.5, 0.65, 0.75), "structured": (0.25, 0.5, 0.75)}


@dataclass
class Sensitivity:
    """losses[layer][j]: relative output error with only that layer at levels[j]."""

    method: str
    levels: list
    layers: list[str]
    losses: list[list[float]]
    samples: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"method": self.method, "levels": self.levels, "samples": self.samples, "notes": self.notes,
                "layers": [{"layer": n, "loss": dict(zip(map(str, self.levels), row))}
                           for n, row in zip(self.layers, self.losses)]}


def _compress_values(method: str, w: Weight, values: np.ndarray, level) -> np.ndarray:
    if method == "prune":
        return values * masks.channel_mask(np.abs(values), w, float(level))
    from onnxcomp.algo.kmeans import kmeans_rows

    rows = masks.as_rows(values, w)
    res = kmeans_rows(rows, 2 ** int(level), dtype=values.dtype)
    return masks.from_rows(res.centroids[np.arange(len(rows))[:, None], res.labels].astype(values.dtype), w)


def _probe_chunk(model_bytes: bytes, names: list[str], method: str, levels: list, batches: list,
                 progress: Any = None) -> list:
    from onnxcomp.measure.sensitivity import Probe

    model = onnx.load_from_string(model_bytes)
    by_name = find_weights(model).by_name()
    probe = Probe(model, [by_name[n] for n in names], batches, threads=1)
    out = []
    for n in names:
        w = by_name[n]
        base = probe.values[n].reshape(w.shape)
        out.append([probe.loss({n: _compress_values(method, w, base, lv)}) for lv in levels])
        if progress is not None:
            progress("sensitivity", len(out), len(names))
    return out


def _rewrite_chunk(model_bytes: bytes, names: list[str], method: str, levels: list, batches: list,
                   progress: Any = None) -> list:
    from onnxcomp.config import FactorizeConfig, StructuredPruneConfig
    from onnxcomp.io.sessions import session
    from onnxcomp.measure.outputs import output_parts
    from onnxcomp.measure.sensitivity import relative_error
    from onnxcomp.pipeline.run import run

    model = onnx.load_from_string(model_bytes)
    ref_sess = session(model, threads=1)
    refs, parts = [ref_sess.run(None, b) for b in batches], output_parts(model)
    out = []
    for n in names:
        row = []
        for lv in levels:
            if method == "factorize":
                step = FactorizeConfig(ratio=float(lv), include=(n,), measure=False)  # the error, not the speed gate
            else:
                step = StructuredPruneConfig(ratio=float(lv), include=(n,), allocation="uniform")
            c = run(model, [step], correction=None, encoding="dense")
            sess = session(c.proto, threads=1)
            row.append(relative_error(refs, [sess.run(None, b) for b in batches], parts))
        out.append(row)
        if progress is not None:
            progress("sensitivity", len(out), len(names))
    return out


def sweep(model: onnx.ModelProto, data: Any, method: str = "prune", *, levels=None, samples: int = 32,
          jobs: int = 1, min_params: int = 1024, progress: Any = None) -> Sensitivity:
    """Measure each layer's sensitivity to ``method`` alone (see module doc). ``progress(label,
    done, total)`` is called per layer in-process (``jobs=1``), per finished chunk of workers."""
    from joblib import Parallel, delayed

    from onnxcomp.passes.prune.prune import select
    from onnxcomp.config import PruneConfig
    from onnxcomp.data.sampling import take_samples
    from onnxcomp.measure.capture import check_runs

    levels = list(levels or LEVELS[method])
    from onnxcomp.graph.layout import adapt_for

    from onnxcomp.graph import tail

    model = tail.head(adapt_for(model, data))  # samples first; outputs sized by the data: measured before them
    chosen, skipped = select(find_weights(model), PruneConfig(min_params=min_params))
    names = [w.name for w in chosen]
    batches = take_samples(data, samples)
    check_runs(model, batches)  # the data runs through the model, before the layers are measured
    n = sum(len(next(iter(b.values()))) for b in batches)
    chunks = [c.tolist() for c in np.array_split(np.array(names, dtype=object), max(1, min(jobs, len(names))))
              if len(c)]
    work = _probe_chunk if method in ("prune", "cluster") else _rewrite_chunk
    blob = io.serialize(model)  # lazy tensors read in: the workers get the whole model
    if jobs == 1:  # in-process: progress per layer
        parts = [work(blob, names, method, levels, batches, progress)] if names else []
    else:
        parts = []
        for part in Parallel(n_jobs=jobs, return_as="generator")(delayed(work)(blob, c, method, levels, batches)
                                                                 for c in chunks):
            parts.append(part)
            if progress is not None:
                progress("sensitivity", sum(len(p) for p in parts), len(names))
    losses = [row for part in parts for row in part]
    notes = [f"skipped {c.name}: {c.reason}" for c in skipped]
    return Sensitivity(method, levels, names, losses, n, notes)
