"""Lossless changes of where a weight is stored, made before the passes so that they find it.

- :func:`fold_weight_transposes`: a layer weight read through a ``Transpose`` of an initializer
  becomes that initializer, stored transposed.
- :func:`einsum_matmuls`: an Einsum that is a MatMul by a matrix initializer becomes that MatMul.
- :func:`unfuse`: onnxruntime's FusedConv / FusedGemm become the Conv / Gemm and activation they fuse.
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


FUSED_ACTS = {"Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
              "Clip": ("min", "max")}  # onnxruntime's FusedConv / FusedGemm activations, with their parameters


def unfuse(model: onnx.ModelProto) -> int:
    """onnxruntime's com.microsoft FusedConv / FusedGemm (a graph it optimized and saved) become the
    standard Conv / Gemm, the Add of FusedConv's sum input, and the activation they fuse, so the
    passes find their weights (onnxruntime fuses them again when it loads the output). Exact; a
    fused op with another activation stays (its weights are then reported left alone). Returns
    how many were written out."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    taken = {o for n in g.node for o in n.output} | set(inits) | {i.name for i in g.input}
    nodes, done, added = [], 0, []
    for node in g.node:
        parts = _unfused(node, inits, opset, taken, added) if node.domain == "com.microsoft" else None
        nodes.extend(parts if parts is not None else [node])
        done += parts is not None
    if done:
        kept = [onnx.NodeProto() for _ in nodes]
        for k, n in zip(kept, nodes):
            k.CopyFrom(n)
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(added)
    return done


def unfused_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with :func:`unfuse` applied (the same new names as on the model itself)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    unfuse(out)
    return out


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _unfused(node: onnx.NodeProto, inits: dict, opset: int, taken: set[str],
             added: list[onnx.TensorProto]) -> list[onnx.NodeProto] | None:
    from onnx import helper

    if node.op_type not in ("FusedConv", "FusedGemm") or len(node.output) != 1:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    act = attrs.pop("activation", b"")
    act = act.decode() if isinstance(act, bytes) else str(act)
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    if act not in FUSED_ACTS or w is None:
        return None
    if node.op_type == "FusedConv":
        params = list(attrs.pop("activation_params", []))
        base = helper.make_node("Conv", list(node.input[:3]), [], name=node.name, **attrs)
    else:
        params = [attrs.pop(k) for k in ("activation_alpha", "activation_beta", "activation_gamma") if k in attrs]
        base = helper.make_node("Gemm", list(node.input[:3]), [], name=node.name, **attrs)
    if len(params) < len(FUSED_ACTS[act]):
        return None
    out = node.output[0]
    mid = _fresh(f"{out}_unfused", taken)
    base.output.append(mid)
    parts = [base]
    if node.op_type == "FusedConv" and len(node.input) > 3 and node.input[3]:  # the sum input Z
        summed = _fresh(f"{out}_sum", taken)
        parts.append(helper.make_node("Add", [mid, node.input[3]], [summed], name=_fresh(f"{node.name}_add", taken)))
        mid = summed
    name = _fresh(f"{node.name}_{act.lower()}", taken)
    if act == "Clip" and opset >= 11:  # min and max are inputs, in the weight's type
        bounds = []
        for b, v in zip(("min", "max"), params[:2]):
            bounds.append(_fresh(f"{name}_{b}", taken))
            dtype = helper.tensor_dtype_to_np_dtype(w.data_type)
            added.append(numpy_helper.from_array(np.array(v, dtype), bounds[-1]))
        parts.append(helper.make_node("Clip", [mid, *bounds], [out], name=name))
    else:
        kw = dict(zip(FUSED_ACTS[act], params))
        parts.append(helper.make_node(act, [mid], [out], name=name, **kw))
    return parts
