"""Group budgets from the model's measured output error (``--allocation sensitivity``; needs data).

Each prunable group is pruned alone at a few ratios (0.5x, 1x and 1.5x the requested ratio), in
its importance order, with the consumers compensated from the statistics walk
(:func:`onnxcomp.passes.structured.select.compensations`), and the relative error of the whole
model's outputs on a small calibration subset is measured against the MACs it saves. Starting
from nothing pruned, the step with the least added error per MAC saved is taken until the saving
equals what the uniform ratio would save: the same compute budget, spent where the model is least
sensitive. The steps are coarse (a big group's step can save far more than the rest of the budget:
``reconstruction`` on mobilenet_digits at 0.5 reached 0.16x the MACs where uniform gives 0.26x),
so units are then given back, the group with the highest interpolated error per unit first, while
the saving still meets the budget. Cost: ``len(LEVELS)`` runs of the model on the subset per group.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.data.sampling import take_samples
from onnxcomp.graph.channels.groups import apply_removal, rebind
from onnxcomp.io.sessions import session
from onnxcomp.measure.outputs import output_error, output_parts
from onnxcomp.passes.structured.alloc import MAX_RATIO, keep_count, mask, unit_multiple
from onnxcomp.passes.structured.select import compensations, write_compensations

LEVELS = (0.5, 1.0, 1.5)
INPUT_BUDGET = 8 * 3 * 224 * 224  # input elements used to measure sensitivity


def _subset(ctx) -> list[dict[str, np.ndarray]]:
    first = next(iter(ctx.data))
    per = max(1, int(sum(np.prod(v.shape[1:]) for v in first.values())))
    return take_samples(ctx.data, int(np.clip(INPUT_BUDGET // per, 2, 32)))  # whole batches of a fixed batch


def _outputs(model: onnx.ModelProto, batches, threads) -> list[np.ndarray]:
    sess = session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    outs = [sess.run(names, {i.name: b[i.name] for i in sess.get_inputs()}) for b in batches]
    return [np.concatenate([np.atleast_1d(o[k]) for o in outs]).astype(np.float64)  # (a scalar output too)
            for k in range(len(names))]


def _error(ref: list[np.ndarray], out: list[np.ndarray], parts: list) -> float:
    err = sum(output_error(a, b, p) for a, b, p in zip(ref, out, parts))
    return float(err) if np.isfinite(err) else float("inf")




def _probe(model: onnx.ModelProto, plan, gp, batches, ref, parts, ctx, cfg) -> list[tuple]:
    """[(units kept, MACs saved, output error, keep mask)] of one group pruned alone at each level."""
    total, n = plan.macs.total, gp.group.size
    opts, seen = [(n, 0.0, 0.0, None)], {n}
    for level in LEVELS:
        k = keep_count(n, min(MAX_RATIO, cfg.ratio * level), unit_multiple(gp.group, cfg.round_to))
        if k in seen:
            continue
        seen.add(k)
        keep = mask(plan, gp, k, cfg.round_to)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        bound = rebind(plan.cg, copy)
        comp = compensations(plan.cg, plan.measured, keep)
        apply_removal(copy, bound, keep)
        write_compensations(copy, bound, comp)
        opts.append((k, total - plan.macs.after(keep), _error(ref, _outputs(copy, batches, ctx.threads), parts),
                     keep))
    return opts


def _joint(plan, options: list[list[tuple]], level: list[int]) -> np.ndarray:
    keep = np.ones(plan.cg.n_ids, bool)
    for opts, lv in zip(options, level):
        if opts[lv][3] is not None:
            keep &= opts[lv][3]
    return keep


def _saved(plan, groups, kept: list[int], round_to: int) -> float:
    keep = np.ones(plan.cg.n_ids, bool)
    for gp, k in zip(groups, kept):
        if k < gp.group.size:
            keep &= mask(plan, gp, k, round_to)
    return plan.macs.total - plan.macs.after(keep)


def _give_back(plan, groups, options: list[list[tuple]], kept: list[int], target: float, round_to: int) -> list[int]:
    """Units returned to the groups, the highest error per unit first, while the saving still
    reaches ``target``: the greedy steps are coarse (a step of a big group can overshoot the budget
    by far), the allocation should spend the budget, not more. Errors between the measured counts
    are interpolated."""
    kept = list(kept)
    while True:
        cands = []
        for g, gp in enumerate(groups):
            step = unit_multiple(gp.group, round_to)
            k = min(kept[g] + step, gp.group.size)
            if k > kept[g]:
                ks = [o[0] for o in options[g]][::-1]
                es = [o[2] for o in options[g]][::-1]
                gain = float(np.interp(kept[g], ks, es) - np.interp(k, ks, es))
                cands.append((gain / (k - kept[g]), g, k))
        for _, g, k in sorted(cands, reverse=True):
            trial = kept[:g] + [k] + kept[g + 1:]
            if _saved(plan, groups, trial, round_to) >= target * 0.995:
                kept = trial
                break
        else:
            return kept


def _choose(plan, groups, options: list[list[tuple]], target: float, round_to: int) -> list[int]:
    """Per group the units kept: greedy steps of least added error per MAC saved until the joint
    saving reaches ``target``, then :func:`_give_back`."""
    level = [0] * len(options)
    saved = 0.0
    while saved < target * 0.995:
        best = None
        for g, opts in enumerate(options):
            cur = opts[level[g]]
            for j in range(level[g] + 1, len(opts)):
                ds, de = opts[j][1] - cur[1], opts[j][2] - cur[2]
                if ds > 0 and (best is None or de / ds < best[0]):
                    best = (de / ds, g, j)
        if best is None:
            break
        level[best[1]] = best[2]
        saved = plan.macs.total - plan.macs.after(_joint(plan, options, level))  # coupled savings overlap
    kept = [opts[lv][0] for opts, lv in zip(options, level)]
    return _give_back(plan, groups, options, kept, target, round_to) if saved >= target * 0.995 else kept


def probe_allocate(model: onnx.ModelProto, plan, ctx, cfg, target: float) -> int:
    """Set ``n_keep`` of every live group from measured output error; returns the samples used."""
    groups = [gp for gp in plan.groups if gp.reason is None]
    batches = _subset(ctx)
    ref = _outputs(model, batches, ctx.threads)
    parts = output_parts(model)
    options = [_probe(model, plan, gp, batches, ref, parts, ctx, cfg) for gp in groups]
    for gp, k in zip(groups, _choose(plan, groups, options, target, cfg.round_to)):
        gp.n_keep = k
    return sum(len(next(iter(b.values()))) for b in batches)
