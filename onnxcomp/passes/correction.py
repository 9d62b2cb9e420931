"""Calibration-based output correction of compressed layers: per-channel bias and scale.

After a layer's weights are pruned or clustered, its output channels drift: their mean shifts
(bias correction, Nagel et al. 2019) and their spread shrinks or grows. With BatchNorm kept in
the graph the frozen running statistics no longer normalise that drift; with BatchNorm folded
the next layer sees it directly. Here each compressed layer's output channel c is refitted as
``a_c * y'_c + b_c`` to the original model's ``y_c`` by least squares on calibration data:
the scale folds into the weights (zeros stay zeros), the shift into the bias (created if absent).

Layers are corrected one at a time in topological order: each measurement runs the current
compressed model (only the sub-graph up to that layer), so later layers also absorb the error of
earlier ones. The original's outputs are captured once, at a random subset of positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.config import CorrectionConfig
from onnxcomp.data.sampling import take_samples
from onnxcomp.graph.edit import NameScope
from onnxcomp.graph.subgraph import truncate
from onnxcomp.graph.weights import Weight, find_weights, set_weight
from onnxcomp.measure.capture import Capturer
from onnxcomp.measure.sensitivity import estimated_seconds
from onnxcomp.passes.base import Change, Context, Pass, PassResult

MODES = ("affine", "bias")
SCALE_LIMITS = (0.25, 4.0)


POSITIONS_PER_BATCH = 4096  # spatial positions kept per batch and layer: enough for 2 moments
PRIOR_POSITIONS = 32  # the scale is shrunk toward 1 as if this many positions said "no change"


def _rows(t: np.ndarray, axis: int) -> np.ndarray:
    """[channels, positions] view (a copy only when the channel axis moves)."""
    return np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1)


def _positions(n: int, seed: int) -> np.ndarray:
    if n <= POSITIONS_PER_BATCH:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, POSITIONS_PER_BATCH, replace=False))


def fit(new: np.ndarray, ref: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) minimising ||a * new + b - ref||^2 over positions ([C, P] arrays)."""
    x, y = new.astype(np.float64), ref.astype(np.float64)
    mx, my = x.mean(1), y.mean(1)
    if mode == "bias":
        return np.ones_like(mx), my - mx
    xc = x - mx[:, None]
    var = (xc * xc).mean(1)
    cov = (xc * (y - my[:, None])).mean(1)
    ok = var > 1e-12 * np.maximum(1.0, my * my)
    a = np.where(ok, cov / np.where(ok, var, 1.0), 1.0)
    n = x.shape[1]  # few positions (a Gemm head sees one per sample): trust the fit less
    a = np.clip((n * a + PRIOR_POSITIONS) / (n + PRIOR_POSITIONS), *SCALE_LIMITS)
    return a, my - a * mx


def _channel_axis(w: Weight) -> int:
    return 1 if w.role in ("conv", "convtranspose") else (-2 if w.role == "matmul_a" else -1)


def correctable(w: Weight) -> bool:
    """Single-use conv/gemm/matmul kernels whose output channels map to weight slices."""
    if w.shared or w.role not in ("conv", "convtranspose", "gemm_b", "matmul_b"):
        return False
    node = w.uses[0].node
    if w.role == "gemm_b" and any(a.name == "transA" and a.i for a in node.attribute):
        return w.out_axis is not None
    return w.out_axis is not None


def _set_bias(model: onnx.ModelProto, w: Weight, a: np.ndarray, b: np.ndarray, fresh) -> None:
    node = w.uses[0].node
    by_name = find_weights(model).by_name()
    if w.role in ("conv", "convtranspose", "gemm_b"):
        idx = 2
        beta = next((x.f for x in node.attribute if x.name == "beta"), 1.0) if w.role == "gemm_b" else 1.0
        if len(node.input) > idx and node.input[idx] in by_name:
            bw = by_name[node.input[idx]]
            old = bw.values()
            if bw.shared or old.size != b.size:
                return  # a broadcast/shared bias cannot take per-channel shifts
            set_weight(model, bw, (a * old.reshape(-1) + b / beta).reshape(old.shape))
            return
        if len(node.input) > idx and node.input[idx]:
            return  # a computed bias: leave it
        name = fresh(f"{w.name}_bias")
        model.graph.initializer.append(numpy_helper.from_array((b / beta).astype(w.dtype), name))
        while len(node.input) < idx:
            node.input.append("")
        node.input.append(name)
        return
    out = node.output[0]  # MatMul: add the shift after it, keeping the output name
    inner = fresh(f"{out}_mm")
    node.output[0] = inner
    name = fresh(f"{w.name}_bias")
    model.graph.initializer.append(numpy_helper.from_array(b.astype(w.dtype), name))
    pos = list(model.graph.node).index(node)
    model.graph.node.insert(pos + 1, helper.make_node("Add", [inner, name], [out], name=f"{out}_bias"))


