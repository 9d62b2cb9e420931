"""Uniform integer grids and GPTQ onto them (numpy only).

A weight ``[rows, D]`` (rows = output channels, D = the reduction axis in the order of the layer
statistics) is quantized in groups of ``group`` consecutive columns per row: each (row, group)
has a scale ``s`` and an integer zero point ``z`` and its values are ``(q - z) * s`` with ``q`` in
``[0, 2^bits - 1]`` (asymmetric) or ``q * s`` with ``q`` in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``
(symmetric, ``z`` = 0). ``group`` = D is one scale per output channel (QDQ int8), a power of two
is the block-wise layout of onnxruntime's ``MatMulNBits``.

Scales are chosen by the clipping that minimises the (importance-weighted) squared error of the
group (a grid search over shrink factors of its range), not by the range alone. :func:`gptq`
assigns the integers column by column with error feedback through the inverse layer-input
Hessian (Frantar et al. 2023), so later columns compensate the rounding of earlier ones; the
grid of a block-wise group is chosen when the sweep reaches it, from the weights as updated so
far (GPTQ's ``groupsize``); per-channel grids are fixed first and the columns go in order of
input energy (``act_order``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.algo.obs import BLOCK, DAMP, _prepare, _sweep

SHRINK = np.linspace(1.0, 0.55, 10)  # clipping candidates: fractions of the group's range
FINE = (0.9, 0.95, 0.975, 1.025, 1.05, 1.1)  # refinements of one end of an activation range


@dataclass
class Grid:
    """Per (row, group) scale and zero point of a uniform integer grid."""

    scale: np.ndarray  # [rows, groups] float
    zero: np.ndarray  # [rows, groups] int (0 when symmetric)
    bits: int
    group: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) + 1 if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1

    def columns(self, a: np.ndarray, d: int) -> np.ndarray:
        """A [rows, groups] array repeated to [rows, d] columns."""
        return np.repeat(a, self.group, axis=1)[:, :d]

    def quantize(self, w: np.ndarray) -> np.ndarray:
        """Nearest integers of ``w`` [rows, D] on the grid (clipped to its range)."""
        s, z = self.columns(self.scale, w.shape[1]), self.columns(self.zero, w.shape[1])
        return np.clip(np.rint(w / s) + z, self.qmin, self.qmax).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        s, z = self.columns(self.scale, q.shape[1]), self.columns(self.zero, q.shape[1])
        return ((q - z) * s).astype(np.float64)


def _fit_groups(w: np.ndarray, bits: int, symmetric: bool, importance: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero) per row of ``w`` [rows, g] minimising the weighted squared rounding error."""
    imp = np.ones(w.shape[1]) if importance is None else np.maximum(importance, 1e-12)
    lo, hi = np.minimum(w.min(1), 0.0), np.maximum(w.max(1), 0.0)
    best_err = np.full(len(w), np.inf)
    best_s, best_z = np.ones(len(w)), np.zeros(len(w))
    levels = (1 << bits) - 1
    for r in SHRINK:
        if symmetric:
            qmax = (1 << (bits - 1)) - 1
            s = np.maximum(np.maximum(-lo, hi) * r / qmax, 1e-30)
            z = np.zeros(len(w))
            q = np.clip(np.rint(w / s[:, None]), -qmax, qmax)
        else:
            s = np.maximum((hi - lo) * r / levels, 1e-30)
            z = np.clip(np.rint(-lo * r / s), 0, levels)
            q = np.clip(np.rint(w / s[:, None]) + z[:, None], 0, levels)
        err = ((((q - z[:, None]) * s[:, None]) - w) ** 2 * imp[None, :]).sum(1)
        better = err < best_err
        best_err[better], best_s[better], best_z[better] = err[better], s[better], z[better]
    return best_s, best_z.astype(np.int32)


