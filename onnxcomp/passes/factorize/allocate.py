"""Per-layer ranks from one global budget: the MACs removed go where the output error per MAC saved
is lowest.

Each layer offers options: every rank (a multiple of ``--round-to``) of every method that applies,
with its cost (MACs per sample summed over the layer's uses; params when some shape is unknown)
and its *relative output error energy* ``E||W x - W' x||² / E||W x||²`` on the layer's own inputs,
read for all ranks at once from the whitened spectra (:mod:`onnxcomp.algo.rankcurve`; the weight
error without data), plus "keep" (the original cost, no error). One allocator
(:func:`onnxcomp.algo.allocation.allocate`: greedy along each layer's lower convex hull of
(cost, error), the largest error drop per MAC first) picks one option per layer so that the total
cost is at most ``1 - ratio`` of the layers' original cost and the summed relative error is
smallest. A layer whose every rewrite costs more error per MAC saved than the budget needs stays
as it is; with ``--measure`` only ranks predicted faster in the micro-benchmark are offered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp.algo.allocation import allocate
from onnxcomp.algo.linalg import round_rank
from onnxcomp.algo.lowrank import MatrixSVD, SpatialSVD, Tucker2
from onnxcomp.algo.rankcurve import nested_curve, svd_curve, tucker_curve
from onnxcomp.passes.factorize.plan import cost
from onnxcomp.passes.rewrite import Layer, attr

KEEP = ("keep", ())


@dataclass(frozen=True)
class Option:
    """One rewrite of one layer: method, ranks, cost (MACs or params) and relative error energy."""

    method: str
    ranks: tuple[int, ...]
    cost: int
    error: float

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return (self.method, self.ranks)


def rank_grid(lay: Layer, method: str, step: int, unit: int) -> list[tuple[int, ...]]:
    """Every rank (multiple of ``step``, and full rank) whose cost is below the original's."""
    base = cost(lay, None)[unit]
    o, cg = lay.kernel.shape[0] // lay.group, lay.kernel.shape[1]
    if method == "tucker2":
        full = cg
    elif method == "spatial":
        kh, kw = lay.kernel.shape[2:]
        full = min(cg * kh, o * kw)
    else:
        full = min(o, int(np.prod(lay.kernel.shape[1:])))
    out = []
    for r in sorted({round_rank(r, step, full) for r in range(step, full + step, step)}):
        ranks = (r, round_rank(max(1, round(r * o / cg)), step, o)) if method == "tucker2" else (r,)
        if cost(lay, method, ranks)[unit] < base:
            out.append(ranks)
    return out


def _group_curve(method: str, w: np.ndarray, cov: np.ndarray | None, grid: list[tuple[int, ...]]) -> tuple[float, np.ndarray]:
    """(output energy, error energy at each grid point) of one group's weight ``w``."""
    ranks = [g[0] for g in grid]
    if method == "svd":
        return svd_curve(MatrixSVD(w, cov).spectrum, ranks)
    if method == "spatial":
        sp = SpatialSVD(w, cov)
        if cov is None:  # data-free: the truncated SVD itself (no refit)
            return svd_curve(sp.spectrum, ranks)
        o, c, kh, kw = w.shape
        v = sp.vertical(max(ranks))
        first = np.einsum("rci,jk->rjcik", v, np.eye(kw)).reshape(len(v) * kw, c * kh * kw)
        wf = np.asarray(w, np.float64).reshape(o, -1)
        w_sigma = wf @ cov
        return float(np.sum(w_sigma * wf)), nested_curve(w_sigma, float(np.sum(w_sigma * wf)), first, cov, kw, ranks)
    tk = Tucker2(w, cov, iters=0)
    first, u_out = tk.projections(max(ranks), max(g[1] for g in grid))
    kh, kw = w.shape[2:]
    return tucker_curve(w, cov, first, u_out, list(grid), kh * kw)