def _apply(model: onnx.ModelProto, w: Weight, a: np.ndarray, b: np.ndarray, fresh,
           scaled: np.ndarray | None = None) -> None:
    """Scale the kernel's output channels by ``a`` (or write ``scaled``) and shift the bias by ``b``."""
    if scaled is None:
        values = w.values()
        shape = [1] * values.ndim
        shape[w.out_axis] = values.shape[w.out_axis]
        scaled = (values * a.reshape(shape).astype(values.dtype)).astype(values.dtype)
    set_weight(model, w, scaled)
    _set_bias(model, w, a, b, fresh)


def _reference(original: onnx.ModelProto, ws: list[Weight], batches: list[dict],
               threads: int | None) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """The original model's outputs of every layer, at a fixed subset of positions per batch."""
    outs = [w.uses[0].node.output[0] for w in ws]
    cap = Capturer(truncate(original, outs), outs, threads=threads)
    ref: dict[str, list[np.ndarray]] = {w.name: [] for w in ws}
    picks: dict[str, list[np.ndarray]] = {w.name: [] for w in ws}
    for b, batch in enumerate(batches):
        got = cap.run(batch)
        for i, (w, o) in enumerate(zip(ws, outs)):
            rows = _rows(got[o], _channel_axis(w) % got[o].ndim)
            idx = _positions(rows.shape[1], seed=1000 * b + i)
            picks[w.name].append(idx)
            ref[w.name].append(np.ascontiguousarray(rows[:, idx]))
    return ref, picks


def _sample_budget(compressed: onnx.ModelProto, batches: list[dict], layers: int, budget_s: float) -> list[dict]:
    """Fewer samples when a wave per layer would exceed ``budget_s`` (never below 4), by the
    deterministic cost model of :func:`onnxcomp.measure.sensitivity.estimated_seconds`."""
    total = sum(len(next(iter(b.values()))) for b in batches)
    per_sample = estimated_seconds(compressed, batches[:1], samples=1)
    if per_sample is None:
        return batches
    # each wave runs a prefix of the model: about half of it on average
    affordable = int(budget_s / max(per_sample * max(layers, 1) / 2, 1e-9))
    return take_samples(batches, max(4, min(total, affordable)))