def fit_grid(w: np.ndarray, bits: int, group: int, *, symmetric: bool = False,
             importance: np.ndarray | None = None) -> Grid:
    """The grid of ``w`` [rows, D] for groups of ``group`` columns (a partial last group is allowed)."""
    rows, d = w.shape
    n = -(-d // group)
    scale, zero = np.ones((rows, n)), np.zeros((rows, n), np.int32)
    for g in range(n):
        cols = slice(g * group, min(d, (g + 1) * group))
        imp = None if importance is None else importance[cols]
        scale[:, g], zero[:, g] = _fit_groups(np.asarray(w[:, cols], np.float64), bits, symmetric, imp)
    return Grid(scale, zero, bits, group, symmetric)


def rtn(w: np.ndarray, bits: int, group: int, *, symmetric: bool = False,
        importance: np.ndarray | None = None) -> tuple[np.ndarray, Grid]:
    """Round to nearest on the best-clipped grid: (integers [rows, D], grid)."""
    grid = fit_grid(w, bits, group, symmetric=symmetric, importance=importance)
    return grid.quantize(np.asarray(w, np.float64)), grid


def gptq(weight: np.ndarray, h: np.ndarray, bits: int, group: int, *, symmetric: bool = False,
         damp: float = DAMP, zeros: np.ndarray | None = None) -> tuple[np.ndarray, Grid]:
    """GPTQ onto a uniform grid: (integers [rows, D], grid) for ``weight`` [rows, D], ``h`` = E[x xᵀ].

    Block-wise groups (``group`` < D) take their grid when the sweep reaches them, from the
    updated weights, weighted by the Hessian diagonal; per-channel grids (``group`` >= D) are
    fitted on ``weight`` first and the columns are visited by decreasing input energy.
    ``zeros`` [rows, D] (bool): positions that stay exactly zero (a pruned weight's mask), their
    error fed forward to the others like any rounding error.
    """
    w0 = np.asarray(weight, np.float64)
    rows, d = w0.shape
    hdiag = np.maximum(np.diag(h).astype(np.float64), 0.0)
    keep = None if zeros is None or not np.any(zeros) else np.asarray(zeros, bool)
    if group >= d:
        grid = fit_grid(w0 if keep is None else np.where(keep, 0.0, w0), bits, d, symmetric=symmetric,
                        importance=hdiag)
        order = np.argsort(-hdiag, kind="stable")
        w, hinv, dead = _prepare(w0[:, order], np.asarray(h)[np.ix_(order, order)], damp)
        s, z = grid.scale[:, 0], grid.zero[:, 0]
        mask = None if keep is None else keep[:, order]

        def pick(col, w1, hb, i, i1, state):
            q = (np.clip(np.rint(col / s) + z, grid.qmin, grid.qmax) - z) * s
            return q if mask is None else np.where(mask[:, i1 + i], 0.0, q)

        out = _sweep(w, hinv, BLOCK, lambda w1, hb, i1: None, pick)
        back = np.empty_like(order)
        back[order] = np.arange(d)
        out = out[:, back]
        out[:, dead[back]] = 0.0
        return grid.quantize(out), grid
    if BLOCK % group:
        raise ValueError(f"group {group} does not divide the GPTQ block {BLOCK}")
    n = -(-d // group)
    grid = Grid(np.ones((rows, n)), np.zeros((rows, n), np.int32), bits, group, symmetric)
    w, hinv, dead = _prepare(w0, h, damp)

    def pick(col, w1, hb, i, i1, state):
        c = i1 + i
        g = c // group
        if c % group == 0:  # the group's grid, from its columns as updated so far
            cols = slice(i, min(i + group, w1.shape[1]))
            grid.scale[:, g], grid.zero[:, g] = _fit_groups(w1[:, cols], bits, symmetric,
                                                            hdiag[c: c + cols.stop - cols.start])
        sc, zc = grid.scale[:, g], grid.zero[:, g]
        q = (np.clip(np.rint(col / sc) + zc, grid.qmin, grid.qmax) - zc) * sc
        return q if keep is None else np.where(keep[:, c], 0.0, q)

    out = _sweep(w, hinv, BLOCK, lambda w1, hb, i1: None, pick)
    q = grid.quantize(out)
    if dead.any():  # inputs that never fire: their weights are free, store the zero point
        q[:, dead] = grid.columns(grid.zero, d)[:, dead]
    return q, grid


def on_codes(rows: np.ndarray, source: np.ndarray, h: np.ndarray | None, most: int = 64
             ) -> tuple[np.ndarray, Grid] | None:
    """Per-channel symmetric 8-bit integers [rows, D] for ``rows`` that keep the few values each
    row of ``source`` holds (a clustered weight; ``rows`` its output-matched refit), and their grid:
    ``source``'s values rounded onto its grid are the only ones a row may take, chosen with GPTQ
    error feedback on ``h`` (nearest without); its zeros stay zero. None when ``source`` is not
    clustered: a row holds more than ``most`` values or half its columns, or its nonzero values
    do not repeat (a pruned weight)."""
    from onnxcomp.algo.obs import assign_gptq

    src = np.asarray(source, np.float64)
    uniq = [np.unique(r) for r in src]
    width = max(len(u) for u in uniq)
    nonzero = sum(int(np.count_nonzero(u)) for u in uniq)  # distinct nonzero values, all rows
    if width > most or 2 * width > src.shape[1] or np.count_nonzero(src) < 2 * nonzero:
        return None  # not clustered: too many values, or nonzeros that do not repeat (pruned only)
    grid = fit_grid(src, 8, src.shape[1], symmetric=True)
    table = np.full((len(src), width), np.nan)
    for i, u in enumerate(uniq):
        table[i, : len(u)] = u
    s = grid.scale[:, :1]
    table = np.clip(np.rint(table / s), grid.qmin, grid.qmax) * s  # NaN pads stay NaN
    zero = src == 0
    if h is not None:  # a pruned zero stays zero
        values = assign_gptq(rows, h, table, keep_zero=zero if zero.any() else None)
    else:
        values = np.clip(np.rint(src / s), grid.qmin, grid.qmax) * s
    return grid.quantize(values), grid


def output_error(w: np.ndarray, approx: np.ndarray, h: np.ndarray) -> float:
    """Relative output error of ``approx`` for ``w`` on inputs with second moments ``h``:
    tr(E H Eᵀ) / tr(W H Wᵀ) with E = approx - W."""
    w = np.asarray(w, np.float64)
    e = np.asarray(approx, np.float64) - w
    den = float(np.einsum("ij,jk,ik->", w, h, w))
    return float(np.einsum("ij,jk,ik->", e, h, e)) / den if den > 0 else 0.0


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers in [0, 2^bits) along the last axis, the first value in the lowest bits."""
    per = 8 // bits
    q = np.asarray(q, np.uint8)
    pad = (-q.shape[-1]) % per
    if pad:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (pad,), np.uint8)], axis=-1)
    parts = q.reshape(q.shape[:-1] + (-1, per)).astype(np.uint8)
    out = np.zeros(parts.shape[:-1], np.uint8)
    for k in range(per):
        out |= (parts[..., k] << (k * bits)).astype(np.uint8)
    return out


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack`: ``count`` integers along the last axis."""
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (k * bits)) & mask for k in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[:-1] + (-1,))[..., :count]


