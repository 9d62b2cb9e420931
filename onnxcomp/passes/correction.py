"""Calibration-based output correction of compressed layers: per-channel bias and scale.

After a layer's weights are pruned or clustered, its output channels drift: their mean shifts
(bias correction, Nagel et al. 2019) and their spread shrinks or grows. With BatchNorm kept in
the graph the frozen running statistics no longer normalise that drift; with BatchNorm folded
the next layer sees it directly. Here each compressed layer's output channel c is refitted as
``a_c * y'_c + b_c`` to the original model's ``y_c`` by least squares on calibration data:
the scale folds into the weights (zeros stay zeros), the shift into the bias (created if absent).

Layers are corrected one at a time in topological order, in one walk of the streaming engine:
each layer's output in the current compressed model (earlier layers already corrected) is fitted
to the original's at a random subset of positions, so later layers also absorb the error of
earlier ones. Cost: the original once, the compressed model about twice (each corrected layer
runs again with its new weights), whatever the depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.algo.numeric import keep_finite
from onnxcomp.config import CorrectionConfig
from onnxcomp.graph.axes import out_channels, per_out_channel
from onnxcomp.graph.edit import NameScope
from onnxcomp.graph.weights import Weight, find_weights, set_weight
from onnxcomp.measure.sensitivity import CHECK_SAMPLES, output_errors
from onnxcomp.passes.base import Change, Context, Pass, PassResult

MODES = ("affine", "bias")
SCALE_LIMITS = (0.25, 4.0)
CHECK_BYTES = 1 << 30  # above this the model is not copied, and the correction is kept unchecked
# A correction is kept only when it brings the outputs of the first CHECK_SAMPLES calibration samples
# closer to the original's; it is fitted on the others (on all of them when fewer than 2x that).


POSITIONS_PER_BATCH = 4096  # spatial positions kept per batch and layer: enough for 2 moments
FIT_BLOCK = 1 << 22  # values per block of channels fitted together
PRIOR_POSITIONS = 32  # the scale is shrunk toward 1 as if this many positions said "no change"


def _rows(t: np.ndarray, axis: int) -> np.ndarray:
    """[channels, positions] view (a copy only when the channel axis moves)."""
    return np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1)


def _positions(n: int, seed: int) -> np.ndarray:
    if n <= POSITIONS_PER_BATCH:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, POSITIONS_PER_BATCH, replace=False))


def fit(new: np.ndarray, ref: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) minimising ||a * new + b - ref||^2 over positions ([C, P] arrays).

    A channel whose activations are not finite in either model (overflowing weights, NaN inputs)
    gets (1, 0): left as it is. Fitted a block of channels at a time (float64 copies of ~32 MB, no
    centred product arrays): whole, a [1152, 65536] pair took 6 s and 600 MB per temporary, now 0.7 s."""
    step = max(1, FIT_BLOCK // max(1, new.shape[1]))
    parts = [_fit_block(new[lo:lo + step], ref[lo:lo + step], mode) for lo in range(0, len(new), step)]
    if not parts:
        return np.ones(0), np.zeros(0)
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def _fit_block(new: np.ndarray, ref: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = new.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    if not finite.all():
        x[~finite], y[~finite] = 0.0, 0.0
    n = x.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        mx, my = x.mean(1), y.mean(1)
        if mode == "bias":
            a = np.ones_like(mx)
        else:
            x -= mx[:, None]  # centred in place; sum(xc * (y - my)) = sum(xc * y)
            var = np.einsum("ij,ij->i", x, x) / n
            cov = np.einsum("ij,ij->i", x, y) / n
            ok = (var > 1e-12 * np.maximum(1.0, my * my)) & np.isfinite(var) & np.isfinite(cov)
            a = np.where(ok, cov / np.where(ok, var, 1.0), 1.0)
            # few positions (a Gemm head sees one per sample): trust the fit less
            a = np.clip((n * a + PRIOR_POSITIONS) / (n + PRIOR_POSITIONS), *SCALE_LIMITS)
        b = my - a * mx
    keep = finite & np.isfinite(a) & np.isfinite(b)
    return np.where(keep, a, 1.0), np.where(keep, b, 0.0)


def _channel_axis(w: Weight) -> int:
    return 1 if w.role in ("conv", "convtranspose") else (-2 if w.role == "matmul_a" else -1)


def correctable(w: Weight) -> bool:
    """Single-use conv/gemm/matmul kernels whose output channels map to weight slices (a Gemm
    with beta 0 ignores its C: no shift can go there)."""
    if w.shared or w.role not in ("conv", "convtranspose", "gemm_b", "matmul_b"):
        return False
    node = w.uses[0].node
    if w.role == "gemm_b" and next((a.f for a in node.attribute if a.name == "beta"), 1.0) == 0:
        return False
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
            new = (a * old.reshape(-1) + b / beta).reshape(old.shape).astype(old.dtype)
            set_weight(model, bw, keep_finite(new, old))
            return
        if len(node.input) > idx and node.input[idx]:
            return  # a computed bias: leave it
        name = fresh(f"{w.name}_bias")
        model.graph.initializer.append(numpy_helper.from_array(_finite_shift(b / beta, w.dtype), name))
        while len(node.input) < idx:
            node.input.append("")
        node.input.append(name)
        return
    out = node.output[0]  # MatMul: add the shift after it, keeping the output name
    inner = fresh(f"{out}_mm")
    node.output[0] = inner
    name = fresh(f"{w.name}_bias")
    model.graph.initializer.append(numpy_helper.from_array(_finite_shift(b, w.dtype), name))
    pos = list(model.graph.node).index(node)
    model.graph.node.insert(pos + 1, helper.make_node("Add", [inner, name], [out], name=f"{out}_bias"))


def _finite_shift(b: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The shift in the weight's dtype, 0 where it does not fit (float16 overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(b).astype(dtype)
    return np.where(np.isfinite(out), out, np.zeros((), dtype))


def _apply(model: onnx.ModelProto, w: Weight, a: np.ndarray, b: np.ndarray, fresh,
           scaled: np.ndarray | None = None) -> None:
    """Scale the kernel's output channels by ``a`` (or write ``scaled``) and shift the bias by ``b``."""
    values = w.values()
    if scaled is None:
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (values * per_out_channel(w, a).astype(values.dtype)).astype(values.dtype)
    set_weight(model, w, keep_finite(scaled, values))
    _set_bias(model, w, a, b, fresh)


def correct(original: onnx.ModelProto, compressed: onnx.ModelProto, names: Iterable[str],
            data: Iterable[dict], *, mode: str = "affine", threads: int | None = None,
            bias_only: Iterable[str] = (), codebooks: dict[str, str] | None = None,
            progress=None, record: dict | None = None) -> dict[str, dict]:
    """Refit the output channels of the named compressed layers in place, one layer at a time.

    One walk of the streaming engine (:mod:`onnxcomp.measure.engine`) in topological order: each
    layer's output in the *current* compressed model (earlier layers already corrected) is fitted
    to the original's at a subset of positions. Layers in ``bias_only`` only get the shift.
    Weights in ``codebooks`` (name -> cluster granularity) get the scale folded into their
    per-channel codebook scales, so the codebooks stay encodable; where that is impossible (one
    table per tensor), only the shift. Layers whose output the original does not have (an earlier
    step rewrote them) are left alone. Returns a per-layer summary.
    """
    from onnxcomp.encode.tables import Layout
    from onnxcomp.measure.engine import Engine
    from onnxcomp.passes.cluster.fit import rescaler

    codebooks = dict(codebooks or {})
    shift_only = set(bias_only)
    wanted = set(names)
    ws = [w for w in find_weights(compressed) if w.name in wanted and correctable(w)]
    if not ws:
        return {}
    by_output = {w.uses[0].node.output[0]: w.name for w in ws}
    fresh = NameScope(compressed)
    summary: dict[str, dict] = {}
    with Engine(compressed, original, data, threads=threads, progress=progress, label="correction",
                record=record) as eng:
        for i, site in enumerate(eng.walk([(out, 0) for out in by_output])):
            ref = site.y_ref()
            if ref is None:
                continue
            cur = find_weights(compressed).by_name()[by_output[site.name]]
            axis = _channel_axis(cur)
            picks = [_positions(_rows(y, axis % y.ndim).shape[1], seed=1000 * b + i) for b, y in enumerate(ref)]
            x = np.concatenate([_rows(y, axis % y.ndim)[:, idx] for y, idx in zip(site.y(), picks)], 1)
            y = np.concatenate([_rows(r, axis % r.ndim)[:, idx] for r, idx in zip(ref, picks)], 1)
            if x.shape[0] != out_channels(cur) or x.shape != y.shape:
                continue  # the output's channel axis is not the weight's (leave the layer as it is)
            layout = Layout.of(cur.shape, cur.out_axis)  # a grouped ConvTranspose's codebook rows mix
            scaler = rescaler(cur.values(), layout, codebooks[cur.name]) \
                if cur.name in codebooks and layout.channels == x.shape[0] else None  # channels: shift only
            wmode = "bias" if cur.name in shift_only or (cur.name in codebooks and scaler is None) else mode
            a, b = fit(x, y, wmode)
            scaled = scaler(a) if scaler is not None and wmode != "bias" else None
            if scaler is not None and wmode != "bias" and scaled is None:
                a, b = fit(x, y, "bias")  # the scales would overflow float16: shift only
            _apply(compressed, cur, a, b, fresh, scaled)
            site.changed()
            summary[cur.name] = {"scale_mean": float(a.mean()), "shift_abs_mean": float(np.abs(b).mean())}
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
        from onnxcomp.io import model_bytes

        before = None
        if ctx.has_real_data and model_bytes(model) <= CHECK_BYTES:
            before = onnx.ModelProto()
            before.CopyFrom(model)
        fit_on, where = ctx.data, "calibration samples"
        if before is not None:  # checked on samples it was not fitted on, when there are enough
            from onnxcomp.data.sampling import batch_len, batch_unit, skip_samples

            rest = skip_samples(ctx.data, CHECK_SAMPLES, batch_unit(ctx.original))
            if sum(batch_len(b) for b in rest) >= CHECK_SAMPLES:
                fit_on, where = rest, "held-out calibration samples"
        fixed = correct(ctx.original, model, plan.names, fit_on, mode=plan.mode, threads=ctx.threads,
                        codebooks=plan.codebooks, progress=ctx.progress, record=result.settings)
        if before is not None and fixed:
            old, new = output_errors(ctx.original, [before, model], ctx.data, threads=ctx.threads)
            result.settings["output_error"] = {"before": old, "after": new, "held_out": fit_on is not ctx.data}
            if new > old:  # an output-matched step before it can leave nothing a per-channel refit fixes
                model.CopyFrom(before)
                result.notes.append(f"{plan.mode} correction not kept: it moved the outputs away from the "
                                    f"original's on {CHECK_SAMPLES} {where} ({old:.3g} -> {new:.3g})")
                return result
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
