"""Output channels of a weight's consumer, and per-output-channel vectors laid onto its kernel.

The one place for channel/group arithmetic: a Conv kernel is ``[C_out, C_in / g, k...]``, a
ConvTranspose kernel ``[C_in, C_out / g, k...]`` (output channel ``c`` of group ``c // (C_out / g)``
reads the rows ``[g0 * C_in / g, (g0 + 1) * C_in / g)`` of column ``c % (C_out / g)``), a Gemm or
MatMul weight has its output channels on ``out_axis``.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.graph.weights import Weight


def out_channels(w: Weight) -> int | None:
    """Output channels of the op the weight feeds (None when it has no output-channel axis)."""
    if w.out_axis is None:
        return None
    if w.role == "convtranspose":
        return w.shape[1] * w.group
    return w.shape[w.out_axis]


def per_out_channel(w: Weight, a: np.ndarray) -> np.ndarray:
    """``a`` [out_channels] laid onto the kernel: an array that broadcasts against ``w.shape``
    and multiplies each weight by its output channel's entry."""
    a = np.asarray(a).reshape(-1)
    if a.size != out_channels(w):
        raise ValueError(f"{w.name}: {a.size} values for {out_channels(w)} output channels")
    if w.role == "convtranspose":
        g, cin, per = w.group, w.shape[0], w.shape[1]
        grid = np.repeat(a.reshape(g, per), cin // g, axis=0)  # [C_in, C_out / g]
        return grid.reshape(cin, per, *([1] * (len(w.shape) - 2)))
    shape = [1] * len(w.shape)
    shape[w.out_axis] = a.size
    return a.reshape(shape)