def fake_quant(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """``x`` through uint8 quantize-dequantize at ``scale``/``zero``."""
    return ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def activation_range(samples: np.ndarray, lo: float, hi: float,
                     weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """(lo, hi, relative squared error) of the uint8 grid with the least squared error on
    ``samples``, among shrinks of the observed range [``lo``, ``hi``] (0 kept inside).

    With ``weights`` (one per row of ``samples`` [channels, values]) each channel's error counts
    that much: the importance of the channel to the layers reading it."""
    x = np.asarray(samples, np.float32)
    if weights is None:
        x = x.reshape(1, -1)
        weights = np.ones(1)
    w = np.asarray(weights, np.float64)
    energy = float(w @ np.einsum("ij,ij->i", x, x)) or 1.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi <= lo:
        return lo, hi, 0.0

    def err(a: float, b: float) -> float:
        scale = (b - a) / 255.0
        zero = int(np.clip(np.rint(-a / scale), 0, 255))
        d = fake_quant(x, scale, zero) - x
        return float(w @ np.einsum("ij,ij->i", d, d)) / energy

    best = min(((err(lo * r, hi * r), lo * r, hi * r) for r in SHRINK))
    for _ in range(2):  # then each end on its own, finer, around the best joint shrink
        e, a, b = best
        best = min([best] + [(err(a * f, b), a * f, b) for f in FINE if a < 0])
        e, a, b = best
        best = min([best] + [(err(a, b * f), a, b * f) for f in FINE if b > 0])
    return best[1], best[2], best[0]
