"""Weight sharing: k-means each weight into a small codebook (Deep Compression, stage 2).

plan: select weights (biases, tiny tensors and depthwise kernels skipped with a reason), measure
each one's importance on real data (diagonal of the layer-input Hessian, :mod:`onnxcomp.measure.hessian`),
choose the bits per layer (uniform, or mixed from the average-bits budget); apply: write every
weight's clustered values (:mod:`.fit`), zeros kept. Storage is a separate stage
(:func:`onnxcomp.encode.encode_weights` finds the codebook in the final values, bit-exactly).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import onnx

from onnxcomp.algo.allocation import allocate
from onnxcomp.config import ClusterConfig
from onnxcomp.encode.tables import Layout
from onnxcomp.graph.weights import Weight, find_weights, set_weight
from onnxcomp.passes.base import Change, Context, Pass, PassResult
from onnxcomp.passes.cluster import seq as cluster_seq
from onnxcomp.passes.cluster.costs import (budget_limit, candidates, granularity_of, grid_levels, is_pruned,
                                          option_bits, select)
from onnxcomp.passes.cluster.fit import Fit, fit
from onnxcomp.passes.cluster.layers import graph_order, in_order, layer_stats, refit_codebooks, rescale_by_gptq

MIXED_RANGE = 2  # mixed bits stay within budget +- this
MEASURED_LOW = 1  # sensitivity: candidate widths from floor(budget) - this up to 8 bits
MEASURE_BUDGET_S = 300.0  # sensitivity trials: fewer probe samples beyond this (at least 4)
REFIT = True  # least-squares refit of channel codebooks after the GPTQ assignment
MAX_SAMPLES = 128  # calibration samples behind the layer statistics (late layers see few positions per image)


@dataclass
class ClusterPlan:
    """Bits and granularity per selected weight, importance, precomputed fits, skipped rows."""

    bits: dict[str, float] = field(default_factory=dict)
    granularity: dict[str, str] = field(default_factory=dict)
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, Fit] = field(default_factory=dict)
    hessians: dict[str, list] = field(default_factory=dict)
    pruned: set[str] = field(default_factory=set)  # weights stored sparse: priced by their encoding
    skipped: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fit(w: Weight, bits_or_k: float, plan: ClusterPlan, cfg: ClusterConfig, ctx: Context, *,
         is_k: bool = False, source: np.ndarray | None = None, granularity: str | None = None) -> Fit:
    k = bits_or_k if is_k else int(round(2 ** bits_or_k))  # grid levels may be half bits
    values = w.values() if source is None else source.astype(w.dtype, copy=False)
    return fit(values.reshape(-1), Layout.of(w.shape, w.out_axis), k, granularity or plan.granularity[w.name],
               importance=plan.importance.get(w.name), init=cfg.init, iters=cfg.iterations, seed=ctx.seed)


class ClusterPass(Pass):
    """k-means weight sharing per tensor, per output channel or shared with per-channel scales."""

    name = "cluster"
    nested_weights = True

    def plan(self, model: onnx.ModelProto, ctx: Context) -> ClusterPlan:
        cfg: ClusterConfig = self.config
        weights, skipped = select(find_weights(model, nested=True), cfg)
        plan = ClusterPlan(skipped=skipped, pruned={w.name for w in weights if is_pruned(w)})
        for w in weights:
            plan.granularity[w.name] = granularity_of(w, cfg)
            if w.is_depthwise:
                plan.notes.append(f"{w.name}: depthwise kernel clustered with one {plan.granularity[w.name]} codebook")
        if ctx.has_real_data and weights:
            from onnxcomp.measure.hessian import importance

            plan.importance = importance(model, weights, ctx.data, max_samples=MAX_SAMPLES,
                                         threads=ctx.threads)
            missing = len(weights) - len(plan.importance)
            plan.notes.append(f"k-means weighted by calibration importance (E[x^2] per input) on "
                              f"{len(plan.importance)} weight(s)" + (f"; {missing} unweighted" if missing else ""))
        elif ctx.data is not None and not ctx.has_real_data:
            plan.notes.append("random data: k-means unweighted (no calibration importance)")
        if cfg.allocation == "uniform":
            plan.bits = {w.name: cfg.budget_bits for w in weights}
            if cfg.clusters is None and cfg.granularity == "auto":
                self._grid_where_cheaper(weights, plan, ctx)
            return plan
        if cfg.allocation == "sensitivity":
            return self._measured(model, weights, plan, ctx)
        lo = max(1, int(np.floor(cfg.bits)) - MIXED_RANGE)
        hi = min(8, int(np.ceil(cfg.bits)) + MIXED_RANGE)
        errors: dict[str, dict[tuple[str, int], float]] = {}
        costs: dict[str, dict[tuple[str, int], int]] = {}
        for w in weights:  # errors only: keeping every option's values would hold 10 model copies
            errors[w.name], costs[w.name] = {}, {}
            for g in candidates(w, cfg, ctx.encoding):
                for b in grid_levels(range(lo, hi + 1)) if g == "grid" else range(lo, hi + 1):
                    f = _fit(w, b, plan, cfg, ctx, granularity=g)
                    errors[w.name][g, b] = f.rel_error
                    costs[w.name][g, b] = option_bits(w, f, b, ctx.encoding, w.name in plan.pruned)
        chosen = allocate(errors, {w.name: w.size for w in weights}, cfg.bits, costs,
                          limit=budget_limit(weights, plan, costs, cfg.bits))
        _take(plan, chosen, {})  # apply fits the chosen option again
        _note_spread(plan, weights, "mixed")
        return plan

    def _grid_where_cheaper(self, weights: list[Weight], plan: ClusterPlan, ctx: Context) -> None:
        """Uniform bits with ``auto``: a layer takes the grid step (of the half-bit levels around
        the budget) with the least error among those storing no more bits than its codebook."""
        cfg: ClusterConfig = self.config
        b = int(cfg.budget_bits)
        taken = 0
        for w in weights:
            if "grid" not in candidates(w, cfg, ctx.encoding):
                continue
            g0 = plan.granularity[w.name]
            base = _fit(w, b, plan, cfg, ctx, granularity=g0)
            best, cost = base, option_bits(w, base, b, ctx.encoding, w.name in plan.pruned)
            for level in (b - 0.5, float(b), b + 0.5):
                f = _fit(w, level, plan, cfg, ctx, granularity="grid")
                if option_bits(w, f, b, ctx.encoding, w.name in plan.pruned) <= cost and f.rel_error < best.rel_error:
                    best, plan.bits[w.name] = f, level
            if best is not base:  # apply fits it again (keeping every fit would hold a model copy)
                plan.granularity[w.name], taken = "grid", taken + 1
        if taken:
            plan.notes.append(f"{taken} layer(s) take a uniform grid in the variable-length code "
                              f"(less error than their codebook in no more stored bits)")

    def _gptq_on(self, ctx: Context) -> bool:
        cfg: ClusterConfig = self.config
        on = cfg.gptq if cfg.gptq is not None else ctx.has_real_data
        if on and not ctx.has_real_data:
            from onnxcomp.errors import ConfigError

            raise ConfigError("--gptq needs real calibration data", "pass --data FILE.npz")
        return bool(on)

    def _hessians(self, model: onnx.ModelProto, weights: list[Weight], ctx: Context) -> dict[str, list]:
        from onnxcomp.passes.prune.obs import hessians

        return {w.name: st for w, st in hessians(model, weights, ctx.data, threads=ctx.threads,
                                                 max_samples=MAX_SAMPLES)}

    def _values(self, w: Weight, bits: float, plan: ClusterPlan, ctx: Context, f: Fit | None = None,
                source: np.ndarray | None = None) -> tuple[np.ndarray, Fit]:
        """The clustered values of ``w`` (or of ``source``, a re-targeted weight) at ``bits``,
        GPTQ-assigned when its Hessian is known."""
        cfg: ClusterConfig = self.config
        if f is None:
            f = _fit(w, cfg.clusters, plan, cfg, ctx, is_k=True, source=source) if cfg.clusters is not None \
                and cfg.allocation == "uniform" else _fit(w, bits, plan, cfg, ctx, source=source)
        values = f.values.reshape(w.shape)
        if w.name in plan.hessians:
            from onnxcomp.passes.prune.obs import gptq_values

            target = w.values() if source is None else source
            values = gptq_values(w, target, values, plan.hessians[w.name], f.granularity == "tensor", f.table)
            if REFIT and f.granularity == "channel":
                k = cfg.clusters if cfg.clusters is not None and cfg.allocation == "uniform" else 1 << int(bits)
                values = refit_codebooks(w, target, values, plan.hessians[w.name], k)
        return values, f

    def _measured(self, model: onnx.ModelProto, weights: list[Weight], plan: ClusterPlan,
                  ctx: Context) -> ClusterPlan:
        """Per-layer bits from measured output losses, spent greedily where they drop most.

        Each layer alone is clustered at the budget's width (GPTQ-assigned with data) and run
        through the whole model on the calibration samples: that output loss, divided by the
        layer's own weighted error at that width, is its sensitivity; the layer's loss at every
        other width is the sensitivity times its own error there (one model run per layer, not
        one per layer and width). ``ctx.memo`` (auto's budgets on one model): measured once.
        """
        cfg: ClusterConfig = self.config
        if not ctx.has_real_data:
            from onnxcomp.errors import ConfigError

            raise ConfigError("--allocation sensitivity needs real calibration data",
                              "pass --data with inputs from your task, or use --allocation mixed")
        levels = list(range(max(1, int(np.floor(cfg.bits)) - MEASURED_LOW), 9))
        at = min(max(int(round(cfg.bits)), levels[0]), 8)
        key = remembered = None
        if ctx.memo is not None:
            from onnxcomp.measure.digest import digest

            key = (digest(model, ctx.data), at, tuple(levels), ctx.encoding, ctx.seed, tuple(plan.granularity.items()),
                   tuple((f.name, getattr(cfg, f.name)) for f in fields(cfg) if f.name != "bits"))
            remembered = ctx.memo.setdefault("cluster-sensitivity", {}).get(key)
        if remembered is not None:
            hessians, local, costs, fits, losses, info = remembered
            plan.hessians = dict(hessians)
        else:
            local, costs, fits, losses, info = self._measure(model, weights, plan, ctx, levels, at)
            if key is not None:  # the last two: a bisection between two widths measures at both
                kept = ctx.memo["cluster-sensitivity"]
                kept[key] = (dict(plan.hessians), local, costs, fits, losses, info)
                while len(kept) > 2:
                    del kept[next(iter(kept))]
        scale = {w.name: max(float(loss), 0.0) / local[w.name][plan.granularity[w.name], at]
                 for w, (loss,) in zip(weights, losses)}
        errors = {n: {o: scale[n] * e for o, e in local[n].items()} for n in scale}
        chosen = allocate(errors, {w.name: w.size for w in weights}, cfg.bits, costs,
                          limit=budget_limit(weights, plan, costs, cfg.bits))
        _take(plan, chosen, {n: fits[n][g] for n, (g, b) in chosen.items() if b == at})
        plan.notes.append(f"sensitivity measured per layer at {at} bits on {info['samples']} samples "
                          f"({info['seconds']} s{', measured once for several budgets' if remembered else ''}); "
                          f"predicted output error {sum(errors[n][o] for n, o in chosen.items()):.3g}")
        _note_spread(plan, weights, "measured")
        return plan

    def _measure(self, model: onnx.ModelProto, weights: list[Weight], plan: ClusterPlan, ctx: Context,
                 levels: list[int], at: int) -> tuple:
        """(local errors, costs, fits at ``at``, measured output losses, info) per layer; sets the
        plan's Hessians (GPTQ) on the way."""
        from onnxcomp.measure.sensitivity import measure_curves

        cfg: ClusterConfig = self.config
        if self._gptq_on(ctx):
            plan.hessians = self._hessians(model, weights, ctx)
        local: dict[str, dict[tuple[str, float], float]] = {}
        costs: dict[str, dict[tuple[str, float], int]] = {}
        fits: dict[str, dict[str, Fit]] = {}  # the fits at the measured width only
        for w in weights:
            local[w.name], fits[w.name], costs[w.name] = {}, {}, {}
            for g in candidates(w, cfg, ctx.encoding):
                for b in grid_levels(levels) if g == "grid" else levels:
                    f = _fit(w, b, plan, cfg, ctx, granularity=g)
                    local[w.name][g, b] = max(f.rel_error, 1e-12)
                    costs[w.name][g, b] = option_bits(w, f, b, ctx.encoding, w.name in plan.pruned)
                    if b == at:
                        fits[w.name][g] = f
            rescale_by_gptq(w, local[w.name], fits[w.name], plan.hessians.get(w.name))

        def compress(w: Weight, _values: np.ndarray, bits: float) -> np.ndarray:
            return self._values(w, int(bits), plan, ctx, fits[w.name][plan.granularity[w.name]])[0]

        losses, info = measure_curves(model, weights, [at], compress, ctx.data, samples=MAX_SAMPLES,
                                      budget_s=MEASURE_BUDGET_S, threads=ctx.threads, progress=ctx.progress)
        return local, costs, fits, losses, info

    def apply(self, model: onnx.ModelProto, plan: ClusterPlan, ctx: Context) -> PassResult:
        cfg: ClusterConfig = self.config
        result = PassResult(self.name, settings={
            "bits": cfg.bits, "clusters": cfg.clusters, "granularity": cfg.granularity, "init": cfg.init,
            "allocation": cfg.allocation, "weighted": bool(plan.importance)}, notes=list(plan.notes))
        by_name = find_weights(model, nested=True).by_name()
        gptq = bool(plan.bits) and self._gptq_on(ctx)
        matched = 0
        if not gptq:  # no statistics: every weight's fit is independent, a few run at once
            names = graph_order(model, list(plan.bits))
            fits = in_order(names, lambda n, values: self._values(by_name[n], plan.bits[n], plan, ctx, plan.fits.get(n),
                                                              values), lambda n: by_name[n].values(), ctx.threads)
            for name, (values, f) in fits:
                set_weight(model, by_name[name], values)
                result.changes.append(_change(by_name[name], f, plan.bits[name], self.config, name in plan.importance))
            result.changes.extend(plan.skipped)
            return result
        for name, st in layer_stats(model, [by_name[n] for n in plan.bits], ctx, gptq, result.settings):
            w, bits, source, fitted = by_name[name], plan.bits[name], None, plan.fits.get(name)
            if st is not None:
                plan.hessians[name], fitted = st, None
                if st[0].cross is not None:
                    source = cluster_seq.target(w, st)
                    matched += 1
            values, f = self._values(w, bits, plan, ctx, fitted, source)
            set_weight(model, w, values)
            result.changes.append(_change(w, f, bits, cfg, name in plan.importance))
        if plan.hessians:
            result.notes.append(f"GPTQ-style assignment with error feedback on {len(plan.hessians)} weight(s)"
                                + (f"; {matched} re-targeted layer by layer to the original outputs" if matched else ""))
        result.changes.extend(plan.skipped)
        return result


def _change(w: Weight, f: Fit, bits: float, cfg: ClusterConfig, weighted: bool) -> Change:
    k = cfg.clusters if cfg.clusters is not None and cfg.allocation == "uniform" else int(round(2 ** bits))
    index_bits = f.coded_bits / w.size if f.coded_bits is not None else 4 if k <= 16 else 8
    sqnr = 10 * np.log10(1 / f.rel_error) if f.rel_error > 0 else float("inf")
    return Change(name=w.name, op=w.op_type, action="clustered", params_before=w.size, params_after=w.size,
                  bytes_before=w.nbytes, bytes_after=int(w.size * index_bits + 7) // 8,
                  detail={"shape": list(w.shape), "clusters": int(k), "granularity": f.granularity,
                          "bits": float(bits) if f.granularity == "grid" else float(np.log2(k)),  # grid: the level
                          "sqnr_db": round(float(sqnr), 2), "weighted": weighted})


def _take(plan: ClusterPlan, chosen: dict[str, tuple[str, int]], fits: dict[str, Fit]) -> None:
    """Record the allocation's (granularity, bits) per layer and the fits that can be reused."""
    plan.bits = {n: b for n, (_, b) in chosen.items()}
    switched = [g for n, (g, _) in chosen.items() if g != plan.granularity[n]]
    plan.granularity.update({n: g for n, (g, _) in chosen.items()})
    plan.fits = dict(fits)
    if "shared" in switched:
        plan.notes.append(f"{switched.count('shared')} layer(s) take one shared codebook over channel-scaled "
                          f"weights (cheaper than per-channel tables for their error)")
    if "grid" in switched:
        plan.notes.append(f"{switched.count('grid')} layer(s) take a uniform grid in the variable-length code "
                          f"(fewer stored bits than a codebook for their error)")


def _note_spread(plan: ClusterPlan, weights: list[Weight], kind: str) -> None:
    spread = sorted(plan.bits.values())
    if spread:
        avg = sum(w.size * plan.bits[w.name] for w in weights) / sum(w.size for w in weights)
        plan.notes.append(f"{kind} bits {spread[0]}..{spread[-1]}, parameter-weighted average {avg:.2f}")
