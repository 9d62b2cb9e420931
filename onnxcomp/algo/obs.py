"""Optimal-Brain-Surgeon pruning with weight updates (SparseGPT, Frantar & Alistarh 2023).

For a layer ``y = W x`` with input second moments ``H = E[x xᵀ]`` (the layer-input Hessian of the
output error), weights are removed column by column; each removal's error is spread over the
not-yet-processed columns through the inverse Hessian, so the remaining weights compensate. The
mask is chosen block by block by the OBS saliency ``w² / [H⁻¹]_jj²`` — per output row (the
channel granularity) or N:M within the row. numpy only; memory ``O(D²)`` per layer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcomp.algo.linalg import interruptible
from onnxcomp.algo.numeric import keep_finite

BLOCK = 128
DAMP = 0.01


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of (H + damp·mean(diag)·I)⁻¹, adding damping until it is definite."""
    d = len(h)
    scale = float(np.mean(np.diag(h))) or 1.0
    for k in range(8):
        try:
            reg = h + (damp * 10**k) * scale * np.eye(d)
            inv = interruptible(np.linalg.inv, reg, size=reg.size)  # Ctrl-C stays responsive
            return interruptible(np.linalg.cholesky, (inv + inv.T) / 2, size=reg.size).T
        except np.linalg.LinAlgError:
            continue
    return np.eye(d) / np.sqrt(scale)


def _block_mask(w: np.ndarray, hdiag: np.ndarray, sparsity: float, rowwise: bool) -> np.ndarray:
    """True where a weight of this block is removed."""
    sal = w * w / (hdiag * hdiag)[None, :]
    if rowwise:
        k = int(round(sparsity * w.shape[1]))
        mask = np.zeros(w.shape, bool)
        if k:
            np.put_along_axis(mask, np.argpartition(sal, k - 1, axis=1)[:, :k], True, axis=1)
        return mask
    k = int(round(sparsity * sal.size))
    mask = np.zeros(sal.size, bool)
    if k:
        mask[np.argpartition(sal.reshape(-1), k - 1)[:k]] = True
    return mask.reshape(w.shape)


def _prepare(weight: np.ndarray, h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 weight with dead inputs zeroed, upper Cholesky of H⁻¹, dead-input mask)."""
    w = np.array(weight, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    if not np.isfinite(h).all() or not np.isfinite(np.diag(h).sum()):  # no usable statistics:
        h = np.eye(len(h))  # no error feedback (plain magnitude / nearest-value choices)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, _inverse_cholesky(h, damp), dead


def _sweep(w: np.ndarray, hinv: np.ndarray, block: int, start: Callable, pick: Callable) -> np.ndarray:
    """The OBS/GPTQ column sweep: ``pick`` chooses each column's new values, the error feeds forward.

    ``start(w1, hb, i1)`` runs once per block (e.g. to choose its mask); ``pick(col, w1, hb, i,
    i1, state)`` returns the column's new values. Each column's error, divided by its inverse
    Hessian pivot, is subtracted from the remaining columns (inside the block, then in one
    matrix product for the columns after it).
    """
    d = w.shape[1]
    out = np.zeros_like(w)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        hb = hinv[i1:i2, i1:i2]
        state = start(w1, hb, i1)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = pick(col, w1, hb, i, i1, state)
            e = (col - q) / hb[i, i]
            w1[:, i:] -= np.outer(e, hb[i, i:])
            w1[:, i] = q
            err[:, i] = e
        out[:, i1:i2] = w1
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    return out


def _nm_update(mask: np.ndarray, w1: np.ndarray, hb: np.ndarray, i: int, nm: tuple[int, int]) -> None:
    """At the start of each group of M columns, mark its M - N lowest-saliency weights per row."""
    if i % nm[1]:
        return
    span = slice(i, min(i + nm[1], w1.shape[1]))
    if span.stop - span.start < nm[1]:
        return  # a short tail group is kept whole
    sal = w1[:, span] ** 2 / np.diag(hb)[span][None, :] ** 2
    idx = np.argpartition(sal, nm[1] - nm[0] - 1, axis=1)[:, : nm[1] - nm[0]]
    np.put_along_axis(mask[:, span], idx, True, axis=1)


def prune_obs(weight: np.ndarray, h: np.ndarray, sparsity: float, *, rowwise: bool = True,
              nm: tuple[int, int] | None = None, damp: float = DAMP, block: int = BLOCK) -> np.ndarray:
    """Prune ``weight`` [rows, D] to ``sparsity`` with OBS updates, given ``h`` = E[x xᵀ] [D, D]."""
    w, hinv, dead = _prepare(weight, h, damp)

    def start(w1, hb, i1):
        if nm is not None:
            return np.zeros_like(w1, dtype=bool)
        return _block_mask(w1, np.diag(hb), sparsity, rowwise)

    def pick(col, w1, hb, i, i1, mask):
        if nm is not None:
            _nm_update(mask, w1, hb, i, nm)
        return np.where(mask[:, i], 0.0, col)

    with np.errstate(over="ignore", invalid="ignore"):
        out = _sweep(w, hinv, block, start, pick)
        out[:, dead] = 0.0
        out = out.astype(weight.dtype)
    return keep_finite(out, weight)  # an update that overflows keeps the weight as it was


def _nearest(col: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per row, the value of ``table`` [rows, K] (padded with NaN) closest to ``col``."""
    dist = np.abs(table - col[:, None])
    dist[np.isnan(dist)] = np.inf
    return table[np.arange(len(col)), np.argmin(dist, axis=1)]


def assign_gptq(weight: np.ndarray, h: np.ndarray, table: np.ndarray, *, keep_zero: np.ndarray | None = None,
                damp: float = DAMP, block: int = BLOCK, act_order: bool = True) -> np.ndarray:
    """GPTQ-style assignment of ``weight`` [rows, D] to per-row codebooks ``table`` [rows, K].

    Columns are assigned to their nearest codebook value; each column's error is spread over the
    remaining columns through the inverse Hessian (Frantar et al. 2023), so later assignments
    compensate. ``act_order``: columns with the largest input energy (diagonal of H) go first,
    while the most columns remain to absorb their error. Every output value is one of its row's
    codebook values (NaN pads unused table slots); positions in ``keep_zero`` stay exactly zero.
    """
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(len(h))
    w, hinv, _ = _prepare(np.asarray(weight)[:, order], np.asarray(h)[np.ix_(order, order)], damp)
    tab = np.asarray(table, dtype=np.float64)
    zero = None if keep_zero is None else keep_zero[:, order]

    def pick(col, w1, hb, i, i1, state):
        q = _nearest(col, tab)
        return q if zero is None else np.where(zero[:, i1 + i], 0.0, q)

    with np.errstate(over="ignore", invalid="ignore"):
        out = _sweep(w, hinv, block, lambda w1, hb, i1: None, pick)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    out = out[:, back]
    bad = ~np.isfinite(out)
    if bad.any():  # error feedback that overflowed: those weights take their nearest table value
        plain = np.stack([_nearest(col, tab) for col in np.asarray(weight, np.float64).T], axis=1)
        out = np.where(bad, plain, out)
    return out
