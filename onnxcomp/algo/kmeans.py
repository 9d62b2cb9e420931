"""Fast weighted 1-D k-means over many rows at once (one codebook per row); the exact 1-D DP that
checks it is :mod:`onnxcomp.algo.kmeans_dp`.

Every row (an output channel, or a whole tensor) is sorted once; in sorted order each cluster is a
contiguous run, so one Lloyd step is a ``searchsorted`` of the midpoints between centroids plus
two gathers from prefix sums of ``w`` and ``w*x``: O(rows * k) per iteration after an
O(n log n) sort, for all rows together (no Python loop over rows). Rows are made searchable as one
array by keying each value as ``row << 32 | order-preserving bits of the float32 value``.

Elements with weight 0 (e.g. exact zeros that must stay zero) take no part in the fit.
Initialisations (Han et al., Deep Compression): ``linear`` (evenly spaced between min and max),
``density`` (quantiles of the weighted CDF) and ``random`` (Forgy: k distinct data values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

INITS = ("linear", "density", "random")
CHUNK = 1 << 19  # values per block of rows fitted together (memory ~60 bytes per value, and
# shorter searches: a block's sorted values stay in cache)
# split points a swap tries, in cluster std units: three lose <= 0.013 dB to seven (mean <= 0.0015
# dB; 40 weights of effnet_lite0, vit_digits, resnet_digits and the PP-OCRv4 recogniser and detector
# at k = 4..64) and fit 10-27 % faster
_SPLITS = (-0.75, 0.0, 0.75)


@dataclass
class KMeansResult:
    """Sorted centroids [rows, k] (float64), labels [rows, n] (int16) and the weighted SSE per row."""

    centroids: np.ndarray
    labels: np.ndarray
    sse: np.ndarray


class _Sorted:
    """Rows sorted once, with prefix sums of w, w*x, w*x^2 and a flat search index."""

    def __init__(self, x32: np.ndarray, w: np.ndarray | None) -> None:
        self.rows, self.n = x32.shape
        self.order = np.argsort(x32, axis=1)
        self.xs = np.sort(x32, axis=1)  # the values of x32[order], several times faster than a gather
        x64 = self.xs.astype(np.float64)
        # the prefix sums of w, w*x, w*x^2 side by side in one array (flat per sum: one gather
        # serves all three, 2-D fancy indexing of each was a third of the fit's time)
        self.stride = self.n + 1
        self.prefix = np.empty((3, self.rows * self.stride), np.float64)
        self.cw, self.cwx, self.cwxx = (a.reshape(self.rows, self.stride) for a in self.prefix)
        if w is None:
            self.cw[:] = np.arange(self.stride, dtype=np.float64)
            wx = x64
        else:
            ws = np.take_along_axis(w, self.order, axis=1)
            _prefix(ws, self.cw)
            wx = ws * x64
        _prefix(wx, self.cwx)
        wx *= x64
        _prefix(wx, self.cwxx)
        self.lo = self.xs[:, :1].astype(np.float64)
        self.span = np.maximum(self.xs[:, -1:].astype(np.float64) - self.lo, 1e-300)
        self.band = np.arange(self.rows, dtype=np.float64)[:, None] * 4.0
        hay = self.xs.astype(np.float64)  # row r lives in [4r, 4r+1]
        hay -= self.lo
        hay *= 1.0 / self.span
        hay += self.band
        self.hay = hay.ravel()
        self.r = np.arange(self.rows)[:, None]

    def search(self, values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-row count of sorted elements below each of ``values`` [rows, q] (or a subset of rows)."""
        r = self.r if rows is None else rows[:, None]
        q = (np.clip((values - self.lo[r[:, 0]]) / self.span[r[:, 0]], -1.0, 2.0) + self.band[r[:, 0]]).ravel()
        pos = np.searchsorted(self.hay, q, side="left").reshape(values.shape)
        return pos - r * self.n

    def bounds(self, c: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """[rows, k+1] start of each cluster in sorted order (boundaries at the midpoints)."""
        inner = self.search((c[:, 1:] + c[:, :-1]) * 0.5, rows)
        edge = np.zeros((c.shape[0], 1), np.int64)
        return np.concatenate([edge, inner, edge + self.n], axis=1)

    def at(self, b: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """[3, rows, m]: the prefix sums of w, w*x, w*x^2 at sorted positions ``b`` [rows, m]."""
        r = self.r if rows is None else rows[:, None]
        return np.take(self.prefix, (r * self.stride + b).ravel(), axis=1).reshape(3, *b.shape)

    def sums(self, b: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-cluster sums of w, w*x, w*x^2 for boundaries ``b``."""
        return tuple(np.diff(self.at(b, rows), axis=2))


def _prefix(a: np.ndarray, out: np.ndarray) -> None:
    """Row-wise cumulative sums of ``a`` with a leading 0 column, into ``out`` [rows, n + 1]."""
    out[:, 0] = 0.0
    np.cumsum(a, axis=1, out=out[:, 1:])


def _init(s: _Sorted, k: int, init: str, draws: np.ndarray | None) -> np.ndarray:
    """Initial centroids [rows, k]: linear, density (weighted CDF quantiles) or random (Forgy:
    ``draws``, sorted uniform quantiles per row)."""
    total = s.cw[:, -1:]
    if init == "random":
        q = draws
    else:
        q = np.broadcast_to((np.arange(k) + 0.5) / k, (s.rows, k))
    # positions where the weighted CDF crosses each quantile (rows searched as one flat array)
    frac = s.cw[:, 1:] / np.where(total > 0, total, 1.0) + s.band
    pos = np.searchsorted(frac.ravel(), (q + s.band).ravel(), side="left").reshape(q.shape)
    pos = np.clip(pos - s.r * s.n, 0, s.n - 1)
    if init != "linear":
        return s.xs[s.r, pos].astype(np.float64)
    lo = s.xs[s.r[:, 0], np.clip(np.searchsorted(frac.ravel(), (s.band[:, 0] + 1e-300), "right")
                                 - s.r[:, 0] * s.n, 0, s.n - 1)][:, None].astype(np.float64)
    last = np.clip(np.searchsorted(frac.ravel(), (s.band[:, 0] + 1.0), "left") - s.r[:, 0] * s.n,
                   0, s.n - 1)
    hi = s.xs[s.r[:, 0], last][:, None].astype(np.float64)
    return lo + (hi - lo) * (np.arange(k) + 0.5)[None, :] / k


def _reseed(c: np.ndarray, sw: np.ndarray, sx: np.ndarray, sxx: np.ndarray) -> np.ndarray:
    """Move one empty cluster per row next to the row's worst cluster (split it); mask of rows moved."""
    empty = sw <= 0
    safe = np.where(sw > 0, sw, 1.0)
    sse = np.where(sw > 0, np.maximum(sxx - sx * sx / safe, 0.0), -1.0)
    j = np.argmax(sse, axis=1)
    hit = empty.any(axis=1) & (sse.max(axis=1) > 0)
    rows = np.flatnonzero(hit)
    if rows.size == 0:
        return hit
    jr = j[rows]
    e = np.argmax(empty[rows], axis=1)
    std = np.sqrt(sse[rows, jr] / safe[rows, jr])
    mean = sx[rows, jr] / safe[rows, jr]
    c[rows, e] = mean + 0.5 * std
    c[rows, jr] = mean - 0.5 * std
    c[rows] = np.sort(c[rows], axis=1)
    return hit


def _swap(s: _Sorted, c: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One merge+split move per row where it lowers the SSE (escapes Lloyd's local optima).

    Merging the cheapest adjacent pair and splitting the cluster whose best split (tried at a few
    points around its mean) gains most keeps k clusters; rows where the gain beats the cost take
    the move (in place). Only ``rows`` are tried; returns the rows that moved.
    """
    full, c = c, c[rows]
    b = s.bounds(c, rows)
    sw, sx, sxx = s.sums(b, rows)
    safe = np.where(sw > 0, sw, 1.0)
    mean = np.where(sw > 0, sx / safe, c)
    pair = sw[:, 1:] + sw[:, :-1]
    cost = np.where(pair > 0, sw[:, 1:] * sw[:, :-1] / np.where(pair > 0, pair, 1.0)
                    * (mean[:, 1:] - mean[:, :-1]) ** 2, 0.0)
    def sse(w_, x_, xx_):
        return np.where(w_ > 0, np.maximum(xx_ - x_ * x_ / np.where(w_ > 0, w_, 1.0), 0.0), 0.0)

    whole = sse(sw, sx, sxx)
    std = np.sqrt(whole / safe)
    gain = np.full(c.shape, -np.inf)
    parts = None
    at_b = s.at(b, rows)
    for t in _SPLITS:  # best of a few split points around each cluster's mean
        p = np.clip(s.search(mean + t * std, rows), b[:, :-1], b[:, 1:])
        at_p = s.at(p, rows)
        lo = tuple(at_p - at_b[:, :, :-1])
        hi = tuple(at_b[:, :, 1:] - at_p)
        g = whole - sse(*lo) - sse(*hi)
        better = g > gain
        gain = np.where(better, g, gain)
        parts = (lo, hi) if parts is None else tuple(
            tuple(np.where(better, new, old) for new, old in zip(n_, o_)) for n_, o_ in zip((lo, hi), parts))
    m = np.argmin(cost, axis=1)
    k = c.shape[1]
    cols = np.arange(k)[None, :]
    gain = np.where((cols == m[:, None]) | (cols == m[:, None] + 1), -np.inf, gain)
    j = np.argmax(gain, axis=1)
    idx = np.arange(rows.size)
    best, price = gain[idx, j], cost[idx, m]
    act = np.flatnonzero(best > price * (1 + 1e-9) + 1e-12 * np.abs(sxx).sum(axis=1))
    if act.size == 0:
        return act
    ma, ja = m[act], j[act]
    pw = np.maximum(pair[act, ma], 1e-300)
    merged = np.where(pair[act, ma] > 0, (sx[act, ma] + sx[act, ma + 1]) / pw, c[act, ma])
    (lw, lx, _), (rw, rx, _) = parts
    left = np.where(lw[act, ja] > 0, lx[act, ja] / np.maximum(lw[act, ja], 1e-300), c[act, ja])
    right = np.where(rw[act, ja] > 0, rx[act, ja] / np.maximum(rw[act, ja], 1e-300), c[act, ja])
    c[act, ma], c[act, ma + 1], c[act, ja] = merged, left, right
    full[rows[act]] = np.sort(c[act], axis=1)
    return rows[act]


def _lloyd(s: _Sorted, c: np.ndarray, iters: int, tol: float, rows: np.ndarray | None = None) -> np.ndarray:
    """Lloyd iterations (empty clusters re-seeded) on ``rows`` (all by default), in place.

    Rows whose centroids stop moving leave the active set, so later iterations cost only the
    rows still changing.
    """
    active = np.arange(s.rows) if rows is None else np.asarray(rows)
    limit = tol * s.span[:, 0]
    for _ in range(max(1, iters)):
        if active.size == 0:
            break
        cur = c[active]
        sw, sx, sxx = s.sums(s.bounds(cur, active), active)
        new = np.where(sw > 0, sx / np.where(sw > 0, sw, 1.0), cur)
        new.sort(axis=1)
        moved = np.abs(new - cur).max(axis=1)
        reseeded = _reseed(new, sw, sx, sxx)
        c[active] = new
        active = active[(moved > limit[active]) | reseeded]
    return c


def kmeans_rows(values: np.ndarray, k: int, *, weights: np.ndarray | None = None,
                init: str = "linear", iters: int = 40, seed: int = 0, tol: float = 1e-5,
                dtype: np.dtype | None = None, snap: Callable[[np.ndarray], np.ndarray] | None = None,
                swaps: int = 16) -> KMeansResult:
    """Weighted 1-D k-means of every row of ``values`` [rows, n] into ``k`` clusters.

    ``weights`` (broadcastable to ``values``, >= 0) weight each element's squared error; elements
    of weight 0 are ignored by the fit. With ``dtype`` (or any ``snap`` function, e.g. rounding to
    a grid), the centroids are rounded before the final assignment, so ``centroids[labels]`` is
    exactly what the codebook holds.
    """
    if init not in INITS:
        raise ValueError(f"init {init!r} is not one of {INITS}")
    x = np.asarray(values)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("values must be 2-D [rows, n] with n > 0")
    x32 = x.astype(np.float32, copy=False)
    if not np.isfinite(x32).all():  # callers skip NaN/Inf weights; float64 beyond float32 too
        raise ValueError("values must be finite in float32")
    w = None if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    if w is not None and not np.isfinite(w).all():
        w = np.where(np.isfinite(w), w, 0.0)
    draws = np.sort(np.random.default_rng(seed).random((x.shape[0], k)), axis=1) if init == "random" else None
    step = max(1, CHUNK // x.shape[1])  # rows are independent: bounded temporaries (~60 bytes per value)
    parts = [_fit_rows(x32[a:a + step], None if w is None else w[a:a + step], k, init,
                       None if draws is None else draws[a:a + step], iters, tol, dtype, snap, swaps)
             for a in range(0, x.shape[0], step)]
    if len(parts) == 1:
        return parts[0]
    return KMeansResult(centroids=np.concatenate([p.centroids for p in parts]),
                        labels=np.concatenate([p.labels for p in parts]), sse=np.concatenate([p.sse for p in parts]))


def _fit_rows(x32: np.ndarray, w: np.ndarray | None, k: int, init: str, draws: np.ndarray | None, iters: int,
              tol: float, dtype: np.dtype | None, snap: Callable | None, swaps: int) -> KMeansResult:
    """kmeans_rows on one block of rows (``draws``: the block's random init quantiles)."""
    s = _Sorted(x32, w)
    c = np.sort(_init(s, k, init, draws), axis=1)
    c = _lloyd(s, c, iters, tol)
    rows = np.arange(s.rows)
    for _ in range(swaps if k >= 3 else 0):  # merge two + split one needs 3 clusters; a row that
        # did not move keeps its state: only movers are tried again
        rows = _swap(s, c, rows)
        if rows.size == 0:
            break
        c = _lloyd(s, c, iters, tol, rows)
    c[s.cw[:, -1] <= 0] = 0.0
    c = _snapped(c, dtype, snap)
    b = s.bounds(c)
    sw, sx, sxx = s.sums(b)
    sse = np.maximum(sxx - 2 * c * sx + c * c * sw, 0.0).sum(axis=1)
    ranks = np.repeat(np.tile(np.arange(k, dtype=np.int16), s.rows), np.diff(b, axis=1).ravel())
    labels = np.empty(x32.shape, np.int16)
    np.put_along_axis(labels, s.order, ranks.reshape(x32.shape), axis=1)
    return KMeansResult(centroids=c, labels=labels, sse=sse)


def _snapped(c: np.ndarray, dtype: np.dtype | None, snap: Callable | None) -> np.ndarray:
    """Sorted centroids rounded by ``dtype`` / ``snap``; a row whose rounding is not finite (a
    centroid beyond float16, say) keeps its exact centroids, cast to float32 (always finite:
    the centroids lie within the row's float32 values)."""
    exact = c
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype is not None:
            c = c.astype(dtype).astype(np.float64)
        if snap is not None:
            c = np.asarray(snap(c), np.float64)
    bad = ~np.isfinite(c).all(axis=1)
    if bad.any():
        c = np.where(bad[:, None], exact.astype(np.float32).astype(np.float64), c)
    return np.sort(c, axis=1)
