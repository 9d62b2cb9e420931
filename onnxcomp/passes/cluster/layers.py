"""Per-layer work of the cluster pass: input statistics from one engine walk, codebook refits on the
layer Hessian, granularities put on one footing by their GPTQ gain, and independent (data-free)
fits run a few at a time."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from onnxcomp.graph.weights import Weight
from onnxcomp.measure.engine import Engine
from onnxcomp.passes.base import Context
from onnxcomp.passes.cluster import seq as cluster_seq
from onnxcomp.passes.cluster.fit import GRID_MAX_K, Fit
from onnxcomp.passes.prune.obs import stats_request, walk_stats

LEDOIT = True  # GPTQ statistics shrunk by their Ledoit-Wolf intensity (benchmarks/shrinkage.py)


def layer_stats(model: onnx.ModelProto, weights: list[Weight], ctx: Context, gptq: bool,
                settings: dict) -> Iterator[tuple[str, list | None]]:
    """(weight name, its input statistics or None) in graph order, from one walk of the streaming
    engine: the work model's inputs, with cross moments to the model as it was before this pass
    when it is small enough to keep a copy (output matching). Without ``gptq``: no statistics."""
    if not gptq:
        for name in graph_order(model, [w.name for w in weights]):
            yield name, None
        return
    reference = None
    if cluster_seq.usable(model):
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
    requests = {w.name: stats_request(w) for w in weights}
    with Engine(model, reference, ctx.data, threads=ctx.threads, progress=ctx.progress, label="cluster",
                record=settings) as eng:
        for w, stats in walk_stats(eng, weights, requests, seed=ctx.seed, ledoit=LEDOIT):
            yield w.name, stats


def refit_codebooks(w: Weight, target: np.ndarray, values: np.ndarray, groups: list, k: int) -> np.ndarray:
    """``values`` with each channel's codebook refitted to ``target`` on the layer's Hessian."""
    from onnxcomp.passes.cluster.refit import refit_channels
    from onnxcomp.passes.prune.obs import _rows, _unrows

    grid = w.dtype == np.float32 and k <= GRID_MAX_K  # the table format cluster_fit.fit chose
    rows = refit_channels(_rows(w, target), _rows(w, values), [g.cov for g in groups], grid=grid)
    return _unrows(w, rows).astype(w.dtype)


def graph_order(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """``names`` ordered by their first consumer in the graph."""
    first: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        for x in node.input:
            first.setdefault(x, i)
    return sorted(names, key=lambda n: first.get(n, len(model.graph.node)))


def rescale_by_gptq(w: Weight, local: dict[tuple[str, int], float], fits: dict[str, Fit],
                     groups: list | None) -> None:
    """Put the granularities of ``w`` on one footing: GPTQ recovers more of a coarse codebook's
    error (a shared codebook: 4-8x on short rows, per-channel ones 2x), so each granularity's
    curve is scaled by its GPTQ gain at the measured width (output error on the layer Hessian)."""
    if len(fits) < 2 or not groups:
        return
    from onnxcomp.passes.cluster.refit import row_error
    from onnxcomp.passes.prune.obs import _rows, gptq_values

    h = [np.asarray(g.cov, np.float64) for g in groups]
    ref = np.split(_rows(w, w.values()).astype(np.float64), len(h))

    def out_err(values: np.ndarray) -> float:
        rows = np.split(_rows(w, values), len(h))
        return float(sum(row_error(v, t, m).sum() for v, t, m in zip(rows, ref, h)))

    gain = {}
    for g, f in fits.items():
        near = out_err(f.values.reshape(w.shape))
        gain[g] = out_err(gptq_values(w, w.values(), f.values.reshape(w.shape), groups, False, f.table)) / near \
            if near > 0 else 1.0
    first = next(iter(fits))
    for g, b in local:
        local[g, b] *= gain[g] / gain[first]


MAX_WORKERS = 4  # independent fits at once (each holds a few copies of its weight)


def in_order(names: list[str], work: Callable[[str, np.ndarray], Any], read: Callable[[str], np.ndarray],
             threads: int | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, work(name, read(name)))`` in ``names`` order, computed by a few threads (numpy
    releases the GIL in the k-means' sorts and searches). At most one job per thread is in
    flight, so memory stays a few weights' worth; ``read`` runs in the calling thread."""
    workers = max(1, min(len(names), threads or os.cpu_count() or 1, MAX_WORKERS))
    if workers == 1:
        for n in names:
            yield n, work(n, read(n))
        return
    todo, running = iter(names), deque()
    with ThreadPoolExecutor(workers) as pool:
        def submit() -> None:
            n = next(todo, None)
            if n is not None:
                running.append((n, pool.submit(work, n, read(n))))

        for _ in range(workers):
            submit()
        while running:
            n, job = running.popleft()
            out = job.result()
            submit()
            yield n, out
