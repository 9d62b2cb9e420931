"""``factorize``: replace convs and Gemm/MatMul weights by low-rank factor pairs/triples.

The rewrites (spatial, tucker2, svd) and their nodes: :mod:`.nodes`. Grouped convs are factorized
per group; depthwise convs are skipped. The last new node writes the original output tensor.

Ranks: ``--ratio`` with ``--allocation uniform``, ``--rank`` and ``--energy`` choose per layer
(:mod:`.plan`); ``--allocation error``: one budget over all layers (:mod:`.allocate`), spent where
the output error per MAC saved is lowest (each layer's whitened spectra from one engine walk over
the original, times its measured gain to the model outputs); ``auto`` builds both (:mod:`.choose`).
With ``measure`` (the default with ``--ratio`` when cheap) the chosen rewrite is measured in a
1-thread micro-benchmark and a layer that is not faster is left alone, with its measured ratio in
the report (the error budget is offered only ranks predicted faster). Then the chosen layers are
fit with real data in a second walk: each on the inputs the layers rewritten before it produce,
toward the original's outputs (``--no-sequential``: on the original inputs); the factors minimise
that output error (:mod:`onnxcomp.algo.lowrank`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.errors import ConfigError
from onnxcomp.algo.linalg import blas_threads
from onnxcomp.io import default_opset
from onnxcomp.measure.microbench import MEASURE_MAX_RATIO
from onnxcomp.passes.base import Change, Context, Pass, PassResult, skip
from onnxcomp.measure.sensitivity import layer_gains
from onnxcomp.passes.factorize import choose
from onnxcomp.passes.factorize.allocate import floor_gains, layer_options, probe_weight, spend, summary
from onnxcomp.passes.factorize.nodes import build_nodes, factor_tensors, node_names
from onnxcomp.passes.factorize.plan import Candidate, applicable, candidates_for, cost, evaluate, pick
from onnxcomp.passes.factorize.speed import Speed
from onnxcomp.passes.layerstats import layer_statistics
from onnxcomp.passes.rewrite import GraphEditor, Layer, collect_layers, measure_by_default

ROLES = ("conv", "gemm_b", "matmul_b")
PROBE_SAMPLE_PASSES = 2  # the sensitivity probe runs about this many calibration passes (one run per layer)
PROBE_MAX_SAMPLES = 8  # samples per probe run at most


@dataclass
class LayerPlan:
    layer: Layer
    candidate: Candidate | None = None
    reason: str | None = None
    macs_before: int | None = None
    params_before: int = 0
    latency_ratio: float | None = None
    data_aware: bool = False
    methods: list[str] = field(default_factory=list)  # the methods that apply
    choice: tuple | None = None  # (method, ranks) chosen before fitting (allocation)
    gain: float | None = None  # measured: model-output error per unit of this layer's relative error


@dataclass
class FactorizePlan:
    layers: list[LayerPlan]
    skipped: list = field(default_factory=list)
    data_aware: bool = False
    notes: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the engine's counts, the allocation
    measure: bool = False
    alternatives: list = field(default_factory=list)  # (pass, model, plan) of --allocation auto (choose.py)


class FactorizePass(Pass):
    """Low-rank factorization of convs and Gemm/MatMul weights."""

    name = "factorize"

    def plan(self, model: onnx.ModelProto, ctx: Context) -> FactorizePlan:
        if self.config.allocation == "auto" and self.config.target_ratio is not None and ctx.has_real_data:
            return choose.plan_both(self, model, ctx)
        with blas_threads(1):
            return self._plan(model, ctx)

    def _plan(self, model: onnx.ModelProto, ctx: Context) -> FactorizePlan:
        cfg = self.config
        data_aware = ctx.has_real_data if cfg.data_aware is None else cfg.data_aware
        if data_aware and not ctx.has_real_data:
            raise ConfigError("data-aware factorization needs real calibration data",
                              "pass --data with real samples (or drop --data-aware)")
        layers, skipped = collect_layers(model, cfg, ctx, ROLES)
        out = FactorizePlan([self._start(lay, data_aware) for lay in layers], skipped, data_aware)
        todo = [lp for lp in out.layers if lp.reason is None]
        out.measure = cfg.measure
        if cfg.measure is None:  # explicit ranks (--rank, --energy) and --allow-growth are not gated
            out.measure, why = False, ""
            if cfg.target_ratio is not None and not cfg.allow_growth:
                out.measure, why = measure_by_default([lp.layer for lp in todo], 3 if cfg.method == "auto" else 1)
            if why:
                out.notes.append(why)
        speed = Speed(model) if out.measure else None
        if cfg.allocates:
            self._allocate(model, todo, ctx, out, speed)
            todo = [lp for lp in todo if lp.choice is not None]
        if data_aware and todo:
            self._fit_walk(model, todo, ctx, out, speed)
        else:
            for lp in todo:
                self._fit(lp, None, speed)
        if speed is not None:
            out.measured["micro_benchmarks"] = speed.measured
        return out

    def _start(self, lay: Layer, data_aware: bool) -> LayerPlan:
        macs, params = cost(lay, None)
        lp = LayerPlan(lay, macs_before=macs, params_before=params, data_aware=data_aware)
        methods = candidates_for(lay, self.config.method)
        reasons = [applicable(lay, m) for m in methods]
        lp.methods = [m for m, r in zip(methods, reasons) if r is None]
        if not lp.methods:
            lp.reason = reasons[0]
        return lp

    def _allocate(self, model: onnx.ModelProto, todo: list[LayerPlan], ctx: Context, out: FactorizePlan,
                  speed: Speed | None) -> None:
        """Options per layer (from statistics on the original model), each layer's measured gain to
        the model outputs, then one budget over them."""
        cfg = self.config
        unit = 0 if all(lp.macs_before is not None for lp in todo) else 1
        before = {lp.layer.weight.name: cost(lp.layer, None)[unit] for lp in todo}
        options, probes = {}, {}
        if out.data_aware:
            walk = layer_statistics(model, [lp.layer for lp in todo], ctx, out.notes, sequential=False,
                                    record=out.measured, label="factorize: error curves")
            for lay, st, _ in walk:
                name = lay.weight.name
                options[name] = layer_options(lay, next(p.methods for p in todo if p.layer is lay), st,
                                              cfg.round_to, unit)
                probe = probe_weight(lay, st)
                if probe is not None:
                    probes[name] = probe
        for lp in todo:
            name = lp.layer.weight.name
            if name not in options:
                options[name] = layer_options(lp.layer, lp.methods, None, cfg.round_to, unit)
            if cfg.max_error is not None:
                options[name] = [o for o in options[name] if o.error <= cfg.max_error ** 2]
            if speed is not None:
                options[name] = _fast_options(speed, lp, options[name])
        gains = None
        if out.data_aware and probes:
            pool = [n for n in options if options[n] and n in probes]
            seen = out.measured["engine"][-1]["samples"]
            samples = int(np.clip(PROBE_SAMPLE_PASSES * seen // max(1, len(pool)), 1, PROBE_MAX_SAMPLES))
            measured, info = layer_gains(model, {n: probes[n][0] for n in pool}, {n: probes[n][1] for n in pool},
                                         ctx.data, samples=samples, threads=ctx.threads)
            gains = floor_gains(measured, list(options))
            out.measured["sensitivity_probe"] = info
            for lp in todo:
                lp.gain = gains.get(lp.layer.weight.name)
        choice = spend(options, before, 1.0 - cfg.target_ratio, gains)
        for lp in todo:
            pick_ = choice[lp.layer.weight.name]
            if pick_ is not None:
                lp.choice = (pick_.method, pick_.ranks)
                continue
            if not options[lp.layer.weight.name]:
                lp.reason = lp.reason or ("no rank lowers the cost" if speed is None else
                                          "not faster at any rank that lowers the MACs (micro-benchmark, 1 thread)")
            else:
                lp.reason = "kept: its error per MAC saved is higher than the budget needs"
        b, a, err = summary(choice, before, gains)
        out.measured["budget"] = (f"{'MACs' if unit == 0 else 'params'} {b} -> {a} over "
                                  f"{sum(v is not None for v in choice.values())} layers, predicted output "
                                  f"error energy {err:.4f}")

    def _fit_walk(self, model: onnx.ModelProto, todo: list[LayerPlan], ctx: Context, out: FactorizePlan,
                  speed: Speed | None) -> None:
        cfg = self.config
        by_name = {lp.layer.weight.name: lp for lp in todo}
        editor = None
        for lay, stats, work in layer_statistics(model, [lp.layer for lp in todo], ctx, out.notes,
                                                 sequential=cfg.sequential, record=out.measured,
                                                 label="factorize: fit"):
            lp = by_name[lay.weight.name]
            self._fit(lp, stats, speed)
            if cfg.sequential and lp.candidate is not None:  # later layers see the rewrites so far
                editor = editor or GraphEditor(work)
                rewrite(work, lp, editor, drop=False)
        if cfg.sequential:
            out.notes.append("sequential fitting: each layer is fit on the inputs the rewritten layers before it "
                             "produce, toward the original outputs")

    def _fit(self, lp: LayerPlan, stats, speed: Speed | None) -> None:
        """The layer's candidate: at the allocated ranks, or chosen per layer; then the speed gate."""
        cfg, lay = self.config, lp.layer
        if lp.choice is not None:
            method, ranks = lp.choice
            best = evaluate(method, lay, stats, cfg, ranks)
        else:
            cands = [evaluate(m, lay, stats, cfg) for m in lp.methods]
            unit = 0 if lp.macs_before is not None else 1
            base = cost(lay, None)[unit]
            dropping = [c for c in cands if (c.macs, c.params)[unit] < base]
            best = pick(dropping or cands, cfg)
            after = (best.macs, best.params)[unit]
            if not dropping and not cfg.allow_growth:
                lp.reason = (f"{('MACs', 'params')[unit]} would not drop ({base} -> {after} with {best.method} at "
                             f"rank {'/'.join(map(str, best.ranks))})")
                return
            if cfg.max_error is not None and best.error > cfg.max_error:
                kind = "output" if best.out_error is not None else "weight"
                lp.reason = (f"relative {kind} error {best.error:.3f} with {best.method} at rank "
                             f"{'/'.join(map(str, best.ranks))} exceeds --max-error {cfg.max_error:g}")
                return
        lp.candidate = best
        if speed is not None:
            self._gate(lp, speed)

    def _gate(self, lp: LayerPlan, speed: Speed) -> None:
        lay, cand = lp.layer, lp.candidate
        if not lay.shapes_known:
            lp.candidate, lp.reason = None, "--measure: input shape unknown, cannot benchmark the layer"
            return
        lp.latency_ratio = speed.ratio(lay, cand.method, cand.ranks)
        if lp.latency_ratio > MEASURE_MAX_RATIO:
            lp.candidate = None
            lp.reason = (f"not faster: the rewritten layer ({cand.method} r{'/'.join(map(str, cand.ranks))}) "
                         f"takes {lp.latency_ratio:.2f}x the original time in onnxruntime (1 thread)")

    def apply(self, model: onnx.ModelProto, plan: FactorizePlan, ctx: Context) -> PassResult:
        if plan.alternatives:
            return choose.apply_best(model, plan, ctx)
        result = PassResult(self.name, settings={**_settings(self.config, plan), **plan.measured})
        result.notes += list(dict.fromkeys(plan.notes))
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
    rule = ("rank" if cfg.rank else "energy" if cfg.energy else f"{removed:g} of the MACs removed, "
            + ("where the error per MAC is lowest" if cfg.allocates else "in every layer"))
    alloc = "auto: uniform" if cfg.allocation == "auto" else cfg.allocation  # auto without data (choose.py)
    return {"method": cfg.method, "rank": cfg.rank, "energy": cfg.energy, "ratio": removed,
            "allocation": alloc if cfg.target_ratio is not None else None,
            "round_to": cfg.round_to, "data_aware": plan.data_aware, "measure": plan.measure,
            "max_error": cfg.max_error, "sequential": cfg.sequential if plan.data_aware else None,
            "rank_rule": rule, "measure_max_ratio": MEASURE_MAX_RATIO if plan.measure else None}


def _fast_options(speed: Speed, lp: LayerPlan, opts: list) -> list:
    """The options the micro-benchmark predicts faster (per method, see :meth:`Speed.fastest_ranks`)."""
    if not lp.layer.shapes_known:
        return []
    out = []
    for method in dict.fromkeys(o.method for o in opts):
        mine = sorted((o for o in opts if o.method == method), key=lambda o: o.ranks)
        out += mine[:speed.fastest_ranks(lp.layer, method, [o.ranks for o in mine])]
    return out

