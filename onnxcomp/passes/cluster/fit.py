"""The numbers behind the cluster pass: codebook values for one weight at one granularity.

Every result is written so that a standard-ONNX decoder rebuilds it bit-exactly:
  tensor   k-means over the whole tensor; centroids in the weight's dtype.
  channel  k-means per output channel. float32 weights at <= 6 bits snap the centroids to an
           int8 grid times a float16 scale per channel (q * s is exact in float32; the table
           then costs k+2 bytes per channel, not 2k or 4k); above, centroids are rounded to float16
           (a 2^-11 relative change, far below the quantisation step) so the table halves.
  shared   one k-means over every channel divided by its float16 scale (absmax / 2047),
           centroids snapped to integers <= 2047; weight = q[idx] * s[c], exact in float32.
  grid     no k-means: a uniform grid per output channel, weight = round(w / step[c]) * step[c]
           with a float16 step proportional to the channel's rms (channels keep the same
           relative error, as per-channel codebooks do: a per-tensor step starves channels a
           following BatchNorm scales up). Meant for the variable-length code
           (:mod:`onnxcomp.encode.vlc`): at the same error a uniform grid's indices carry
           0.5-0.7 fewer bits of entropy than a 2^b-entry k-means codebook's (measured on
           effnet_lite0's 1x1 convs and classifier), and the grid costs 2 bytes per channel, not
           k + 2. ``k = 2^b`` sets the step so a Gaussian row would take about b bits
           (step = sqrt(2 pi e) * rms / 2^b); the bits it really takes are counted from the code
           (``Fit.coded_bits``).
Exact zeros stay zero: they take no part in the fit, and when fewer than half the weights are
zero they keep a code of their own (k - 1 clusters for the nonzeros).
Float16 scales and tables are used only where the values fit in float16 (a channel of 1e30
weights takes float32 centroids instead: an overflowing scale would turn the weights into NaN);
errors and energies are summed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.encode.tables import GRID8, GRID12, Layout
from onnxcomp.algo.kmeans import kmeans_rows

SPARSE_OWN_CODE = 0.5  # below this fraction of zeros, zero takes one of the k codes
GRID_MAX_K = 64  # channel tables up to 6 bits: int8 grid x float16 scale (k + 2 bytes per channel)
F16_MAX = float(np.finfo(np.float16).max)  # larger scales or table entries fall back to float32 tables


@dataclass
class Fit:
    """Clustered values (flat, the weight's dtype), weighted SSE and the weighted energy.

    ``table`` [channels or 1, K] holds every value a row may take (NaN pads; 0 included when the
    weight has zeros), so a GPTQ re-assignment stays inside the codebooks the encoder will find.
    """

    values: np.ndarray
    sse: float
    energy: float
    granularity: str
    table: np.ndarray | None = None
    coded_bits: int | None = None  # grid: bits of the variable-length code for these values

    @property
    def rel_error(self) -> float:
        return self.sse / self.energy if self.energy > 0 else 0.0


def f16_ceil(x: np.ndarray) -> np.ndarray:
    """The smallest float16 >= x (positive x), as float32; 1 where x is 0."""
    x = np.asarray(x, np.float64)
    h = x.astype(np.float16)
    up = h.astype(np.float64) < x
    h[up] = np.nextafter(h[up], np.float16(np.inf))
    h = np.maximum(h, np.float16(6e-8))  # the smallest float16 subnormal
    return np.where(x > 0, h.astype(np.float32), np.float32(1.0))


def fit(flat: np.ndarray, layout: Layout, k: int, granularity: str, *, importance: np.ndarray | None = None,
        init: str = "linear", iters: int = 40, seed: int = 0) -> Fit:
    """Cluster one weight (flat, in stored order) into k values per codebook."""
    dtype = flat.dtype
    if dtype not in (np.float32, np.float16) and granularity != "tensor":
        granularity = "tensor"
    if granularity in ("shared", "grid") and dtype != np.float32:
        granularity = "channel"  # a float16 product is not exact; per-channel float16 tables are
    top = float(np.abs(flat).max(initial=0.0))  # float16 scales and tables must hold the values
    if granularity in ("shared", "grid") and not top / (GRID12 if granularity == "shared" else GRID_Q) <= F16_MAX:
        granularity = "channel"
    half_ok = top <= F16_MAX
    zeros = float(np.count_nonzero(flat == 0) / max(flat.size, 1))
    kk = max(k - 1 if 0 < zeros < SPARSE_OWN_CODE else k, 1)
    if granularity == "channel":
        return _channels(flat, layout, kk, zeros, importance, init, iters, seed,
                         dtype == np.float32 and k <= GRID_MAX_K and top / GRID8 <= F16_MAX,
                         np.float16 if half_ok else dtype)
    rows = (layout.rows(flat) if granularity != "tensor" else flat.reshape(1, -1)).astype(np.float32, copy=False)
    imp = None if importance is None else (
        layout.rows(importance.reshape(-1)) if granularity != "tensor" else importance.reshape(1, -1)).astype(np.float32)
    nz = rows != 0
    w = None if imp is None and zeros == 0 else (nz if imp is None else imp * nz)
    coded = None
    if granularity == "grid":
        out, table, coded = _grid(rows, k)
    elif granularity == "tensor":
        out, cent = _kmeans(rows, kk, w, init, iters, seed, lambda c: c.astype(dtype).astype(np.float64),
                            np.float64 if np.dtype(dtype).itemsize > 4 else np.float32)
        out, table = out.astype(dtype), cent.astype(dtype)
    else:
        s = f16_ceil(np.abs(rows).max(axis=1) / GRID12)[:, None]
        ws = (np.ones(rows.shape, np.float32) if w is None else w) * (s * s)
        q, cent = _kmeans((rows / s).reshape(1, -1), kk, ws.reshape(1, -1), init, iters, seed,
                          lambda c: np.clip(np.round(c), -GRID12, GRID12))
        out = q.reshape(rows.shape).astype(np.float32) * s
        table = cent.astype(np.float32) * s  # [C, K]: the shared integers times each row's scale
    if zeros:
        out[~nz] = 0
        table = np.concatenate([table, np.zeros((len(table), 1), table.dtype)], axis=1)
    sse, energy = _sse_energy(out, rows, imp)
    del rows, imp, w, nz  # before the values are unrolled (a copy): a big table's peak is a copy less
    values = out.reshape(-1) if granularity == "tensor" else layout.unrows(out)
    return Fit(values.astype(dtype, copy=False), sse, energy, granularity, table, coded)


ROW_BLOCK = 1 << 20  # values per block of channels fitted together: a big embedding table's
# temporaries (scaled rows, labels, gathered values) stay a few MB, not several copies of it


def _channels(flat: np.ndarray, layout: Layout, kk: int, zeros: float, importance: np.ndarray | None, init: str,
              iters: int, seed: int, grid: bool, half: type) -> Fit:
    """Per-channel codebooks of ``kk`` entries (+ 0 when ``zeros``, the fraction of exact zeros, is
    not 0). ``grid`` (float32 weights): centroids snapped to an int8 grid times a
    float16 scale per channel; else rounded to ``half``, values and tables in the weight's dtype.
    Channels are independent: they are taken from the weight a block at a time and their values
    written back in place, so a big embedding table is never copied whole (``random`` init draws
    its quantiles for all rows at once from the seed: one block)."""
    dtype = flat.dtype
    view = layout.view(flat)
    imp = None if importance is None else layout.view(importance.reshape(-1))
    n = int(np.prod(view.shape[1:]))
    out = np.empty(flat.size, np.float32 if grid else dtype)
    out_view = layout.view(out)
    tables = []
    step = view.shape[0] if init == "random" else max(1, ROW_BLOCK // max(1, n))
    for a in range(0, view.shape[0], step):
        r = view[a:a + step].reshape(-1, n).astype(np.float32, copy=False)
        nz = r != 0
        wb = None if imp is None and zeros == 0 else \
            (nz if imp is None else imp[a:a + step].reshape(-1, n).astype(np.float32) * nz)
        if grid:
            s = f16_ceil(np.abs(r).max(axis=1) / GRID8)[:, None]
            q, cent = _kmeans(r / s, kk, wb, init, iters, seed, lambda c: np.clip(np.round(c), -GRID8, GRID8))
            q *= s
            tables.append(cent.astype(np.float32) * s)
        else:
            q, cent = _kmeans(r, kk, wb, init, iters, seed, lambda c: c.astype(half).astype(np.float64))
            tables.append(cent.astype(dtype))
        if zeros:
            q[~nz] = 0
        out_view[a:a + step] = q.reshape(out_view[a:a + step].shape)
    table = np.concatenate(tables) if tables else np.zeros((0, kk), out.dtype)
    if zeros:
        table = np.concatenate([table, np.zeros((len(table), 1), table.dtype)], axis=1)
    sse, energy = _sse_energy(out, flat, None if importance is None else importance.reshape(-1).astype(np.float32))
    return Fit(out.astype(dtype, copy=False), sse, energy, "channel", table)


def _sse_energy(out: np.ndarray, rows: np.ndarray, imp: np.ndarray | None, block: int = 1 << 20) -> tuple[float, float]:
    """(weighted squared error, weighted energy) in float64 (squares of large weights overflow
    float32), a block at a time: temporaries stay small beside a large embedding table."""
    out, rows = out.reshape(-1), rows.reshape(-1)
    imp = None if imp is None else imp.reshape(-1)
    sse = energy = 0.0
    for a in range(0, rows.size, block):
        ref = rows[a:a + block].astype(np.float64)
        err = out[a:a + block].astype(np.float64) - ref
        if imp is not None:  # einsum: no BLAS threads woken for a dot product
            m = imp[a:a + block].astype(np.float64)
            sse += float(np.einsum("i,i,i->", m, err, err))
            energy += float(np.einsum("i,i,i->", m, ref, ref))
        else:
            sse, energy = sse + float(np.einsum("i,i->", err, err)), energy + float(np.einsum("i,i->", ref, ref))
    return sse, energy


GRID_Q = 127  # grid integers stay within +-127: a table of at most 255 entries
GAUSS_SPAN = float(np.sqrt(2 * np.pi * np.e))  # a Gaussian's entropy is log2(this * sigma / step)


def grid_steps(rows: np.ndarray, k: int) -> np.ndarray:
    """[rows, 1] float16 steps of a uniform grid worth about log2(k) bits on each row."""
    nz = rows != 0
    count = np.maximum(nz.sum(axis=1, keepdims=True), 1)
    rms = np.sqrt(np.square(rows, dtype=np.float64).sum(axis=1, keepdims=True) / count)
    step = np.maximum(GAUSS_SPAN * rms / k, np.abs(rows).max(axis=1, keepdims=True) / GRID_Q)
    return f16_ceil(step)


def _grid(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Round each row to its uniform grid: (values, the grids as a [rows, K] table, coded bits)."""
    from onnxcomp.encode.vlc import design

    step = grid_steps(rows, k)
    q = np.clip(np.round(rows / step), -GRID_Q, GRID_Q)
    top = int(min(GRID_Q, np.abs(q).max() + 2))
    table = np.arange(-top, top + 1, dtype=np.float32)[None, :] * step
    _, bits = design(np.bincount((q + GRID_Q).astype(np.int64).ravel()))
    return (q * step).astype(np.float32), table, int(bits)


def _kmeans(rows: np.ndarray, k: int, w: np.ndarray, init: str, iters: int, seed: int,
            snap, exact: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """k-means per row, centroids snapped by ``snap``: (each element's centroid, centroids [rows, k])."""
    r = kmeans_rows(rows, k, weights=w, init=init, iters=iters, seed=seed, snap=snap)
    # the snapped centroids are exact in ``exact`` (float16/float32 tables, grid integers):
    # gathered in it, not in float64 (a big embedding table's values twice over)
    cent = r.centroids.astype(exact)
    return np.take_along_axis(cent, r.labels, axis=1), r.centroids


def rescaler(values: np.ndarray, layout: Layout, granularity: str):
    """A function ``a -> values scaled by a[c] per output channel`` that keeps the codebooks
    encodable as they were, or None when scaling would break them (one table per tensor).

    channel/shared grids (q * s with a float16 scale per channel) keep q and round s * a to
    float16; float16 tables are rounded back to float16. Exact in float32, like the fits.
    """
    from onnxcomp.encode.tables import _table, factor, lowest_terms, row_distinct, row_ranks

    if granularity == "tensor" or values.dtype != np.float32:
        return None
    rows = layout.rows(values.reshape(-1))
    counts, distinct = row_distinct(rows)
    width = int(counts.max()) if counts.size else 0
    table = _table(counts, distinct, width) if 0 < width <= 256 else None
    grid = None if table is None else factor(table, GRID12 if granularity in ("shared", "grid") else GRID8)
    if grid is not None:
        q, s = lowest_terms(*grid, table)  # the step itself, not step / 602: a precise new scale
        ranks = row_ranks(rows)

        def scale_grid(a: np.ndarray) -> np.ndarray | None:
            s2 = (s.astype(np.float64) * np.asarray(a, np.float64).reshape(-1)).astype(np.float16)
            if not np.isfinite(s2).all():
                return None
            table = q.astype(np.float32) * s2.astype(np.float32)[:, None]
            return layout.unrows(np.take_along_axis(table, ranks, axis=1)).reshape(values.shape)

        return scale_grid
    if granularity == "channel" and np.array_equal(rows.astype(np.float16).astype(np.float32), rows):
        def scale_half(a: np.ndarray) -> np.ndarray | None:
            out = (rows * np.asarray(a, np.float32).reshape(-1, 1)).astype(np.float16)
            return layout.unrows(out.astype(np.float32)).reshape(values.shape) if np.isfinite(out).all() else None

        return scale_half
    return None