def layer_options(lay: Layer, methods: list[str], stats: list | None, step: int, unit: int) -> list[Option]:
    """Every rewrite of ``lay`` that lowers its cost, with its relative output error energy.

    ``stats``: the layer's input statistics per group (None: the weight error, data-free).
    """
    parts = np.split(lay.kernel, lay.group, axis=0) if lay.group > 1 else [lay.kernel]
    out = []
    for method in methods:
        grid = rank_grid(lay, method, step, unit)
        if not grid:
            continue
        total, err = 0.0, np.zeros(len(grid))
        for k, w in enumerate(parts):
            cov = stats[k].cov if stats else None
            t, e = _group_curve(method, w, cov, grid)
            total, err = total + t, err + e
        rel = err / total if total > 0 else np.zeros(len(grid))
        out += [Option(method, g, int(cost(lay, method, g)[unit]), float(r)) for g, r in zip(grid, rel)]
    return out


PROBE_LEVEL = 0.02  # relative output error energy of the probe perturbation (a linear regime)


def probe_weight(lay: Layer, stats: list | None, level: float = PROBE_LEVEL) -> tuple[np.ndarray, float] | None:
    """The weight (stored layout) truncated by a whitened SVD, the same rank in every group, to about
    ``level`` relative output error energy on the layer's inputs; (values, that error), or None if
    no rank below full has any error."""
    parts = np.split(lay.kernel, lay.group, axis=0) if lay.group > 1 else [lay.kernel]
    makers = [MatrixSVD(w, stats[k].cov if stats else None) for k, w in enumerate(parts)]
    full = min(m.full for m in makers)
    ranks = list(range(1, full))
    if not ranks:
        return None
    curves = [svd_curve(m.spectrum, ranks) for m in makers]
    total = sum(t for t, _ in curves)
    rel = sum(e for _, e in curves) / max(total, 1e-30)
    if rel[0] <= 0:
        return None
    k = int(np.argmin(np.abs(np.log(np.maximum(rel, 1e-30) / level))))
    approx = np.concatenate([m.approx(m.factors(ranks[k])) for m in makers], axis=0)
    if lay.kind != "conv" and not (lay.weight.role == "gemm_b" and attr(lay.nodes[0], "transB", 0)):
        approx = approx.T  # stored [K, O]
    return approx.reshape(lay.weight.values().shape).astype(lay.weight.dtype), float(rel[k])


def spend(options: dict[str, list[Option]], before: dict[str, int], ratio: float,
          gains: dict[str, float] | None = None) -> dict[str, Option | None]:
    """The option per layer (None: keep it) that removes ``ratio`` of the layers' total cost with the
    least summed predicted model-output error ``gain × relative error energy`` (see the module doc)."""
    names = [n for n in options if options[n]]
    if not names:
        return {n: None for n in options}
    g = gains or {}
    errors = {n: {KEEP: 0.0, **{o.key: g.get(n, 1.0) * o.error for o in options[n]}} for n in names}
    costs = {n: {KEEP: before[n], **{o.key: o.cost for o in options[n]}} for n in names}
    limit = (1.0 - ratio) * sum(before[n] for n in names)
    chosen = allocate(errors, {n: before[n] for n in names}, 1.0, costs, limit=limit)
    by_key = {n: {o.key: o for o in options[n]} for n in names}
    return {n: (None if n not in chosen or chosen[n] == KEEP else by_key[n][chosen[n]]) for n in options}


def summary(choice: dict[str, Option | None], before: dict[str, int],
            gains: dict[str, float] | None = None) -> tuple[int, int, float]:
    """(cost before, cost after, predicted model-output relative error energy) of an allocation."""
    g = gains or {}
    b = sum(before[n] for n in choice)
    a = sum(o.cost if o is not None else before[n] for n, o in choice.items())
    return b, a, math.fsum(g.get(n, 1.0) * o.error for n, o in choice.items() if o is not None)


def floor_gains(gains: dict[str, float], names: list[str]) -> dict[str, float]:
    """Gains for every layer in ``names``: measured ones floored at 1 % of their median (a probe that
    saw no effect is not proof of none), the median where none was measured."""
    vals = [v for v in gains.values() if np.isfinite(v)]
    med = float(np.median(vals)) if vals else 1.0
    return {n: max(gains.get(n, med), 0.01 * med) for n in names}
