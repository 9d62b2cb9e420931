"""Weights with no integer kernel, stored as int8: LSTM/GRU/RNN, Einsum, batched MatMul,
ConvTranspose and transposed-input Gemm weights (and convs and MatMuls left in float: isolated
ones, or convs under ``--activations none``) become int8 (symmetric, one scale per output
channel) read through a DequantizeLinear, so the file holds a quarter of their bytes and the op
runs in float as before; onnxruntime dequantizes them at each run, one pass over the weight
(an LSTM's own work is a pass over it per time step).

And tied tables: an embedding whose transpose is also the output layer's weight (GPT-style
exports: ``Gather(table)`` and ``MatMul(h, Transpose(table))``) gets the transpose as a weight of
its own, so the table becomes GatherBlockQuantized and the output layer an integer layer; before
they were both left float ("shared by several nodes").
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.algo import quant
from onnxcomp.algo.masks import as_rows, from_rows
from onnxcomp.graph.edit import NameScope, get_attr
from onnxcomp.graph.weights import Weight
from onnxcomp.io.tensors import tensor_array
from onnxcomp.passes.quantize.emit import int8_weight

ROLES = ("rnn_w", "rnn_r", "einsum_b", "matmul_b", "gemm_b", "convtranspose", "conv")
DQ_AXIS_OPSET = 13  # per-axis DequantizeLinear


def why_not(w: Weight, model: onnx.ModelProto, opset: int) -> str | None:
    """Why ``w`` cannot be stored as int8 + DequantizeLinear (None when it can)."""
    if w.role not in ROLES or w.out_axis is None:
        return f"{w.role} weights have no integer kernel"
    if w.dtype != np.float32:
        return f"{w.dtype} weights have no integer kernel (int8 storage dequantizes to float32)"
    init = next((t for t in model.graph.initializer if t.name == w.name), None)
    if w.shared or init is None or tuple(init.dims) != tuple(w.shape) or \
            any(i.name == w.name for i in model.graph.input):
        return "shared, or seen through a reshape (int8 storage needs a weight of its own)"
    if opset < DQ_AXIS_OPSET:
        return f"opset {opset} (int8 storage needs a per-channel DequantizeLinear, opset {DQ_AXIS_OPSET})"
    return None


def store(model: onnx.ModelProto, w: Weight, scope: NameScope) -> float:
    """Replace the initializer ``w`` by int8 integers (per output channel, rounded to nearest on
    the best-clipped grid) and a DequantizeLinear that computes a tensor of the same name, so
    every reader (the layer, or the nodes that assemble an LSTM's weights at load) reads the
    dequantized values. Returns the relative error of the stored weight."""
    init = next(t for t in model.graph.initializer if t.name == w.name)
    rows = as_rows(tensor_array(init).astype(np.float64), w)
    q, grid = quant.rtn(rows, 8, rows.shape[1], symmetric=True)
    den = float(np.sum(rows ** 2))
    err = float(np.sum((grid.dequantize(q) - rows) ** 2)) / den if den else 0.0
    model.graph.initializer.remove(init)
    int8_weight(model, from_rows(q, w), grid.scale[:, 0], w.out_axis % len(w.shape), scope, w.name, w.name, 0)
    return err


def unstore(model: onnx.ModelProto, name: str, original: onnx.ModelProto) -> None:
    """Undo :func:`store` for the weight ``name``: its float initializer (from ``original``) back
    in place of the DequantizeLinear (the integers are left for the dead-tensor cleanup)."""
    g = model.graph
    dq = next((n for n in g.node if n.op_type == "DequantizeLinear" and list(n.output) == [name]), None)
    if dq is None:
        return
    g.node.remove(dq)
    g.initializer.append(next(t for t in original.graph.initializer if t.name == name))


def untie_tables(model: onnx.ModelProto) -> int:
    """A 2-D float table read by a Gather (axis 0) and by Transpose(perm 1,0) nodes whose output
    only MatMul/Gemm nodes read as their weight: each such Transpose becomes an initializer of its
    own holding the transposed table. Exact; returns how many."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    outputs = {o.name for o in g.output}
    count = 0
    for node in list(g.node):
        if node.op_type != "Transpose" or not node.input or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        if table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2 or \
                list(get_attr(node, "perm", [1, 0])) != [1, 0] or node.output[0] in outputs:
            continue
        gathered = any(r.op_type == "Gather" and i == 0 and get_attr(r, "axis", 0) == 0
                       for r, i in readers.get(table.name, []))
        users = readers.get(node.output[0], [])
        if not gathered or not users or any(r.op_type not in ("MatMul", "Gemm") or i != 1 for r, i in users):
            continue
        name = NameScope(model)(f"{table.name}_transposed")
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(tensor_array(table).T), name))
        for r, i in users:
            r.input[i] = name
        g.node.remove(node)
        count += 1
    return count
