"""Spreading a global budget across layers: per-layer levels from scores or measured curves.

Every allocator returns one level (e.g. sparsity) per layer such that the parameter-weighted mean
meets the global target, with each layer's level capped at ``cap``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _fractions_below(sorted_scores: Sequence[np.ndarray], t: float, cap: float) -> np.ndarray:
    return np.array([min(np.searchsorted(s, t, side="left") / max(s.size, 1), cap)
                     for s in sorted_scores])


def by_threshold(sorted_scores: Sequence[np.ndarray], target: float, cap: float = 1.0) -> np.ndarray:
    """One global threshold over comparable per-weight scores (each layer's array sorted).

    Returns per-layer fractions below the threshold, capped at ``cap``, whose size-weighted mean
    is ``target`` (bisection on the threshold; capped layers push the threshold up for the rest).
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


def lamp_scores(scores: np.ndarray) -> np.ndarray:
    """LAMP scores (Lee et al., ICLR 2021) of one layer, sorted ascending.

    For weights sorted by score, lamp(u) = s_u^2 / sum_{v >= u} s_v^2: comparable across layers,
    so one global threshold gives layer-adaptive sparsities without data.
    """
    sq = np.sort(np.abs(scores.astype(np.float64, copy=False)).reshape(-1)) ** 2
    suffix = np.cumsum(sq[::-1])[::-1]
    # kept as float32: every layer's scores are held at once (float64 doubled a model's weight bytes)
    return np.divide(sq, suffix, out=np.zeros_like(sq), where=suffix > 0).astype(np.float32)


def uniform(sizes: Sequence[int], target: float, cap: float = 1.0) -> np.ndarray:
    """The same level for every layer."""
    return np.full(len(sizes), min(target, cap))


def from_curves(levels: np.ndarray, losses: np.ndarray, sizes: Sequence[int], target: float,
                grid: int = 50) -> np.ndarray:
    """Per-layer levels minimising the summed measured loss subject to the global budget.

    ``losses[l, j]`` is the loss of compressing layer ``l`` alone at ``levels[j]`` (a loss of 0 at
    level 0 is implied). Curves are made monotone and interpolated on a fine grid; a Lagrange
    multiplier is bisected so that the size-weighted mean level meets ``target``.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    xs = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    fine = np.linspace(0.0, xs[-1], grid * int(np.ceil(xs[-1] * 10)) + 1)
    curves = []
    for row in np.asarray(losses, dtype=np.float64):
        ys = np.maximum.accumulate(np.concatenate([[0.0], np.maximum(row, 0.0)]))
        curves.append(np.interp(fine, xs, ys))
    curves = np.array(curves)  # [L, G]
    need = target * sizes.sum()
    share = sizes / sizes.sum()

    def pick(lam: float) -> np.ndarray:
        # each layer: argmin loss(s) - lam * share * s  (share makes lam scale-free)
        cost = curves - lam * share[:, None] * fine[None, :]
        return fine[np.argmin(cost, axis=1)]

    if (fine[-1] * sizes).sum() < need:
        return np.full(len(sizes), fine[-1])
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
