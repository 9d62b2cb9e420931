"""Calibration-derived importance of each weight: the diagonal of the layer-input Hessian (for an
embedding table, how often each row is read).

For a layer y = W x the output error of a weight change dW is E||dW x||^2; its diagonal
approximation weights each (out, in) entry by E[x_in^2]. For Gemm/MatMul that is the mean of x_k^2
over samples (and positions); for Conv the mean of the squared im2col inputs per (c_in, kh, kw),
i.e. x^2 summed over the input window each kernel tap sees (zero padding included).
Statistics are accumulated batch by batch through onnxruntime (bounded memory).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx

from onnxcomp.graph import einsum
from onnxcomp.graph.weights import Weight, _attr

MAX_CAPTURE_BYTES = 256 << 20


def _input_of(weight: Weight) -> list[tuple[onnx.NodeProto, str]]:
    """(node, activation input) per use where the weight is the right-hand operand."""
    out = []
    for use in weight.uses if not weight.nested else ():  # (a body's tensors cannot be captured)
        if use.role in ("conv", "gemm_b", "matmul_b") and use.node.input[0]:
            out.append((use.node, use.node.input[0]))
        elif use.role == einsum.ROLE and (x := einsum.activation(use.node, use.index)) is not None:
            out.append((use.node, x))
        elif use.role == "gather_data" and len(use.node.input) > 1 and use.node.input[1]:
            out.append((use.node, use.node.input[1]))  # the ids: how often each row is read
    return out if len(out) == len(weight.uses) else []


def _conv_stat(x: np.ndarray, node: onnx.NodeProto, kshape: tuple[int, ...]) -> np.ndarray | None:
    """Sum over samples and output positions of x^2 per (c_in, *kernel) for one Conv."""
    nd = x.ndim - 2
    if nd < 1 or len(kshape) != nd:
        return None
    strides = list(_attr(node, "strides", [1] * nd))
    dil = list(_attr(node, "dilations", [1] * nd))
    pads = list(_attr(node, "pads", [0] * (2 * nd)))
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-x.shape[2 + i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dil[i] * (kshape[i] - 1) + 1 - x.shape[2 + i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)])
    outs = [(sq.shape[2 + i] - dil[i] * (kshape[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    if min(outs) < 1:
        return None
    stat = np.zeros((x.shape[1], *kshape))
    for tap in np.ndindex(*kshape):
        sl = tuple(slice(tap[i] * dil[i], tap[i] * dil[i] + strides[i] * (outs[i] - 1) + 1, strides[i])
                   for i in range(nd))
        stat[(slice(None), *tap)] = sq[(slice(None), slice(None), *sl)].sum(axis=tuple([0] + list(range(2, 2 + nd))))
    return stat


def _stat(weight: Weight, node: onnx.NodeProto, x: np.ndarray) -> np.ndarray | None:
    """Per-batch sum of squared inputs, shaped to broadcast against the weight."""
    if weight.role == "conv":
        group = weight.group
        stat = _conv_stat(x, node, weight.shape[2:])
        if stat is None or stat.shape[0] % group:
            return None
        per = stat.reshape(group, stat.shape[0] // group, *stat.shape[1:])  # [g, cin/g, *k]
        return np.repeat(per, weight.shape[0] // group, axis=0)  # [cout, cin/g, *k]
    if weight.role == "gemm_b":
        xa = x.T if _attr(node, "transA", 0) else x
        s = (xa.astype(np.float64) ** 2).sum(axis=0)
        return s[:, None] if weight.in_axis == 0 else s[None, :]
    if weight.role == "gather_data":  # an embedding table: a row's error counts as often as it is read
        ids = np.asarray(x).reshape(-1).astype(np.int64)
        rows = weight.shape[0]
        ids = np.where(ids < 0, ids + rows, ids)
        counts = np.bincount(ids[(ids >= 0) & (ids < rows)], minlength=rows).astype(np.float64)
        return counts.reshape([rows] + [1] * (len(weight.shape) - 1))
    if weight.role in ("matmul_b", einsum.ROLE):
        s = (x.astype(np.float64) ** 2).reshape(-1, x.shape[-1]).sum(axis=0)
        shape = [1] * len(weight.shape)
        shape[-2 if weight.role == "matmul_b" else weight.in_axis] = s.size
        return s.reshape(shape)
    return None


def importance(model: onnx.ModelProto, weights: list[Weight], data: Iterable[dict[str, np.ndarray]],
               *, max_samples: int = 64, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per-element importance (broadcast to each weight's shape) for the weights it can measure."""
    from onnxcomp.measure.capture import capture

    wanted = {w.name: _input_of(w) for w in weights}
    names = sorted({t for uses in wanted.values() for _, t in uses})
    if not names:
        return {}
    from onnxcomp.data.sampling import limit_samples

    acc: dict[str, Any] = {}
    # the samples are limited on the inputs (axis 0 is the batch there; a Gemm's transA input
    # holds it on axis 1, so cutting captured tensors cut its features instead)
    for out in capture(model, names, limit_samples(data, max_samples), threads=threads, max_bytes=MAX_CAPTURE_BYTES):
        for w in weights:
            for node, t in wanted[w.name]:
                s = _stat(w, node, out[t])
                key = w.name
                if s is None or (key in acc and (acc[key] is None or acc[key].shape != s.shape)):
                    acc[key] = None
                    continue
                acc[key] = s if key not in acc else acc[key] + s
    result = {}
    for w in weights:
        s = acc.get(w.name)
        if s is None or not np.all(np.isfinite(s)) or s.max() <= 0:
            continue
        try:
            result[w.name] = np.broadcast_to(np.maximum(s / s.mean(), 1e-6), w.shape)
        except ValueError:  # statistics that do not fit the weight: no importance for it
            continue
    return result
