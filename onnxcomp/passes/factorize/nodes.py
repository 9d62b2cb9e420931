"""The nodes and initializers of a factorized layer (shared by the pass and its micro-benchmarks).

- spatial: ``<name>_v`` (k×1 conv, C->R; vertical stride/pad/dilation) then ``<name>_h`` (1×k conv,
  R->O; horizontal stride/pad/dilation; bias);
- tucker2: ``<name>_in`` (1×1, C->R1), ``<name>_core`` (k×k, R1->R2, the original geometry),
  ``<name>_out`` (1×1, R2->O; bias);
- svd: Gemm -> two Gemms (transA on the first; alpha, beta and C on the second), MatMul -> two
  MatMuls, conv -> conv to R channels (original geometry) then 1×1 (bias): ``<name>_a``, ``<name>_b``.

Grouped convs keep ``group`` on every new conv; the last new node writes the original output.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.passes.factorize.plan import Candidate
from onnxcomp.passes.rewrite import Layer, attr

SUFFIXES = {"spatial": ("_v", "_h"), "tucker2": ("_in", "_core", "_out"), "svd": ("_a", "_b")}


def factor_tensors(lay: Layer, cand: Candidate, scope, opset: int) -> tuple[list[str], list[onnx.TensorProto]]:
    """Initializers for the factors (groups concatenated), in the weight's dtype. Before opset 11
    Gemm's C is required: the first Gemm of a pair then reads a zero C (the last name)."""
    dtype = lay.weight.dtype
    arrays = [np.concatenate([f[k] for f in cand.factors], axis=0) for k in range(len(cand.factors[0]))]
    if lay.kind == "conv":
        if cand.method == "svd":  # second factor [O, R] -> a 1x1 kernel
            arrays[1] = arrays[1][:, :, None, None]
        arrays = [lay.stored(a) for a in arrays]  # a 1-D conv's kernels drop the height axis
    elif lay.kind != "conv":  # MatrixSVD: first [R, K], second [O, R] -> stored as the node expects
        first, second = arrays
        trans_b = lay.kind == "gemm" and bool(attr(lay.nodes[0], "transB", 0))
        arrays = [first, second] if trans_b else [first.T, second.T]
    names, inits = [], []
    for arr, suffix in zip(arrays, SUFFIXES[cand.method]):
        name = scope(lay.weight.name + suffix)
        names.append(name)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=dtype), name))
    if lay.kind == "gemm" and opset < 11:
        names.append(scope(lay.weight.name + "_zero"))
        inits.append(numpy_helper.from_array(np.zeros(1, dtype), names[-1]))
    return names, inits


def node_names(node: onnx.NodeProto, method: str, scope) -> list[str]:
    """``<name>_v``, ``<name>_h``, ... (reserved before the initializers take names)."""
    return [scope((node.name or node.output[0]) + s) for s in SUFFIXES[method]]


def build_nodes(lay: Layer, cand: Candidate, node: onnx.NodeProto, names: list[str], scope,
                own: list[str] | None = None) -> list:
    """The new nodes replacing one use ``node``; the last writes ``node.output[0]``."""
    suffixes = SUFFIXES[cand.method]
    own = own or node_names(node, cand.method, scope)
    mids = [scope(node.output[0] + s) for s in suffixes[:-1]] + [node.output[0]]
    ins = [node.input[0]] + mids[:-1]
    bias = list(node.input[2:3]) if len(node.input) > 2 and node.input[2] else []
    zero = names[len(suffixes):]  # a zero C for Gemms before opset 11 (see factor_tensors)
    out = []
    for k, (src, dst, w, name) in enumerate(zip(ins, mids, names, own)):
        last = k == len(suffixes) - 1
        inputs = [src, w] + (bias if last else zero)
        if lay.kind == "conv":
            out.append(helper.make_node("Conv", inputs, [dst], name=name, group=lay.group,
                                        **_conv_geometry(lay, cand.method, k, last)))
        elif lay.kind == "gemm":
            kw = {"transB": int(attr(node, "transB", 0))}
            if k == 0:
                kw["transA"] = int(attr(node, "transA", 0))
            else:
                kw.update(alpha=float(attr(node, "alpha", 1.0)), beta=float(attr(node, "beta", 1.0)))
            out.append(helper.make_node("Gemm", inputs, [dst], name=name, **kw))
        else:
            out.append(helper.make_node("MatMul", inputs, [dst], name=name))
    return out


def _conv_geometry(lay: Layer, method: str, k: int, last: bool) -> dict:
    geom = lay.geom
    if method == "spatial":
        return geom.conv_attrs("vertical" if k == 0 else "horizontal")
    if (method == "tucker2" and k == 1) or (method == "svd" and k == 0):
        return geom.conv_attrs()
    return geom.pointwise()


def dummy_factors(lay: Layer, method: str, ranks: tuple[int, ...]) -> list[list[np.ndarray]]:
    """Random factors of the right shapes per group (a micro-benchmark times shapes, not values)."""
    rng = np.random.default_rng(0)
    k = lay.kernel
    g = lay.group
    if lay.kind == "conv":
        o, cg, kh, kw = k.shape
        og = o // g
        shapes = {"spatial": lambda r: [(r, cg, kh, 1), (og, r, 1, kw)],
                  "tucker2": lambda r1, r2: [(r1, cg, 1, 1), (r2, r1, kh, kw), (og, r2, 1, 1)],
                  "svd": lambda r: [(r, cg, kh, kw), (og, r)]}[method](*ranks)
    else:
        shapes = [(ranks[0], k.shape[1]), (k.shape[0], ranks[0])]
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(g)]
