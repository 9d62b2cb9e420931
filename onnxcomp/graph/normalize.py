"""Lossless changes of where a weight is stored, made before the passes so that they find it.

- :func:`fold_weight_transposes`: a layer weight read through a ``Transpose`` of an initializer
  becomes that initializer, stored transposed.
- :func:`einsum_matmuls`: an Einsum that is a MatMul by a matrix initializer becomes that MatMul.
- :func:`onnxcomp.graph.nested.hoist` (If/Loop/Scan bodies) is the other one.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.graph import einsum
from onnxcomp.graph.edit import clear_value_info, get_attr
from onnxcomp.graph.nested import subgraph_inputs
from onnxcomp.io import tensor_array


REWRITABLE = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)  # numpy moves them


def _readers(g: onnx.GraphProto) -> tuple[dict[str, list[onnx.NodeProto]], set[str]]:
    """The nodes reading each name, and the names no rewrite may touch: the graph's inputs and
    outputs and what If/Loop/Scan bodies read."""
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    fixed = {o.name for o in g.output} | {i.name for i in g.input}
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
        fixed |= subgraph_inputs(n)
    return readers, fixed


def fold_weight_transposes(model: onnx.ModelProto, slots) -> int:
    """Store a layer weight that is read through a Transpose of an initializer (torch's dynamo
    exporter writes some F.linear weights so) transposed instead, under the initializer's name: the
    layer reads the same values, the node goes, the bytes stay. Only when that Transpose is the
    initializer's one reader (a tied embedding, also read by a Gather, stays as it is). ``slots``:
    a node's weight input slots. Returns how many were folded."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers, fixed = _readers(g)
    weights = {n.input[i] for n in g.node for i in slots(n) if i < len(n.input)}
    folded = 0
    for node in [n for n in g.node if n.op_type == "Transpose" and n.input and n.input[0] in inits]:
        src, out = node.input[0], node.output[0]
        t = inits[src]
        if len(readers[src]) != 1 or src in fixed or out in fixed or out not in weights or len(t.dims) < 2 \
                or t.data_type not in REWRITABLE:
            continue
        perm = get_attr(node, "perm") or list(range(len(t.dims)))[::-1]
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(tensor_array(t).transpose(perm)), src))
        for reader in readers[out]:
            for k, name in enumerate(reader.input):
                if name == out:
                    reader.input[k] = src
        g.node.remove(node)
        clear_value_info(model, {src, out})
        folded += 1
    return folded


def einsum_matmuls(model: onnx.ModelProto) -> int:
    """An Einsum that is a MatMul by a matrix initializer ('bsi,io->bso', or 'bsi,oi->bso' with the
    matrix stored transposed) becomes that MatMul, so every pass (the rewrites and quantize too)
    and the correction treat it as one: the same products, summed as onnxruntime's MatMul sums them.
    Only when this node is the matrix's one reader. Returns how many were rewritten."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers, fixed = _readers(g)
    done = 0
    for node in [n for n in g.node if n.op_type == "Einsum" and len(n.input) == 2]:
        eq = einsum.equation(node)
        if "->" not in eq or eq.count(",") != 1:
            continue
        (a, b), y = eq.split("->")[0].split(","), eq.split("->")[1]
        for k, (x, w) in enumerate(((a, b), (b, a))):
            name = node.input[1 - k]
            t = inits.get(name)
            if t is None or len(t.dims) != 2 or len(w) != 2 or len(readers[name]) != 1 or name in fixed \
                    or t.data_type not in REWRITABLE:
                continue
            i, o = (w[0], w[1]) if x.endswith(w[0]) else (w[1], w[0])
            letters = x.replace("...", "")
            if not x.endswith(i) or i == o or o in x or y != x[:-1] + o or len(set(letters)) != len(letters):
                continue
            if w != i + o:  # stored [out, in]: the MatMul reads [in, out]
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(tensor_array(t).T), name))
            node.CopyFrom(onnx.helper.make_node("MatMul", [node.input[k], name], list(node.output), name=node.name))
            clear_value_info(model, {name})
            done += 1
            break
    return done
