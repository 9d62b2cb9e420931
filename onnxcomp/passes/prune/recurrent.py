"""OBS statistics for recurrent ops (LSTM, GRU, RNN): which tensor each weight multiplies.

The input weight W ([directions,] gates x hidden, input) multiplies the op's input ``x_t`` at every
step, the same for both directions: a MatMul over the steps. The recurrence weight R multiplies
the previous hidden state ``h_{t-1}``, which the op's output Y holds for every step (all but the
last step of each direction are some ``h_{t-1}``; the zero initial state adds nothing to second
moments): read from Y after the op has run with its current weights, one group of statistics per
direction. A GRU's R too when ``linear_before_reset`` is set (PyTorch's and Keras' GRU): otherwise
its candidate gate multiplies ``r * h_{t-1}``, not ``h_{t-1}``, and R keeps magnitude masks, as
does an R split per direction before the op (which direction a slice feeds is not known) and one
whose op has no Y output.

A codebook row (and an OBS row) is one gate unit across the directions, as the encodings store
it: its statistics are the directions' blocks on the diagonal (W: the same input's for each).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.weights import Weight
from onnxcomp.measure.stats import LayerStats, StatsRequest


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _layout(w: Weight) -> int:
    return int(_attr(w.uses[0].node, "layout", 0))


def _directions(w: Weight) -> int:
    direction = _attr(w.uses[0].node, "direction", b"forward")
    return 2 if direction == b"bidirectional" else 1


def request(w: Weight) -> StatsRequest | None:
    """The statistics a recurrent weight's OBS needs, or None (magnitude masks)."""
    if len(w.uses) != 1:
        return None
    node = w.uses[0].node
    if w.role == "rnn_w" and len(w.shape) in (2, 3):
        return StatsRequest(w.name, node.input[0], "matrix", seq_first=_layout(w) == 0)
    if w.role != "rnn_r" or not node.output or not node.output[0]:
        return None
    if node.op_type == "GRU" and not _attr(node, "linear_before_reset", 0):
        return None  # the candidate gate's rows multiply r * h_{t-1}, which no tensor holds
    d = _directions(w)
    if not (len(w.shape) == 3 and w.shape[0] == d) and not (len(w.shape) == 2 and d == 1):
        return None
    return StatsRequest(w.name, node.output[0], "matrix", group=d)


def hidden_states(ys: list[np.ndarray] | None, w: Weight) -> list[np.ndarray] | None:
    """Y per batch ([seq, dirs, batch, hidden], or [batch, seq, dirs, hidden] with layout 1) as
    [batch, seq, dirs * hidden]: each step's hidden states, the directions side by side."""
    if ys is None:
        return None
    out = []
    for y in ys:
        y = np.transpose(y, (2, 0, 1, 3)) if _layout(w) == 0 else y
        out.append(y.reshape(y.shape[0], y.shape[1], -1))
    return out


def directions_in_rows(w: Weight) -> int:
    """How many directions one row of the weight spans ([directions, gates x hidden, input]: all)."""
    return int(w.shape[0]) if len(w.shape) == 3 else 1


def block_diagonal(groups: list[LayerStats], w: Weight) -> list[LayerStats]:
    """The statistics of a row spanning the directions: per-direction blocks on the diagonal."""
    d = directions_in_rows(w)
    if d == 1:
        return groups
    parts = groups if len(groups) == d else groups * d  # W: every direction reads the same input

    def block(name: str) -> np.ndarray | None:
        mats = [getattr(g, name) for g in parts]
        if any(m is None for m in mats):
            return None
        out, i = np.zeros((sum(len(m) for m in mats),) * 2), 0
        for m in mats:
            out[i:i + len(m), i:i + len(m)] = m
            i += len(m)
        return out
    return [LayerStats(block("cov"), block("cross"), block("ref"), parts[0].n)]
