"""Spreading a global budget across layers: per-layer levels from scores or measured curves.

Every allocator returns one level (e.g. sparsity) per layer such that the parameter-weighted mean
meets the global target, with each layer's level capped at ``cap``.
"""
from __future__ import annotations

import heapq
from typing import Hashable, Sequence

import numpy as np


def _fractions_below(sorted_scores: Sequence[np.ndarray], t: float, cap: float | Sequence[float]) -> np.ndarray:
    return np.minimum([np.searchsorted(s, _key(t, s.dtype), side="left") / max(s.size, 1)
                       for s in sorted_scores], cap)


def _key(t: float, dtype: np.dtype):
    """``t`` in the array's own dtype, rounded up, so the count below it is the count below t (a
    float64 key made numpy copy a whole float32 array to float64 on every search)."""
    if np.dtype(dtype).kind != "f":
        return t
    k = np.asarray(t).astype(dtype)
    return np.nextafter(k, np.inf, dtype=dtype) if float(k) < t else k


def by_threshold(sorted_scores: Sequence[np.ndarray], target: float,
                 cap: float | Sequence[float] = 1.0) -> np.ndarray:
    """One global threshold over comparable per-weight scores (each layer's array sorted).

    Returns per-layer fractions below the threshold, capped at ``cap`` (one for all layers or one
    per layer), whose size-weighted mean is ``target`` (bisection on the threshold; capped layers
    push the threshold up for the rest).
    """
    sizes = np.array([s.size for s in sorted_scores], dtype=np.float64)
    need = target * sizes.sum()
    lo = min(float(s[0]) for s in sorted_scores if s.size) - 1.0
    hi = max(float(s[-1]) for s in sorted_scores if s.size) + 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if (_fractions_below(sorted_scores, mid, cap) * sizes).sum() < need:
            lo = mid
        else:
            hi = mid
    return _fractions_below(sorted_scores, hi, cap)


def lamp_scores(scores: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """LAMP scores (Lee et al., ICLR 2021) of one layer, sorted ascending.

    For weights sorted by score, lamp(u) = s_u^2 / sum_{v >= u} s_v^2: comparable across layers,
    so one global threshold gives layer-adaptive sparsities without data.
    """
    scores = np.asarray(scores)
    # a copy, sorted in place; float32 scores stay float32 (widening is exact and keeps the order,
    # so each block is widened after the sort: no float64 copy of a whole embedding table)
    a = np.array(scores, dtype=np.float32 if scores.dtype == np.float32 else np.float64).reshape(-1)
    np.abs(a, out=a)
    a.sort()
    # kept as float32: every layer's scores are held at once (float64 doubled a model's weight bytes);
    # the suffix sums run a block at a time from the top, carrying the running sum in front of each
    # block (the same additions in the same order as one cumsum, without its tensor-sized temporaries)
    out = np.zeros(a.size, np.float32)
    total = 0.0
    for end in range(a.size, 0, -block):
        lo = max(end - block, 0)
        sq = a[lo:end].astype(np.float64) ** 2
        suffix = np.cumsum(np.concatenate(([total], sq[::-1])))[:0:-1]
        out[lo:end] = np.divide(sq, suffix, out=np.zeros_like(sq), where=suffix > 0)
        total = suffix[0]
    return out


def uniform(sizes: Sequence[int], target: float, cap: float = 1.0) -> np.ndarray:
    """The same level for every layer."""
    return np.full(len(sizes), min(target, cap))


def from_curves(levels: np.ndarray, losses: np.ndarray, sizes: Sequence[int], target: float,
                grid: int = 50, cap: float | Sequence[float] = 1.0) -> np.ndarray:
    """Per-layer levels minimising the summed measured loss subject to the global budget.

    ``losses[l, j]`` is the loss of compressing layer ``l`` alone at ``levels[j]`` (a loss of 0 at
    level 0 is implied). Curves are made monotone and interpolated on a fine grid; a Lagrange
    multiplier is bisected so that the size-weighted mean level meets ``target``; no layer goes
    beyond its ``cap`` (one for all layers or one per layer).
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    xs = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    fine = np.linspace(0.0, xs[-1], grid * int(np.ceil(xs[-1] * 10)) + 1)
    curves = []
    for row in np.asarray(losses, dtype=np.float64):
        ys = np.maximum.accumulate(np.concatenate([[0.0], np.maximum(row, 0.0)]))
        curves.append(np.interp(fine, xs, ys))
    curves = np.array(curves)  # [L, G]
    curves[fine[None, :] > np.broadcast_to(np.asarray(cap, np.float64), sizes.shape)[:, None] + 1e-12] = np.inf
    need = target * sizes.sum()
    share = sizes / sizes.sum()

    def pick(lam: float) -> np.ndarray:
        # each layer: argmin loss(s) - lam * share * s  (share makes lam scale-free)
        cost = curves - lam * share[:, None] * fine[None, :]
        return fine[np.argmin(cost, axis=1)]

    top = np.where(np.isfinite(curves), fine[None, :], 0.0).max(axis=1)  # each layer's largest allowed level
    if (top * sizes).sum() < need:
        return top
    lo, hi = 0.0, 1.0
    while (pick(hi) * sizes).sum() < need and hi < 1e12:
        hi *= 4.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if (pick(mid) * sizes).sum() < need:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def allocate(errors: dict[str, dict[Hashable, float]], sizes: dict[str, int], budget: float,
             costs: dict[str, dict[Hashable, int]] | None = None, *,
             limit: float | None = None) -> dict[str, Hashable]:
    """The option per layer minimising the summed error with the stored bits <= budget * sum(size)
    (or <= ``limit`` bits when given).

    ``errors[n]`` maps each option of layer ``n`` (its bits, or a (granularity, bits) pair) to
    its predicted error; ``costs[n][option]``: its stored bits (default: size * bits, indices
    only). Every layer starts at its cheapest option and moves along the lower convex hull of its
    (cost, error) points, the step with the largest error drop per added bit first, while the
    budget allows (options off the hull never pay for their bits better than a hull mix).
    """
    cost = costs or {n: {b: sizes[n] * b for b in e} for n, e in errors.items()}  # type: ignore[operator]
    hulls = {n: _hull([(cost[n][o], errors[n][o], o) for o in e]) for n, e in errors.items()}
    at = {n: 0 for n in hulls}
    spent = sum(h[0][0] for h in hulls.values())
    limit = budget * sum(sizes.values()) if limit is None else limit
    heap: list = []

    def push(n: str) -> None:
        h, i = hulls[n], at[n]
        if i + 1 < len(h):
            heapq.heappush(heap, (-(h[i][1] - h[i + 1][1]) / max(h[i + 1][0] - h[i][0], 1), n))

    for n in hulls:
        push(n)
    while heap:
        _, n = heapq.heappop(heap)
        h, i = hulls[n], at[n]
        step = h[i + 1][0] - h[i][0]
        if spent + step <= limit + 1e-9:
            at[n] += 1
            spent += step
            push(n)
    return {n: hulls[n][i][2] for n, i in at.items()}


def _hull(points: list[tuple[float, float, Hashable]]) -> list[tuple[float, float, Hashable]]:
    """The lower convex hull of (cost, error, option) points, cheapest first, error falling."""
    out: list[tuple[float, float, Hashable]] = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if out and p[1] >= out[-1][1]:
            continue  # costs more, no better
        while len(out) >= 2 and _cross(out[-2], out[-1], p) <= 0:
            out.pop()  # out[-1] lies on or above the segment from out[-2] to p
        out.append(p)
    return out


def _cross(a, b, c) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
