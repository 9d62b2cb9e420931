"""``factorize``: replace convs and Gemm/MatMul weights by low-rank factor pairs/triples.

- spatial: k×k conv -> k×1 conv (C->R; vertical stride/pad/dilation) then 1×k conv (R->O;
  horizontal stride/pad/dilation; bias), nodes ``<name>_v``, ``<name>_h``;
- tucker2: 1×1 (C->R1) -> k×k core (R1->R2, original stride/pad/dilation) -> 1×1 (R2->O; bias),
  nodes ``<name>_in``, ``<name>_core``, ``<name>_out``;
- svd: Gemm -> two Gemms (transA on the first; alpha, beta and C on the second), MatMul -> two
  MatMuls, conv -> conv to R channels (original geometry) then 1×1 (bias), nodes ``<name>_a``,
  ``<name>_b``.

Grouped convs are factorized per group (every new conv keeps ``group``); depthwise convs are
skipped. The last new node writes the original output tensor. A layer is rewritten only where
its MACs drop (params when shapes are unknown), and with ``measure`` only where onnxruntime runs
the rewritten layer faster. With real calibration data the factors minimise the layer's output
error (see :mod:`onnxcomp.algo.lowrank`); ranks and the auto rule: :mod:`.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.errors import ConfigError
from onnxcomp.io import default_opset
from onnxcomp.algo.linalg import blas_threads
from onnxcomp.passes.base import Change, Context, Pass, PassResult, skip
from onnxcomp.passes.layerstats import layer_statistics
from onnxcomp.passes.factorize.plan import Candidate, applicable, candidates_for, cost, evaluate, pick
from onnxcomp.measure.microbench import MEASURE_MAX_RATIO, LocalNames, measure, micro_node
from onnxcomp.passes.rewrite import GraphEditor, Layer, attr, collect_layers

ROLES = ("conv", "gemm_b", "matmul_b")
SUFFIXES = {"spatial": ("_v", "_h"), "tucker2": ("_in", "_core", "_out"), "svd": ("_a", "_b")}


@dataclass
class LayerPlan:
    layer: Layer
    candidate: Candidate | None = None
    reason: str | None = None
    macs_before: int | None = None
    params_before: int = 0
    latency_ratio: float | None = None
    data_aware: bool = False


@dataclass
class FactorizePlan:
    layers: list[LayerPlan]
    skipped: list = field(default_factory=list)
    data_aware: bool = False
    notes: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the engine's counts


class FactorizePass(Pass):
    """Low-rank factorization of convs and Gemm/MatMul weights."""

    name = "factorize"

    def plan(self, model: onnx.ModelProto, ctx: Context) -> FactorizePlan:
        with blas_threads(1):
            return self._plan(model, ctx)

    def _plan(self, model: onnx.ModelProto, ctx: Context) -> FactorizePlan:
        cfg = self.config
        data_aware = ctx.has_real_data if cfg.data_aware is None else cfg.data_aware
        if data_aware and not ctx.has_real_data:
            raise ConfigError("data-aware factorization needs real calibration data",
                              "pass --data with real samples (or drop --data-aware)")
        layers, skipped = collect_layers(model, cfg, ctx, ROLES)
        out = FactorizePlan([], skipped, data_aware)
        if not data_aware or not layers:
            out.layers = [self._plan_layer(model, lay, None) for lay in layers]
            return out
        editor = None
        for lay, stats, work in layer_statistics(model, layers, ctx, out.notes, sequential=cfg.sequential,
                                                  record=out.measured):
            lp = self._plan_layer(model, lay, stats)
            out.layers.append(lp)
            if cfg.sequential and lp.candidate is not None:  # later layers see the rewrites so far
                editor = editor or GraphEditor(work)
                rewrite(work, lp, editor, drop=False)
        if cfg.sequential:
            out.notes.append("sequential fitting: each layer is fit on the inputs the rewritten layers before it "
                             "produce, toward the original outputs")
        return out

    def _plan_layer(self, model: onnx.ModelProto, lay: Layer, covs) -> LayerPlan:
        cfg = self.config
        macs, params = cost(lay, None)
        lp = LayerPlan(lay, macs_before=macs, params_before=params, data_aware=covs is not None)
        methods = candidates_for(lay, cfg.method)
        reasons = [applicable(lay, m) for m in methods]
        usable = [m for m, r in zip(methods, reasons) if r is None]
        if not usable:
            lp.reason = reasons[0]
            return lp
        cands = [evaluate(m, lay, covs, cfg) for m in usable]
        unit = "MACs" if macs is not None else "params"
        base = macs if macs is not None else params
        dropping = [c for c in cands if (c.macs if macs is not None else c.params) < base]
        best = pick(dropping or cands, cfg)
        after = best.macs if macs is not None else best.params
        if not dropping and not cfg.allow_growth:
            lp.reason = (f"{unit} would not drop ({base} -> {after} with {best.method} at rank "
                         f"{'/'.join(map(str, best.ranks))})")
            return lp
        if cfg.max_error is not None and best.error > cfg.max_error:
            kind = "output" if best.out_error is not None else "weight"
            lp.reason = (f"relative {kind} error {best.error:.3f} with {best.method} at rank "
                         f"{'/'.join(map(str, best.ranks))} exceeds --max-error {cfg.max_error:g}")
            return lp
        lp.candidate = best
        if cfg.measure:
            self._measure(model, lp)
        return lp

    def _measure(self, model: onnx.ModelProto, lp: LayerPlan) -> None:
        lay, cand = lp.layer, lp.candidate
        if not lay.shapes_known:
            lp.candidate, lp.reason = None, "--measure: input shape unknown, cannot benchmark the layer"
            return
        node = micro_node(lay.nodes[0])
        scope = LocalNames()
        names, inits = factor_tensors(lay, cand, scope, default_opset(model))
        nodes = build_nodes(lay, cand, node, names, scope)
        dtype = helper.np_dtype_to_tensor_dtype(lay.weight.dtype)
        lp.latency_ratio = measure(node, np.asarray(lay.weight.values(), lay.weight.dtype), nodes, inits,
                                   lay.in_shapes[0], dtype, default_opset(model), lp.macs_before)
        if lp.latency_ratio > MEASURE_MAX_RATIO:
            lp.candidate = None
            lp.reason = (f"--measure: the rewritten layer takes {lp.latency_ratio:.2f}x the original time "
                         f"in onnxruntime (1 thread), not faster")

    def apply(self, model: onnx.ModelProto, plan: FactorizePlan, ctx: Context) -> PassResult:
        result = PassResult(self.name, settings={**_settings(self.config, plan), **plan.measured})
        result.notes += plan.notes
        editor = GraphEditor(model)
        for w, why in plan.skipped:
            result.changes.append(skip(w, why))
            result.changes[-1].detail = {"layer": w.consumers[0]}
        for lp in plan.layers:
            lay, cand = lp.layer, lp.candidate
            if cand is None:
                change = skip(lay.weight, lp.reason or "not rewritten")
                change.macs_before = change.macs_after = lp.macs_before
                change.detail = {"layer": lay.name, "latency_ratio": lp.latency_ratio}
                result.changes.append(change)
                continue
            new_names = rewrite(model, lp, editor, drop=True)
            result.changes.append(_change(lp, new_names))
        return result


def rewrite(model: onnx.ModelProto, lp: LayerPlan, editor: GraphEditor, drop: bool) -> list[str]:
    """Replace every use of the layer in ``model`` (found by output name); the new node names."""
    lay, cand = lp.layer, lp.candidate
    by_output = {n.output[0]: n for n in model.graph.node if n.output}
    nodes = [by_output[n.output[0]] for n in lay.nodes]
    reserved = [node_names(node, cand.method, editor.scope) for node in nodes]
    names, inits = factor_tensors(lay, cand, editor.scope, default_opset(model))
    model.graph.initializer.extend(inits)
    new_names = []
    for node, own in zip(nodes, reserved):
        new = build_nodes(lay, cand, node, names, editor.scope, own)
        editor.replace(node, new)
        new_names += [n.name for n in new]
    if drop:
        editor.drop_weight(lay.weight)
    return new_names


def factor_tensors(lay: Layer, cand: Candidate, scope, opset: int) -> tuple[list[str], list[onnx.TensorProto]]:
    """Initializers for the factors (groups concatenated), in the weight's dtype. Before opset 11
    Gemm's C is required: the first Gemm of a pair then reads a zero C (the last name)."""
    dtype = lay.weight.dtype
    arrays = [np.concatenate([f[k] for f in cand.factors], axis=0) for k in range(len(cand.factors[0]))]
    if lay.kind == "conv" and cand.method == "svd":  # second factor [O, R] -> a 1x1 kernel
        arrays[1] = arrays[1][:, :, None, None]
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
    return {"kernel_shape": [1, 1]}


