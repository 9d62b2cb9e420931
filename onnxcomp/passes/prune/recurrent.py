"""OBS statistics for recurrent ops (LSTM, GRU, RNN): which tensor each weight multiplies.

The input weight W ([directions,] gates x hidden, input) multiplies the op's input ``x_t`` at every
step, the same for both directions: a MatMul over the steps. The recurrence weight R multiplies
the previous hidden state ``h_{t-1}``, which the op's output Y holds for every step (all but the
last step of each direction are some ``h_{t-1}``; the zero initial state adds nothing to second
moments): read from Y after the op has run with its current weights, one group of statistics per
direction; with an initial state (a streaming model's carried state), that state and Y but its
last step. A GRU's R too when ``linear_before_reset`` is set (PyTorch's and Keras' GRU): otherwise
its candidate gate multiplies ``r * h_{t-1}``, not ``h_{t-1}``, and R keeps magnitude masks, as
does one whose op has no Y output. An R split per direction before the op (a dynamo export) takes
the statistics of the direction whose rows it is (:func:`own`).

A codebook row (and an OBS row) is one gate unit across the directions, as the encodings store
it: its statistics are the directions' blocks on the diagonal (W: the same input's for each).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.weights import Weight
from onnxcomp.measure.stats import LayerStats, StatsRequest
from onnxcomp.passes.rewrite import attr


def _layout(w: Weight) -> int:
    return int(attr(w.uses[0].node, "layout", 0))


def _direction(w: Weight) -> bytes:
    d = attr(w.uses[0].node, "direction", b"forward")
    return d.encode() if isinstance(d, str) else d


def _directions(w: Weight) -> int:
    return 2 if _direction(w) == b"bidirectional" else 1


def request(w: Weight) -> StatsRequest | None:
    """The statistics a recurrent weight's OBS needs, or None (magnitude masks)."""
    if len(w.uses) != 1:
        return None
    node = w.uses[0].node
    if w.role == "rnn_w" and len(w.shape) in (2, 3):
        return StatsRequest(w.name, node.input[0], "matrix", seq_first=_layout(w) == 0)
    if w.role != "rnn_r" or not node.output or not node.output[0]:
        return None
    if node.op_type == "GRU" and not attr(node, "linear_before_reset", 0):
        return None  # the candidate gate's rows multiply r * h_{t-1}, which no tensor holds
    d = _directions(w)
    if not (len(w.shape) == 3 and w.shape[0] == d) and len(w.shape) != 2:
        return None
    return StatsRequest(w.name, node.output[0], "matrix", group=d)  # 2-D, two directions: see :func:`own`


def hidden_states(ys: list[np.ndarray] | None, w: Weight, h0s: list[np.ndarray] | None = None
                  ) -> list[np.ndarray] | None:
    """Y per batch ([seq, dirs, batch, hidden], or [batch, seq, dirs, hidden] with layout 1) as
    [batch, seq, dirs * hidden]: each step's hidden states, the directions side by side. With the
    op's initial state ``h0s`` (per batch), the states R multiplies exactly: each direction's
    initial state and every step's but its last (a streaming model run one step at a time with
    the state it carries has nothing else: Y alone held the state after the step, not before)."""
    if ys is None:
        return None
    out = []
    for k, y in enumerate(ys):
        y = np.transpose(y, (1, 2, 0, 3)) if _layout(w) == 1 else y  # [seq, dirs, batch, hidden]
        if h0s is not None and k < len(h0s):
            h0 = np.swapaxes(h0s[k], 0, 1) if _layout(w) == 1 else h0s[k]  # [dirs, batch, hidden]
            backward = [d == 1 or _direction(w) == b"reverse" for d in range(y.shape[1])]
            y = np.stack([np.concatenate([y[1:, d], h0[None, d]]) if back else np.concatenate([h0[None, d], y[:-1, d]])
                          for d, back in enumerate(backward)], axis=1)
        y = np.transpose(y, (2, 0, 1, 3))
        out.append(y.reshape(y.shape[0], y.shape[1], -1))
    return out


def initial_state(w: Weight) -> str | None:
    """The op's initial hidden state input (LSTM/GRU/RNN slot 5), if it has one."""
    node = w.uses[0].node
    return node.input[5] if len(node.input) > 5 and node.input[5] else None


def own(groups: list[LayerStats], w: Weight, model: onnx.ModelProto) -> list[LayerStats] | None:
    """The statistics of the direction a per-direction R slice feeds (a dynamo export assembles the
    op's R from one tensor per direction, its gates reordered): found by evaluating the assembled R
    and matching the slice's rows. None when no single direction holds them."""
    if len(w.shape) != 2 or len(groups) == 1:
        return groups
    full = _assembled(model, w.uses[0].node.input[w.uses[0].index])
    if full is None or full.ndim != 3 or len(full) != len(groups):
        return None
    probe = np.random.default_rng(0).normal(size=w.shape[1])
    mine = np.sort(w.values().astype(np.float64) @ probe)  # rows as one number each, in any order
    hits = [d for d in range(len(full)) if full[d].shape == w.shape
            and np.allclose(np.sort(full[d].astype(np.float64) @ probe), mine, rtol=1e-9, atol=1e-12)]
    return [groups[hits[0]]] if len(hits) == 1 else None


def _assembled(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of a tensor computed from constants by data movement alone, or None."""
    from onnx.reference import ReferenceEvaluator

    from onnxcomp.graph.constants import MOVES, Constants

    consts = Constants(model.graph)
    nodes, stack, used = {}, [name], set()
    while stack:
        t = stack.pop()
        if not t or t in used:
            continue
        used.add(t)
        if t in consts.initializers:
            continue
        node = consts.producers.get(t)
        if node is None or node.op_type not in MOVES + ("Constant",):
            return None
        nodes[id(node)] = node
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    graph = onnx.helper.make_graph(sorted(nodes.values(), key=lambda n: order[id(n)]), "assembled", [],
                                   [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)],
                                   [consts.initializers[t] for t in used if t in consts.initializers])
    m = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return np.asarray(ReferenceEvaluator(m).run(None, {})[0])


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
