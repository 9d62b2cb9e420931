"""``depthwise``: dense convs -> depthwise + pointwise, or -> grouped convs on permuted channels.

- depthwise (multiplier M): ``<name>_dw`` (k×k, group = C, C -> C·M, original stride/pad/
  dilation) then ``<name>_pw`` (1×1, C·M -> O, bias); per input channel the best rank-M
  approximation of its ``O × k²`` slice (see :mod:`onnxcomp.algo.separable`); exact at M = min(O, k²).
- grouped (G groups): ``<name>_perm_in`` (Gather on axis 1: the input channels in block order),
  ``<name>_g`` (the conv with group = G on the permuted channels, permuted bias), then
  ``<name>_perm_out`` (Gather restoring the original output channel order, so consumers are
  untouched). The blocks come from a balanced co-clustering that keeps the most weight energy;
  Gathers are left out where a permutation is the identity.

Only dense convs (group = 1; 1-D ones as the height-1 2-D convs they equal) are rewritten, and
by default only where a 1-thread micro-benchmark of the layer runs the rewrite faster (as in
``factorize``: fewer MACs often ran slower); with real calibration data the pointwise factor
(depthwise) or each block (grouped) is refit by least squares on the layer-input patches of the
original model (every layer on its original inputs; no sequential waves here).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.errors import ConfigError
from onnxcomp.graph.weights import find_weights
from onnxcomp.io import default_opset
from onnxcomp.algo.linalg import blas_threads, output_error, weight_energy
from onnxcomp.algo.separable import Separable, co_cluster, grouped_approx, grouped_kernel
from onnxcomp.passes.base import Change, Context, Pass, PassResult, skip
from onnxcomp.passes.layerstats import layer_statistics
from onnxcomp.measure.microbench import MEASURE_MAX_RATIO, LocalNames, measure, micro_node
from onnxcomp.passes.rewrite import GraphEditor, Layer, collect_layers, measure_by_default


@dataclass
class DepthwisePlan:
    """One entry per layer: (layer, rewrite dict or None, reason)."""

    layers: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    data_aware: bool = False
    notes: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the engine's counts
    measure: bool = False  # each rewrite kept only where its micro-benchmark runs faster


def _costs(lay: Layer, inner: int, mode: str) -> tuple[int | None, int | None, int, int]:
    """(MACs before, after, params before, after); ``inner`` = M (depthwise) or G (grouped)."""
    o, c, kh, kw = lay.kernel.shape
    k2 = kh * kw
    before_p = lay.kernel.size
    after_p = c * inner * k2 + o * c * inner if mode == "depthwise" else before_p // inner
    if not lay.shapes_known:
        return None, None, before_p, after_p
    macs_b = macs_a = 0
    for shape in lay.out_shapes:
        pos = int(np.prod(shape[2:]))
        macs_b += o * pos * c * k2
        if mode == "depthwise":
            macs_a += c * inner * pos * k2 + o * pos * c * inner
        else:
            macs_a += o * pos * (c // inner) * k2
    return macs_b, macs_a, before_p, after_p


class DepthwisePass(Pass):
    """Depthwise-separable or grouped approximations of dense convs."""

    name = "depthwise"

    def plan(self, model: onnx.ModelProto, ctx: Context) -> DepthwisePlan:
        with blas_threads(1):
            return self._plan(model, ctx)

    def _plan(self, model: onnx.ModelProto, ctx: Context) -> DepthwisePlan:
        cfg = self.config
        data_aware = ctx.has_real_data if cfg.data_aware is None else cfg.data_aware
        if data_aware and not ctx.has_real_data:
            raise ConfigError("data-aware rewriting needs real calibration data",
                              "pass --data with real samples (or drop --data-aware)")
        report = find_weights(model)
        layers, skipped = collect_layers(model, cfg, ctx, ("conv",), report)
        biases = {w.name: w for w in report if w.role == "conv_bias"}
        out = DepthwisePlan([], skipped, data_aware)
        dense = [lay for lay in layers if lay.group == 1]
        out.measure = bool(cfg.measure)
        if cfg.measure is None and not cfg.allow_growth:
            out.measure, why = measure_by_default(dense, 1)
            out.notes += [why] if why else []
        covs = {}
        if data_aware and dense:
            covs = {lay.weight.name: st[0].cov for lay, st, _ in
                    layer_statistics(model, dense, ctx, out.notes, sequential=False, record=out.measured)
                    if st is not None}
        for lay in layers:
            entry, reason = self._plan_layer(model, lay, covs.get(lay.weight.name), biases, out.measure)
            out.layers.append((lay, entry, reason))
        return out

    def _plan_layer(self, model, lay: Layer, cov, biases, measure: bool) -> tuple[dict | None, str | None]:
        cfg = self.config
        o, c, kh, kw = lay.kernel.shape
        if lay.group > 1:
            return None, ("depthwise conv: already separable" if c == 1
                          else f"grouped conv (group={lay.group}): only dense convs are rewritten")
        if cfg.mode == "depthwise":
            if kh * kw == 1:
                return None, "1x1 kernel: nothing to separate"
            entry = self._depthwise(lay, cov)
        else:
            g = cfg.groups
            if o % g or c % g:
                return None, f"{o} output / {c} input channels are not divisible by --groups {g}"
            if any(n.input[2:3] and n.input[2] and n.input[2] not in biases for n in lay.nodes):
                return None, "bias is not a constant tensor"
            entry = self._grouped(lay, cov, biases)
        floor = cfg.target_energy
        if floor is not None and entry["kept"] < floor - 1e-9:
            return None, f"would keep {entry['kept']:.3f} of the weight energy, below --energy {floor:g}"
        mb, ma, pb, pa = _costs(lay, entry["inner"], cfg.mode)
        entry.update(macs_before=mb, macs_after=ma, params_before=pb, params_after=pa)
        base, after, unit = (mb, ma, "MACs") if mb is not None else (pb, pa, "params")
        if after >= base and not cfg.allow_growth:
            what = f"multiplier {entry['inner']}" if cfg.mode == "depthwise" else f"{entry['inner']} groups"
            return None, f"{unit} would not drop ({base} -> {after} with {what})"
        if measure:
            return self._measure(model, lay, entry)
        return entry, None

    def _depthwise(self, lay: Layer, cov) -> dict:
        cfg = self.config
        sep = Separable(lay.kernel, cov)
        if cfg.multiplier is not None:
            m = min(cfg.multiplier, sep.full)
        else:
            goal = cfg.target_energy - 1e-9
            m = next((k for k in range(1, sep.full + 1) if sep.energy(k) >= goal), sep.full)
        factors = sep.factors(m)
        approx = sep.approx(factors)
        return {"mode": "depthwise", "inner": m, "factors": factors, "kept": sep.energy(m),
                "energy": weight_energy(lay.kernel, approx),
                "out_error": output_error(lay.kernel, approx, cov) if cov is not None else None}

    def _grouped(self, lay: Layer, cov, biases) -> dict:
        g = self.config.groups
        w = lay.kernel
        out_label, in_label, kept = co_cluster((np.asarray(w, np.float64) ** 2).sum((2, 3)), g)
        kernel, out_perm, in_perm = grouped_kernel(w, out_label, in_label, g, cov)
        approx = grouped_approx(kernel, out_perm, in_perm, g)
        bias_name = lay.nodes[0].input[2] if len(lay.nodes[0].input) > 2 else ""
        bias = biases[bias_name].values()[out_perm] if bias_name else None
        return {"mode": "grouped", "inner": g, "factors": [kernel], "out_perm": out_perm, "in_perm": in_perm,
                "bias": bias, "bias_weight": biases[bias_name] if bias_name else None, "kept": kept,
                "energy": weight_energy(w, approx),
                "out_error": output_error(w, approx, cov) if cov is not None else None}

    def _measure(self, model, lay: Layer, entry: dict) -> tuple[dict | None, str | None]:
        if not lay.shapes_known:
            return None, "measure: input shape unknown, cannot benchmark the layer"
        node = micro_node(lay.nodes[0])
        scope = LocalNames()
        names, inits = tensors(lay, entry, scope)
        nodes = build(lay, entry, node, names, scope)
        dtype = helper.np_dtype_to_tensor_dtype(lay.weight.dtype)
        weight = np.asarray(lay.weight.values(), lay.weight.dtype)
        entry["latency_ratio"] = measure(node, weight, nodes, inits,
                                         lay.in_shapes[0], dtype, default_opset(model))
        if entry["latency_ratio"] > MEASURE_MAX_RATIO:
            return None, (f"not faster: the rewritten layer takes {entry['latency_ratio']:.2f}x the original "
                          "time in onnxruntime (1 thread)")
        return entry, None

    def apply(self, model: onnx.ModelProto, plan: DepthwisePlan, ctx: Context) -> PassResult:
        cfg = self.config
        result = PassResult(self.name, notes=list(plan.notes), settings={
            "mode": cfg.mode, "multiplier": cfg.multiplier, "groups": cfg.groups, "energy": cfg.target_energy,
            "data_aware": plan.data_aware, "measure": plan.measure, **plan.measured})
        for w, why in plan.skipped:
            result.changes.append(skip(w, why))
            result.changes[-1].detail = {"layer": w.consumers[0]}
        editor = GraphEditor(model)
        for lay, entry, reason in plan.layers:
            if entry is None:
                result.changes.append(skip(lay.weight, reason))
                result.changes[-1].detail = {"layer": lay.name}
                continue
            reserved = [node_names(node, entry["mode"], editor.scope) for node in lay.nodes]
            names, inits = tensors(lay, entry, editor.scope)
            model.graph.initializer.extend(inits)
            new_names = []
            for node, own in zip(lay.nodes, reserved):
                nodes = build(lay, entry, node, names, editor.scope, own)
                editor.replace(node, nodes)
                new_names += [n.name for n in nodes]
            editor.drop_weight(lay.weight)
            if entry.get("bias_weight") is not None:  # the grouped conv reads a permuted copy
                editor.drop_weight(entry["bias_weight"])
            result.changes.append(_change(lay, entry, new_names, plan.data_aware))
        return result


def tensors(lay: Layer, entry: dict, scope) -> tuple[dict, list[onnx.TensorProto]]:
    """Initializers of the rewrite, keyed by role (dw, pw / kernel, bias, perm_in, perm_out)."""
    dt = lay.weight.dtype
    arrays = {}
    if entry["mode"] == "depthwise":
        arrays["dw"], arrays["pw"] = (a.astype(dt) for a in entry["factors"])
    else:
        arrays["g"] = entry["factors"][0].astype(dt)
        if entry["bias"] is not None:
            arrays["bias"] = np.asarray(entry["bias"]).astype(dt)
        if not np.array_equal(entry["in_perm"], np.arange(len(entry["in_perm"]))):
            arrays["perm_in"] = entry["in_perm"].astype(np.int64)
        if not np.array_equal(entry["out_perm"], np.arange(len(entry["out_perm"]))):
            arrays["perm_out"] = np.argsort(entry["out_perm"]).astype(np.int64)
    arrays = {k: lay.stored(a) if k in ("dw", "pw", "g") else a for k, a in arrays.items()}  # 1-D: no height
    names = {k: scope(f"{lay.weight.name}_{k}") for k in arrays}
    return names, [numpy_helper.from_array(np.ascontiguousarray(a), names[k]) for k, a in arrays.items()]


def node_names(node: onnx.NodeProto, mode: str, scope) -> dict[str, str]:
    """Node names by role (reserved before the initializers take names)."""
    base = node.name or node.output[0]
    roles = ("dw", "pw") if mode == "depthwise" else ("perm_in", "g", "perm_out")
    return {r: scope(f"{base}_{r}") for r in roles}


def build(lay: Layer, entry: dict, node: onnx.NodeProto, names: dict, scope,
          own: dict[str, str] | None = None) -> list[onnx.NodeProto]:
    """The nodes replacing one use; the last writes ``node.output[0]``."""
    out = node.output[0]
    own = own or node_names(node, entry["mode"], scope)
    bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    geom = lay.geom.conv_attrs()
    if entry["mode"] == "depthwise":
        mid = scope(out + "_dw")
        c = lay.kernel.shape[1]
        return [helper.make_node("Conv", [node.input[0], names["dw"]], [mid], name=own["dw"],
                                 group=c, **geom),
                helper.make_node("Conv", [mid, names["pw"]] + bias, [out], name=own["pw"],
                                 **lay.geom.pointwise())]
    nodes, src = [], node.input[0]
    if "perm_in" in names:
        nodes.append(helper.make_node("Gather", [src, names["perm_in"]], [scope(out + "_perm_in")],
                                      name=own["perm_in"], axis=1))
        src = nodes[-1].output[0]
    conv_out = scope(out + "_g") if "perm_out" in names else out
    conv_in = [src, names["g"]] + ([names["bias"]] if "bias" in names else [])
    nodes.append(helper.make_node("Conv", conv_in, [conv_out], name=own["g"], group=entry["inner"],
                                  **geom))
    if "perm_out" in names:
        nodes.append(helper.make_node("Gather", [conv_out, names["perm_out"]], [out],
                                      name=own["perm_out"], axis=1))
    return nodes


def _change(lay: Layer, entry: dict, new_names: list[str], data_aware: bool) -> Change:
    w = lay.weight
    key = "multiplier" if entry["mode"] == "depthwise" else "groups"
    detail = {"layer": lay.name, "mode": entry["mode"], key: entry["inner"], "energy": entry["energy"],
              "kept": entry["kept"],
              "output_error": entry["out_error"], "data_aware": data_aware, "nodes": new_names,
              "latency_ratio": entry.get("latency_ratio")}
    return Change(name=w.name, op=w.op_type, action=entry["mode"], params_before=entry["params_before"],
                  params_after=entry["params_after"], bytes_before=w.nbytes,
                  bytes_after=entry["params_after"] * w.dtype.itemsize, macs_before=entry["macs_before"],
                  macs_after=entry["macs_after"], detail=detail)