def correct(original: onnx.ModelProto, compressed: onnx.ModelProto, names: Iterable[str],
            data: Iterable[dict], *, mode: str = "affine", max_samples: int = 32,
            budget_s: float = 90.0, threads: int | None = None,
            bias_only: Iterable[str] = (), codebooks: dict[str, str] | None = None) -> dict[str, dict]:
    """Refit the output channels of the named compressed layers in place, one layer at a time.

    The original model's layer outputs are captured once (at a subset of positions); then, in
    topological order, each layer's output in the *current* compressed model (earlier layers
    already corrected) is fitted to them. Layers in ``bias_only`` (e.g. clustered weights whose
    codebook must stay as encoded) only get the shift. Weights in ``codebooks`` (name ->
    cluster granularity) get the scale folded into their per-channel codebook scales, so the
    codebooks stay encodable; where that is impossible (one table per tensor), only the shift.
    Returns a per-layer summary.
    """
    from onnxcomp.encode.tables import Layout
    from onnxcomp.passes.cluster.fit import rescaler

    codebooks = dict(codebooks or {})
    shift_only = set(bias_only)
    wanted = set(names)
    order = {n.output[0]: i for i, n in enumerate(compressed.graph.node)}
    ws = [w for w in find_weights(compressed) if w.name in wanted and correctable(w)]
    ws.sort(key=lambda w: order.get(w.uses[0].node.output[0], 0))
    if not ws:
        return {}
    batches = take_samples(data, max_samples)
    batches = _sample_budget(compressed, batches, len(ws), budget_s)
    ref, picks = _reference(original, ws, batches, threads)
    fresh = NameScope(compressed)
    summary: dict[str, dict] = {}
    for w in ws:
        out = w.uses[0].node.output[0]
        cap = Capturer(truncate(compressed, [out]), [out], threads=threads)
        axis = _channel_axis(w)
        new = [_rows(t := cap.run(b)[out], axis % t.ndim)[:, idx] for b, idx in zip(batches, picks[w.name])]
        cur = find_weights(compressed).by_name()[w.name]
        scaler = rescaler(cur.values(), Layout.of(cur.shape, cur.out_axis), codebooks[w.name]) \
            if w.name in codebooks else None
        wmode = "bias" if w.name in shift_only or (w.name in codebooks and scaler is None) else mode
        x, y = np.concatenate(new, 1), np.concatenate(ref.pop(w.name), 1)
        a, b = fit(x, y, wmode)
        scaled = scaler(a) if scaler is not None and wmode != "bias" else None
        if scaler is not None and wmode != "bias" and scaled is None:
            a, b = fit(x, y, "bias")  # the scales would overflow float16: shift only
        _apply(compressed, cur, a, b, fresh, scaled)
        summary[w.name] = {"scale_mean": float(a.mean()), "shift_abs_mean": float(np.abs(b).mean())}
    return summary


@dataclass
class CorrectionPlan:
    """The weights to refit, the mode, and which of them are clustered (their scales go into codebooks)."""

    names: list[str] = field(default_factory=list)
    mode: str = "none"
    codebooks: dict[str, str] = field(default_factory=dict)


class CorrectionPass(Pass):
    """Per-channel output correction of the weights an earlier step changed (see the module doc).

    ``scope`` "last": the weights the step just before changed (clustered ones keep their codebooks:
    the scale goes into their per-channel scales); "all": every weight whose values differ from
    the input model's, except clustered ones (a recipe's final refit).
    """

    name = "correction"

    def __init__(self, config: CorrectionConfig, scope: str = "last") -> None:
        super().__init__(config)
        self.scope = scope

    def plan(self, model: onnx.ModelProto, ctx: Context) -> CorrectionPlan:
        mode = self.config.mode(ctx.has_real_data)
        if mode == "none" or not ctx.history:
            return CorrectionPlan()
        clustered = {c.name: c.detail["granularity"] for r in ctx.history if r.pass_name == "cluster"
                     for c in r.applied}
        if self.scope == "last":
            names = [c.name for c in ctx.history[-1].applied]
            codebooks = {n: clustered[n] for n in names if n in clustered}
        else:
            names, codebooks = changed_weights(ctx.original, model, skip=set(clustered)), {}
        return CorrectionPlan(names, mode, codebooks)

    def apply(self, model: onnx.ModelProto, plan: CorrectionPlan, ctx: Context) -> PassResult:
        result = PassResult(self.name, settings={"mode": plan.mode})
        if not plan.names:
            return result
        fixed = correct(ctx.original, model, plan.names, ctx.data, mode=plan.mode, threads=ctx.threads,
                        codebooks=plan.codebooks)
        by_name = find_weights(model).by_name()
        for name, info in fixed.items():
            w = by_name[name]
            result.changes.append(Change(name=name, op=w.op_type, action="corrected", params_before=w.size,
                                         params_after=w.size, bytes_before=w.nbytes, bytes_after=w.nbytes,
                                         detail=info))
        result.notes.append(f"{plan.mode} correction of {len(fixed)} layer(s) on the calibration data"
                            + (" (scales folded into the codebooks' channel scales)" if plan.codebooks else ""))
        return result


def changed_weights(original: onnx.ModelProto, model: onnx.ModelProto, skip: set[str] = frozenset()) -> list[str]:
    """Weights of ``model`` whose values differ from the same-named, same-shaped weight of ``original``."""
    before = find_weights(original).by_name()
    out = []
    for w in find_weights(model):
        old = before.get(w.name)
        if old is None or w.name in skip or w.is_bias or w.shape != old.shape or w.source == "constant_of_shape":
            continue
        if not np.array_equal(w.values(), old.values()):
            out.append(w.name)
    return out
