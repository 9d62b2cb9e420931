"""Structured pruning: remove whole channels from coupled-channel groups, then refit consumers.

``plan`` discovers the groups (:mod:`onnxcomp.graph.channels.groups`). With real calibration data
one walk of the engine measures the input statistics of every consumer
(:mod:`onnxcomp.passes.structured.select`); each group's units are ordered by the output error
their removal adds after the least-squares refit (``reconstruction``) or by another score
(:mod:`onnxcomp.passes.structured.importance`; ``auto`` with data tries both orders whole:
:mod:`onnxcomp.passes.structured.choose`); per-group counts come from the model's measured output
error (``sensitivity``: :mod:`onnxcomp.passes.structured.probe`), error curves or uniformly.
``apply`` compensates every consumer's kept channels from the statistics, removes the units from
every coupled tensor and refits the consumers in sequence on a second walk
(:mod:`onnxcomp.passes.structured.refit`). Frozen groups are reported with their reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.algo.numeric import numeric_problem
from onnxcomp.config import StructuredPruneConfig
from onnxcomp.algo.linalg import blas_threads
from onnxcomp.errors import ConfigError
from onnxcomp.graph.channels.types import ChannelGraph, ChannelGroup
from onnxcomp.graph.channels.groups import analyze, apply_removal
from onnxcomp.graph.weights import find_weights
from onnxcomp.passes.base import Change, Context, Pass, PassResult, matches
from onnxcomp.passes.structured.alloc import MAX_RATIO, decide, keep_count, stages, uniform_keep, unit_multiple
from onnxcomp.passes.structured.importance import MacModel, activation_scores, activation_stats, unit_scores, weight_scores


@dataclass
class GroupPlan:
    """The decision for one group: its unit scores, the ratio chosen and the units kept."""

    group: ChannelGroup
    scores: np.ndarray | None = None
    stages: list[np.ndarray] | None = None  # units each stage of a widened stream adds (alloc.stages)
    ratio: float = 0.0
    n_keep: int | None = None  # units kept, when the allocation chose it
    keep: np.ndarray | None = None  # bool per unit
    reason: str | None = None  # why it is not pruned

    @property
    def kept(self) -> int:
        return self.group.size if self.keep is None else int(self.keep.sum())


@dataclass
class StructuredResult(PassResult):
    """A PassResult plus one summary per channel group (pruned, skipped or frozen, and why)."""

    groups: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "groups": self.groups}


@dataclass
class StructuredPlan:
    """What :class:`StructuredPrunePass` will remove."""

    cg: ChannelGraph
    groups: list[GroupPlan]
    keep: np.ndarray  # bool per channel id
    importance: str
    allocation: str
    macs: MacModel
    measured: dict = field(default_factory=dict)  # with real data: id(consumer node) -> select.Measured
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # the statistics walk's engine counts
    alternatives: list = field(default_factory=list)  # (model copy, plan) also tried (choose.py)


def data_shapes(ctx: Context) -> dict[str, tuple[int, ...]]:
    """Input shapes for shape inference: --input-shape, else the first calibration batch (batch 1)."""
    if ctx.input_shapes or ctx.data is None:
        return dict(ctx.input_shapes)
    batch = next(iter(ctx.data))
    return {k: (1, *np.shape(v)[1:]) for k, v in batch.items()}


class StructuredPrunePass(Pass):
    """Remove whole channels (filters) and everything coupled to them; refit with real data."""

    name = "structured"

    def __init__(self, config: StructuredPruneConfig) -> None:
        super().__init__(config)

    def _importance(self, ctx: Context) -> str:
        imp = self.config.importance
        if imp == "auto":  # with data: both orders tried (passes/structured/choose.py)
            return "auto" if ctx.has_real_data else "l1"
        if imp in ("activation", "reconstruction") and not ctx.has_real_data:
            raise ConfigError(f"--importance {imp} needs calibration data",
                              "pass --data with real inputs, or choose --importance l1, l2 or bn")
        return imp

    def _allocation(self, ctx: Context) -> str:
        alloc = self.config.allocation
        if alloc == "auto":
            return "sensitivity" if ctx.has_real_data else "uniform"
        if alloc in ("sensitivity", "curves") and not ctx.has_real_data:
            raise ConfigError(f"--allocation {alloc} needs calibration data",
                              "pass --data with real inputs, or use --allocation uniform")
        return alloc

    def _eligible(self, g: ChannelGroup, allocation: str) -> str | None:
        cfg = self.config
        if g.frozen:
            return "; ".join(g.frozen[:3]) + (f" (+{len(g.frozen) - 3} more)" if len(g.frozen) > 3 else "")
        for p in g.producers:
            why = matches(p.weight, (), cfg.exclude)
            if why:
                return why
            bad = numeric_problem(p.weight.values())  # same rule as prune and cluster
            if bad is not None:
                return f"{p.weight.name} {bad}"
        if cfg.include and all(matches(p.weight, cfg.include, ()) for p in g.producers):
            return "not matched by --include"
        if cfg.ratio <= 0:
            return "--ratio 0"
        most = cfg.ratio if allocation == "uniform" else MAX_RATIO
        if keep_count(g.size, most, unit_multiple(g, cfg.round_to)) >= g.size:
            return f"too small: {g.size} channels, --round-to {cfg.round_to}"
        return None

    def plan(self, model: onnx.ModelProto, ctx: Context) -> StructuredPlan:
        """Groups, scores, per-group counts and the kept units; ``model`` is not modified."""
        importance, allocation = self._importance(ctx), self._allocation(ctx)
        if importance == "auto":
            from onnxcomp.passes.structured.choose import plan_both

            return plan_both(self, model, ctx, allocation)
        return self.plan_for(model, ctx, importance, allocation)

    def plan_for(self, model: onnx.ModelProto, ctx: Context, importance: str, allocation: str) -> StructuredPlan:
        """:meth:`plan` for one channel order."""
        cfg = self.config
        cg = analyze(model, data_shapes(ctx))
        plan = StructuredPlan(cg, [], np.ones(cg.n_ids, bool), importance, allocation, MacModel(cg, cg.shapes))
        plan.groups = [GroupPlan(g, reason=self._eligible(g, allocation)) for g in cg.groups]
        live = [gp for gp in plan.groups if gp.reason is None]
        if ctx.has_real_data and live:
            from onnxcomp.passes.structured.select import measure

            ids = np.concatenate([u for gp in live for u in gp.group.units])
            wanted = [c for c in cg.consumers if np.isin(c.ids, ids).any()]
            full = importance == "reconstruction" or allocation == "curves"
            plan.measured = measure(model, cg, wanted, ctx, full, record=plan.settings)
        id_scores = None
        if importance == "activation":
            id_scores = activation_scores(cg, activation_stats(plan.measured))
        elif importance != "reconstruction":
            id_scores = weight_scores(cg, importance)
        curves = {}
        staged = stages(cg)
        with blas_threads(1):
            for gp in live:
                gp.ratio = cfg.ratio
                gp.stages = staged.get(gp.group.index)
                gp.scores = None if id_scores is None else unit_scores(cg, gp.group, id_scores)
                if plan.measured and (importance == "reconstruction" or allocation == "curves"):
                    curves[gp.group.index] = self._curve(plan, gp)
        target = plan.macs.total - plan.macs.after(uniform_keep(plan, cfg.round_to)) if live else 0.0
        note = None
        if allocation == "curves" and curves:
            from onnxcomp.passes.structured.alloc import allocate

            allocate(plan, curves, target, cfg.round_to)
            note = "allocation from the consumers' measured error curves"
        elif allocation == "sensitivity" and live:
            from onnxcomp.passes.structured.probe import probe_allocate

            with blas_threads(1):
                n = probe_allocate(model, plan, ctx, cfg, target)
            note = f"sensitivity allocation on {n} samples (each group pruned alone, model output error)"
        if note is not None:
            pruned = sum(gp.n_keep is not None and gp.n_keep < gp.group.size for gp in live)
            plan.notes.append(f"{note}: {pruned} of {len(live)} groups pruned")
            for gp in live:
                if gp.n_keep is not None and gp.n_keep >= gp.group.size:
                    gp.reason = "protected: most output error per MAC saved"
        decide(plan, cfg.round_to)
        return plan

    def _curve(self, plan: StructuredPlan, gp: GroupPlan) -> tuple[np.ndarray, np.ndarray]:
        """The group's removal order and error curve; reconstruction scores follow the order."""
        from onnxcomp.passes.structured.select import curve

        n = gp.group.size
        order, cum = curve(plan.cg, gp.group, plan.measured, n - unit_multiple(gp.group, self.config.round_to),
                           gp.scores)
        if gp.scores is None:  # removed later = more important; never removed = most
            gp.scores = np.full(n, float(n))
            gp.scores[order] = np.arange(len(order), dtype=float)
        return order, cum

    def apply(self, model: onnx.ModelProto, plan: StructuredPlan, ctx: Context) -> PassResult:
        """Remove the planned channels, fold their means into biases, refit; one row per layer."""
        if plan.alternatives:
            from onnxcomp.passes.structured.choose import apply_best

            return apply_best(self, model, plan, ctx)
        cfg = self.config
        refit = cfg.refit if cfg.refit is not None else ctx.has_real_data
        if refit and not ctx.has_real_data:
            raise ConfigError("--refit needs calibration data", "pass --data with real inputs, or use --no-refit")
        original = onnx.ModelProto()
        original.CopyFrom(model)
        nodes = _compute_nodes(plan)
        before = {key: (w.name, w.size, w.nbytes) for key, (_, w) in nodes.items()}
        result = StructuredResult(self.name, settings={
            "ratio": cfg.ratio, "importance": plan.importance, "allocation": plan.allocation,
            "round_to": cfg.round_to, "refit": bool(refit), "macs_before": plan.macs.total,
            "macs_after": int(round(plan.macs.after(plan.keep))), **plan.settings})
        from onnxcomp.passes.structured.select import compensations, write_compensations

        with blas_threads(1):
            comp = compensations(plan.cg, plan.measured, plan.keep)
        apply_removal(model, plan.cg, plan.keep)
        if comp:
            write_compensations(model, plan.cg, comp)
            result.notes.append(f"mean of the removed channels folded into {len(comp)} consumer bias(es)")
        if refit and any(gp.keep is not None for gp in plan.groups):
            from onnxcomp.passes.structured.refit import refit_consumers

            result.notes += refit_consumers(original, model, plan, ctx, plan.measured, record=result.settings)
        after = {id(u.node): w for w in find_weights(model) for u in w.uses if u.index == 1}
        for key, (node, w) in nodes.items():
            name, size, nbytes = before[key]
            new = after.get(key)
            changed = new is not None and new.size != size
            result.changes.append(Change(
                name=name, op=node.op_type, action="pruned" if changed else "skipped",
                params_before=size, params_after=new.size if new is not None else size,
                bytes_before=nbytes, bytes_after=new.nbytes if new is not None else nbytes,
                reason=None if changed else "no coupled channel removed",
                detail={"node": node.name or node.output[0], "shape": list(new.shape) if new else list(w.shape)}))
        result.notes += plan.notes
        result.groups = [summary(gp) for gp in plan.groups]
        return result


def _compute_nodes(plan: StructuredPlan) -> dict:
    """id(node) -> (node, weight) for every producer and consumer of the channel graph."""
    out = {}
    for rec in list(plan.cg.producers) + list(plan.cg.consumers):
        out.setdefault(id(rec.node), (rec.node, rec.weight))
    return out


def summary(gp: GroupPlan) -> dict:
    """One group for the report: producers, channels before/after, status and reason."""
    g = gp.group
    status = "frozen" if g.frozen else ("pruned" if gp.kept < g.size else "kept")
    return {"group": g.index, "producers": g.names, "channels": g.size, "kept": gp.kept,
            "ratio": round(1 - gp.kept / g.size, 4) if g.size else 0.0, "status": status,
            "reason": gp.reason if status != "pruned" else None}