def _change(lp: LayerPlan, new_names: list[str]) -> Change:
    lay, cand = lp.layer, lp.candidate
    w = lay.weight
    detail = {"layer": lay.name, "method": cand.method, "rank": list(cand.ranks), "energy": cand.energy,
              "output_error": cand.out_error, "data_aware": lp.data_aware, "nodes": new_names,
              "latency_ratio": lp.latency_ratio, "group": lay.group}
    return Change(name=w.name, op=w.op_type, action="factorized", params_before=w.size,
                  params_after=cand.params,
                  bytes_before=w.nbytes, bytes_after=cand.params * w.dtype.itemsize,
                  macs_before=lp.macs_before, macs_after=cand.macs, detail=detail)


def _settings(cfg, plan: FactorizePlan) -> dict:
    removed = None if cfg.target_ratio is None else round(1.0 - cfg.target_ratio, 6)
    return {"method": cfg.method, "rank": cfg.rank, "energy": cfg.energy, "ratio": removed,
            "round_to": cfg.round_to, "data_aware": plan.data_aware, "measure": cfg.measure,
            "max_error": cfg.max_error, "sequential": cfg.sequential if plan.data_aware else None,
            "rank_rule": "rank" if cfg.rank else "energy" if cfg.energy else f"ratio {removed:g} of the MACs removed",
            "measure_max_ratio": MEASURE_MAX_RATIO if cfg.measure else None}
