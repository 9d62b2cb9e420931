"""Least-squares refit of per-channel codebook values after their assignment (GPTVQ-style).

k-means places each channel's centroids to fit the weights it sees (weighted by the diagonal of
the layer-input Hessian); GPTQ then re-assigns the weights with error feedback, so the centroids
are no longer where the assignment wants them. With the assignment fixed, the values that best
reproduce the layer output solve a small linear system per output row: for the row's target
weights ``t``, the one-hot assignment ``M`` [D, K] and the layer-input second moments ``H``,
``c = (Mᵀ H M)⁻¹ Mᵀ H t``. The refitted values are snapped back to the table format the encoder
stores (int8 grid times a float16 scale per channel, or float16 values), so the codebook costs
the same bytes. Exact zeros (kept pruned weights) are not refitted. A row keeps its old values
unless the refit lowers its output error on ``H``.

Measured on effnet_lite0 (held-out half of the calibration images): output error of a 4-bit
1×1 conv 0.0025 -> 0.0021, of a 3-bit one 0.016 -> 0.014.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.encode.tables import GRID8

CHUNK_BYTES = 64 << 20  # one-hot assignment block per solve
RIDGE = 1e-9


def refit_channels(target: np.ndarray, values: np.ndarray, hessians: list[np.ndarray], *,
                   grid: bool) -> np.ndarray:
    """Refit each row's codebook values of ``values`` [R, D] toward ``target`` on its group's
    Hessian (rows split evenly over ``hessians``); ``grid``: snap to int8 × float16 scale per row,
    else round to float16. Returns float32 rows with the same number of distinct values or fewer."""
    target = np.asarray(target, np.float64)
    values = np.asarray(values, np.float32)
    out = values.copy()
    for rows, h in zip(np.array_split(np.arange(len(values)), len(hessians)), hessians):
        h = np.asarray(h, np.float64)
        k_max = max((len(np.unique(values[r])) for r in rows), default=0)
        step = max(1, int(CHUNK_BYTES // max(8 * h.shape[0] * max(k_max, 1), 1)))
        for i in range(0, len(rows), step):
            part = rows[i:i + step]
            out[part] = _refit_block(target[part], values[part], h, k_max, grid)
    return out


def _refit_block(t: np.ndarray, v: np.ndarray, h: np.ndarray, k: int, grid: bool) -> np.ndarray:
    r, d = v.shape
    onehot = np.zeros((r, d, k))
    codes = np.zeros((r, k))
    for i in range(r):
        uniq, inv = np.unique(v[i], return_inverse=True)
        onehot[i, np.arange(d), inv] = 1.0
        codes[i, :len(uniq)] = uniq
    onehot[v == 0] = 0.0  # zeros stay zeros: not an unknown of the refit
    # H @ onehot for every row in one GEMM (N = r*k): a stack of r GEMMs with N = k ran 4-10x slower
    hm = (h @ onehot.transpose(1, 0, 2).reshape(d, r * k)).reshape(d, r, k).transpose(1, 0, 2)  # [r, d, k]
    gram = np.matmul(onehot.transpose(0, 2, 1), hm)
    rhs = np.matmul(t[:, None, :], hm)[:, 0]
    used = np.einsum("rii->ri", gram) > 0
    scale = np.maximum(np.einsum("rii->r", gram) / max(k, 1), 1e-30)
    gram = gram + (RIDGE * scale)[:, None, None] * np.eye(k) + (~used)[:, :, None] * np.eye(k)
    c = np.linalg.solve(gram, rhs[..., None])[..., 0]
    c = np.where(used, c, codes)
    c = _snap(c, grid)
    new = np.matmul(onehot, c[..., None])[..., 0].astype(np.float32)  # zeros stay 0
    return np.where(row_error(new, t, h) < row_error(v, t, h), new.T, v.T).T


def _snap(c: np.ndarray, grid: bool) -> np.ndarray:
    if not grid:
        return c.astype(np.float16).astype(np.float64)
    from onnxcomp.passes.cluster.fit import f16_ceil

    s = f16_ceil(np.abs(c).max(axis=1) / GRID8)[:, None].astype(np.float64)
    return np.clip(np.round(c / s), -GRID8, GRID8) * s


def row_error(v: np.ndarray, t: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per row, the output error (v - t) H (v - t)ᵀ."""
    e = np.asarray(v, np.float64) - t
    return ((e @ h) * e).sum(axis=1)
