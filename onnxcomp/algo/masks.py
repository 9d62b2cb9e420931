"""Which weights to zero: importance scores and masks per tensor, per output channel, or N:M.

Scores are magnitudes, optionally scaled by the root-mean-square of the matching layer-input
channel measured on calibration data (|W_ij| * ||X_j||, the Wanda criterion): a weight that
multiplies a large activation matters more than its magnitude alone says.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.graph.weights import Weight


def as_rows(array: np.ndarray, weight: Weight) -> np.ndarray:
    """View a weight as [output channels, everything else] (a copy only when axes move)."""
    out = weight.out_axis if weight.out_axis is not None else 0
    return np.moveaxis(array, out, 0).reshape(array.shape[out], -1)


def from_rows(rows: np.ndarray, weight: Weight) -> np.ndarray:
    out = weight.out_axis if weight.out_axis is not None else 0
    shape = list(weight.shape)
    moved = [shape[out]] + shape[:out] + shape[out + 1:]
    return np.moveaxis(rows.reshape(moved), 0, out)


def input_scale(weight: Weight, channel_rms: np.ndarray) -> np.ndarray:
    """Broadcast per-input-channel RMS to the weight's shape (grouped convs map per group)."""
    shape = [1] * len(weight.shape)
    ax = weight.in_axis
    if weight.role == "conv" and weight.group > 1:
        cout, cin_g = weight.shape[0], weight.shape[1]
        per_group = channel_rms.reshape(weight.group, cin_g)  # [g, Cin/g]
        rows = np.repeat(per_group, cout // weight.group, axis=0)  # [Cout, Cin/g]
        return rows.reshape(cout, cin_g, *([1] * (len(weight.shape) - 2)))
    shape[ax] = weight.shape[ax]
    return channel_rms.reshape(shape)


def scores(values: np.ndarray, weight: Weight, channel_rms: np.ndarray | None = None) -> np.ndarray:
    """Importance of each weight: |w|, times the input-channel RMS when calibration data gave it."""
    s = np.abs(values.astype(np.float32, copy=False))
    if channel_rms is not None:
        s = s * input_scale(weight, channel_rms.astype(np.float32))
    return s


def tensor_mask(score: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing the ``sparsity`` fraction of lowest scores in the whole tensor."""
    k = int(round(sparsity * score.size))
    keep = np.ones(score.size, bool)
    if k > 0:
        keep[np.argpartition(score.reshape(-1), k - 1)[:k]] = False
    return keep.reshape(score.shape)


def channel_mask(score: np.ndarray, weight: Weight, sparsity: float, block: int = 1 << 20) -> np.ndarray:
    """Keep-mask zeroing the same fraction of lowest scores inside every output channel (rows a
    block of about ``block`` scores at a time: the partition's int64 indices are 2x a float32
    weight, 94 MB for a 30522 x 384 embedding table at once)."""
    rows = as_rows(score, weight)
    k = int(round(sparsity * rows.shape[1]))
    keep = np.ones(rows.shape, bool)
    if k > 0:
        step = max(1, block // max(1, rows.shape[1]))
        for a in range(0, rows.shape[0], step):
            drop = np.argpartition(rows[a:a + step], k - 1, axis=1)[:, :k]
            np.put_along_axis(keep[a:a + step], drop, False, axis=1)
    return from_rows(keep, weight)


def nm_mask(score: np.ndarray, weight: Weight, n: int, m: int) -> np.ndarray:
    """Keep the N highest of every M consecutive weights along the reduction (input) axis.

    A tail shorter than M (input size not a multiple of M) is kept whole.
    """
    ax = weight.in_axis if weight.in_axis is not None else score.ndim - 1
    moved = np.moveaxis(score, ax, -1)
    length = moved.shape[-1]
    full = (length // m) * m
    keep = np.ones(moved.shape, bool)
    if full:
        groups = moved[..., :full].reshape(*moved.shape[:-1], full // m, m)
        order = np.argsort(groups, axis=-1)  # ascending: the first m - n are dropped
        drop = np.zeros(groups.shape, bool)
        np.put_along_axis(drop, order[..., : m - n], True, axis=-1)
        keep[..., :full] = ~drop.reshape(*moved.shape[:-1], full)
    return np.moveaxis(keep, -1, ax)
