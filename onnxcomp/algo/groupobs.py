"""Structured Optimal Brain Surgeon: which input channels of a few linear layers to remove, in what
order, at what output error, and the least-squares refit of the others.

A *problem* is one layer reading the channels: its weight as a ``[D, out]`` matrix ``W`` (rows =
input features, ``y = Wᵀ x``) and the second moment ``H = E[x xᵀ]`` of its features. A *unit*
(a channel, a head, channels tied by a residual Add) owns a set of rows ``S`` in each problem.
Removing ``S`` and refitting the remaining rows by least squares, ``min E||Wᵀx - W'ᵀx_K||²``,
adds the output error

    Δ = tr(W_Sᵀ [H⁻¹]_SS⁻¹ W_S)

and the refit is the OBS update ``W ← W - H⁻¹_:S [H⁻¹]_SS⁻¹ W_S``, ``H⁻¹ ← H⁻¹ - H⁻¹_:S
[H⁻¹]_SS⁻¹ H⁻¹_S:`` (Optimal Brain Compression, Frantar & Alistarh 2022; for a single row per
unit this is ThiNet's greedy channel selection with the least-squares reconstruction folded in).
A unit read by several layers costs the sum of its errors there, each relative to that layer's
output energy ``tr(Wᵀ H W)``. :func:`removal_curve` removes units greedily, cheapest first (or in
a given order), with exact costs at the time of each removal: the cumulative error against units
removed is the curve a budget allocator spends on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dgemm, dger

DAMP = 1e-2  # ridge on H, a fraction of its mean diagonal (as in OBS / GPTQ): pulls the refit toward W
CHUNK = 96  # greedy picks up to alive/CHUNK units between two cost refreshes (each removal stays exact)


@dataclass
class Problem:
    """One layer reading the units: ``w`` [D, out], ``h`` [D, D], ``cols[u]`` the rows unit u owns."""

    w: np.ndarray
    h: np.ndarray
    cols: list[np.ndarray]


def damped(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    lam = damp * max(float(np.mean(np.diag(h))), 1e-12)
    return h + lam * np.eye(len(h))


class _State:
    def __init__(self, p: Problem, n_units: int, damp: float) -> None:
        self.w = np.array(p.w, np.float64)
        self.cols = p.cols
        hinv = np.linalg.inv(damped(np.asarray(p.h, np.float64), damp))
        self.hinv = np.asfortranarray(0.5 * (hinv + hinv.T))  # Fortran order: BLAS updates it in place
        self.norm = max(float(np.sum((np.asarray(p.h, np.float64) @ self.w) * self.w)), 1e-30)
        self.cost = np.zeros(n_units)
        buckets: dict[int, list[int]] = {}
        for u, c in enumerate(p.cols):
            if len(c):
                buckets.setdefault(len(c), []).append(u)
        self.buckets = {s: (np.array(us), np.stack([p.cols[u] for u in us])) for s, us in buckets.items()}

    def refresh(self, alive: np.ndarray) -> None:
        for s, (units, idx) in self.buckets.items():
            sel = alive[units]
            if not sel.any():
                continue
            u, ix = units[sel], idx[sel]
            if s == 1:
                d = np.maximum(np.diag(self.hinv)[ix[:, 0]], 1e-30)
                c = (self.w[ix[:, 0]] ** 2).sum(1) / d
            else:
                m = self.hinv[ix[:, :, None], ix[:, None, :]]  # [U, s, s]
                wc = self.w[ix]  # [U, s, out]
                x = np.linalg.solve(m + 1e-12 * np.eye(s), wc)
                c = (wc * x).sum((1, 2))
            self.cost[u] = np.maximum(c, 0.0) / self.norm

    def remove(self, u: int) -> float:
        s = self.cols[u]
        if not len(s):
            return 0.0
        m = self.hinv[np.ix_(s, s)]
        minv = np.linalg.pinv(m, hermitian=True)
        ws = self.w[s]
        err = max(float(np.sum(ws * (minv @ ws))), 0.0) / self.norm
        hs = self.hinv[:, s]
        self.w -= hs @ (minv @ ws)
        if len(s) == 1:
            self.hinv = dger(-minv[0, 0], hs[:, 0], hs[:, 0], a=self.hinv, overwrite_a=1)
        else:
            self.hinv = dgemm(-1.0, hs @ minv, hs, beta=1.0, c=self.hinv, trans_b=1, overwrite_c=1)
        self.w[s] = 0.0
        self.hinv[s, :] = 0.0
        self.hinv[:, s] = 0.0
        self.cost[u] = 0.0
        return err


def removal_curve(problems: list[Problem], n_units: int, max_remove: int, order: np.ndarray | None = None,
                  damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """Remove up to ``max_remove`` units, greedily by least added error or in ``order``.

    Returns ``(removed, added)``: the units in removal order and the relative output error each
    added when it went (summed over the problems; cumulative sums give the error curve).
    """
    states = [_State(p, n_units, damp) for p in problems]
    alive = np.ones(n_units, bool)
    removed: list[int] = []
    added: list[float] = []
    max_remove = min(max_remove, n_units)
    while len(removed) < max_remove:
        if order is not None:
            picks = [int(order[len(removed)])]
        else:
            for st in states:
                st.refresh(alive)
            total = np.sum([st.cost for st in states], axis=0) if states else np.zeros(n_units)
            cand = np.flatnonzero(alive)
            k = max(1, -(-len(cand) // CHUNK))
            picks = cand[np.argsort(total[cand], kind="stable")[:k]]
        for u in picks:
            added.append(sum(st.remove(int(u)) for st in states))
            alive[u] = False
            removed.append(int(u))
            if len(removed) >= max_remove:
                break
    return np.array(removed, np.int64), np.array(added)


def mean_fold(w: np.ndarray, mean: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept rows of ``w`` [D, out] unchanged, the removed rows' mean contribution added to the
    last (bias) row: ``b += W_Rᵀ E[x_R]`` (``mean`` = E[x] per row)."""
    w = np.asarray(w, np.float64)
    keep = np.asarray(keep, bool)
    out = w[keep].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        out[-1] += np.asarray(mean, np.float64)[~keep] @ w[~keep]
    return out
