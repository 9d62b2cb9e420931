"""Exact weighted 1-D k-means by dynamic programming: the optimum the fast k-means is checked against."""
from __future__ import annotations

import numpy as np


def kmeans_dp(values: np.ndarray, k: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Exact weighted 1-D k-means (optimal SSE) by dynamic programming; O(k * m^2) for m distinct values.

    For small inputs (tests, tiny tensors). Returns (sorted centroids of the used clusters, SSE).
    """
    x = np.asarray(values, np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape).ravel()
    keep = w > 0
    u, inv = np.unique(x[keep], return_inverse=True)
    uw = np.bincount(inv, weights=w[keep], minlength=u.size)
    m = u.size
    if m == 0:
        return np.zeros(0), 0.0
    k = min(k, m)
    pw = np.concatenate([[0.0], np.cumsum(uw)])
    px = np.concatenate([[0.0], np.cumsum(uw * u)])
    pxx = np.concatenate([[0.0], np.cumsum(uw * u * u)])
    i, j = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")  # segment [i, j)
    sw = pw[j] - pw[i]
    cost = np.where(j > i, pxx[j] - pxx[i] - (px[j] - px[i]) ** 2 / np.where(sw > 0, sw, 1.0), np.inf)
    cost = np.maximum(cost, 0.0)
    best = cost[0].copy()  # best[j]: one cluster over [0, j)
    arg = [np.zeros(m + 1, np.int64)]
    for _ in range(1, k):
        total = best[:, None] + cost  # split at i
        arg.append(np.argmin(total, axis=0))
        best = total[arg[-1], np.arange(m + 1)]
    cuts, j = [m], m
    for a in reversed(arg[1:]):
        j = int(a[j])
        cuts.append(j)
    cuts.append(0)
    cuts = cuts[::-1]
    cents = [(px[b] - px[a]) / (pw[b] - pw[a]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return np.array(cents), float(best[m])
