"""Structured pruning: remove whole channels from coupled-channel groups, then refit consumers.

``plan`` discovers the groups (:mod:`onnxcomp.graph.channels.groups`), scores every unit
(:mod:`onnxcomp.passes.structured.importance`), decides a ratio per group (uniform, or
sensitivity-driven: :mod:`onnxcomp.passes.structured.alloc`) and which units go. ``apply`` removes
them from every coupled tensor and, with real calibration data, refits the consumers by least
squares (:mod:`onnxcomp.passes.structured.refit`). Frozen groups are reported with their reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.algo.numeric import numeric_problem
from onnxcomp.config import StructuredPruneConfig
from onnxcomp.errors import ConfigError
from onnxcomp.graph.channels.types import ChannelGraph, ChannelGroup
from onnxcomp.graph.channels.groups import analyze, apply_removal
from onnxcomp.graph.weights import find_weights
from onnxcomp.passes.base import Change, Context, Pass, PassResult, matches
from onnxcomp.passes.structured.alloc import MAX_SAMPLES, keep_count
from onnxcomp.passes.structured.refit import add_shifts, mean_shifts
from onnxcomp.passes.structured.importance import (ActivationStats, MacModel, activation_scores,
    activation_stats, unit_scores, weight_scores)


@dataclass
class GroupPlan:
    """The decision for one group: its unit scores, the ratio chosen and the units kept."""

    group: ChannelGroup
    scores: np.ndarray | None = None
    ratio: float = 0.0
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
    stats: ActivationStats | None = None  # with real data: consumer input means (bias compensation)
    notes: list[str] = field(default_factory=list)


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
        if imp == "auto":
            return "activation" if ctx.has_real_data else "l1"
        if imp == "activation" and not ctx.has_real_data:
            raise ConfigError("--importance activation needs calibration data",
                              "pass --data with real inputs, or choose --importance l1, l2 or bn")
        return imp

    def _allocation(self, ctx: Context) -> str:
        alloc = self.config.allocation
        if alloc == "auto":
            return "sensitivity" if ctx.has_real_data else "uniform"
        if alloc == "sensitivity" and not ctx.has_real_data:
            raise ConfigError("--allocation sensitivity needs calibration data",
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
        from onnxcomp.passes.structured.alloc import LEVELS, MAX_RATIO

        most = cfg.ratio if allocation == "uniform" else min(MAX_RATIO, cfg.ratio * max(LEVELS))
        if keep_count(g.size, most, cfg.round_to) >= g.size:
            return f"too small: {g.size} channels, --round-to {cfg.round_to}"
        return None

    def plan(self, model: onnx.ModelProto, ctx: Context) -> StructuredPlan:
        """Groups, scores, per-group ratios and the kept units; ``model`` is not modified."""
        cfg = self.config
        importance, allocation = self._importance(ctx), self._allocation(ctx)
        shapes_in = data_shapes(ctx)
        cg = analyze(model, shapes_in)
        stats = activation_stats(cg, ctx.data, MAX_SAMPLES, ctx.threads) if ctx.has_real_data else None
        if importance == "activation":
            id_scores = activation_scores(cg, stats)
        else:
            id_scores = weight_scores(cg, importance)
        macs = MacModel(cg, cg.shapes)
        plans = []
        for g in cg.groups:
            gp = GroupPlan(g, reason=self._eligible(g, allocation))
            if gp.reason is None:
                gp.scores = unit_scores(cg, g, id_scores)
                gp.ratio = cfg.ratio
            plans.append(gp)
        plan = StructuredPlan(cg, plans, np.ones(cg.n_ids, bool), importance, allocation, macs, stats)
        if allocation == "sensitivity":
            from onnxcomp.passes.structured.alloc import allocate

            allocate(model, plan, ctx, cfg)
        decide(plan, cfg.round_to)
        return plan

    def apply(self, model: onnx.ModelProto, plan: StructuredPlan, ctx: Context) -> PassResult:
        """Remove the planned channels, fold their means into biases, refit; one row per layer."""
        cfg = self.config
        refit = cfg.refit if cfg.refit is not None else ctx.has_real_data
        if refit and not ctx.has_real_data:
            raise ConfigError("--refit needs calibration data", "pass --data with real inputs, or use --no-refit")
        original = onnx.ModelProto()
        original.CopyFrom(model)
        nodes = _compute_nodes(plan)
        before = {key: (w.name, w.size, w.nbytes) for key, (_, w) in nodes.items()}
        shifts = mean_shifts(plan.cg, plan.keep, plan.stats) if plan.stats is not None else {}
        apply_removal(model, plan.cg, plan.keep)
        result = StructuredResult(self.name, settings={
            "ratio": cfg.ratio, "importance": plan.importance, "allocation": plan.allocation,
            "round_to": cfg.round_to, "refit": bool(refit), "macs_before": plan.macs.total,
            "macs_after": int(round(plan.macs.after(plan.keep)))})
        if shifts:
            n = add_shifts(model, plan.cg, plan.keep, shifts)
            result.notes.append(f"mean of the removed channels folded into {n} consumer bias(es)")
        if refit and any(gp.keep is not None for gp in plan.groups):
            from onnxcomp.passes.structured.refit import refit_consumers

            result.notes += refit_consumers(original, model, plan, ctx, record=result.settings)
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


def decide(plan: StructuredPlan, round_to: int) -> None:
    """Choose the kept units of every group at its ratio; never empty a producer, Split or Slice."""
    cg = plan.cg
    keep = np.ones(cg.n_ids, bool)
    for gp in plan.groups:
        if gp.reason is not None or gp.ratio <= 0:
            continue
        k = keep_count(gp.group.size, gp.ratio, round_to)
        order = np.argsort(-gp.scores, kind="stable")
        gp.keep = np.zeros(gp.group.size, bool)
        gp.keep[order[:k]] = True
        for u, kept in zip(gp.group.units, gp.keep):
            keep[u] = kept
    segments = [p.ids for p in cg.producers] + [ids for e in cg.edits if e.kind == "split" for ids in e.ids]
    segments += [e.ids[0][e.info["start"]:e.info["end"]] for e in cg.edits if e.kind == "slice"]
    for ids in segments:  # a part that would lose every channel keeps its best unit
        real = ids[ids >= 0]
        if len(real) and not keep[real].any():
            units = np.unique(cg.unit_of[real])
            gp = plan.groups[int(cg.group_of_unit[units[0]])]
            index = {int(cg.unit_of[u[0]]): i for i, u in enumerate(gp.group.units)}
            best = max((index[int(u)] for u in units), key=lambda i: gp.scores[i])
            gp.keep[best] = True
            keep[gp.group.units[best]] = True
    plan.keep = keep
