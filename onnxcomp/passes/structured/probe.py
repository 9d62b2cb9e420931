"""Group budgets from the model's measured output error (``--allocation sensitivity``; needs data).

Each prunable group is pruned alone at a few ratios (0.5x, 1x and 1.5x the requested ratio), in
its importance order, with the consumers compensated from the statistics walk
(:func:`onnxcomp.passes.structured.select.compensations`), and the relative error of the whole
model's outputs on a small calibration subset is measured against the MACs it saves. Starting
from nothing pruned, the step with the least added error per MAC saved is taken until the saving
equals what the uniform ratio would save: the same compute budget, spent where the model is least
sensitive. Cost: ``len(LEVELS)`` runs of the model on the subset per group.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.data.sampling import take_samples
from onnxcomp.graph.channels.groups import apply_removal, rebind
from onnxcomp.io.sessions import session
from onnxcomp.passes.structured.alloc import MAX_RATIO, keep_count, unit_multiple
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
    return [np.concatenate([o[k] for o in outs]).astype(np.float64) for k in range(len(names))]


def _error(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    err = sum(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-12) for a, b in zip(ref, out))
    return float(err) if np.isfinite(err) else float("inf")


def _keep_for(plan, gp, n_keep: int) -> np.ndarray:
    keep = np.ones(plan.cg.n_ids, bool)
    for u in np.argsort(-gp.scores, kind="stable")[n_keep:]:
        keep[gp.group.units[u]] = False
    return keep


def _probe(model: onnx.ModelProto, plan, gp, batches, ref, ctx, cfg) -> list[tuple]:
    """[(units kept, MACs saved, output error, keep mask)] of one group pruned alone at each level."""
    total, n = plan.macs.total, gp.group.size
    opts, seen = [(n, 0.0, 0.0, None)], {n}
    for level in LEVELS:
        k = keep_count(n, min(MAX_RATIO, cfg.ratio * level), unit_multiple(gp.group, cfg.round_to))
        if k in seen:
            continue
        seen.add(k)
        keep = _keep_for(plan, gp, k)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        bound = rebind(plan.cg, copy)
        comp = compensations(plan.cg, plan.measured, keep)
        apply_removal(copy, bound, keep)
        write_compensations(copy, bound, comp)
        opts.append((k, total - plan.macs.after(keep), _error(ref, _outputs(copy, batches, ctx.threads)), keep))
    return opts


def _choose(plan, options: list[list[tuple]], target: float) -> list[int]:
    """Per group the level reached by greedy steps of least added error per MAC saved."""
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
        joint = np.ones(plan.cg.n_ids, bool)
        for opts, lv in zip(options, level):
            if opts[lv][3] is not None:
                joint &= opts[lv][3]
        saved = plan.macs.total - plan.macs.after(joint)  # coupled groups' savings do not simply add up
    return level


def probe_allocate(model: onnx.ModelProto, plan, ctx, cfg, target: float) -> int:
    """Set ``n_keep`` of every live group from measured output error; returns the samples used."""
    groups = [gp for gp in plan.groups if gp.reason is None]
    batches = _subset(ctx)
    ref = _outputs(model, batches, ctx.threads)
    options = [_probe(model, plan, gp, batches, ref, ctx, cfg) for gp in groups]
    for gp, opts, lv in zip(groups, options, _choose(plan, options, target)):
        gp.n_keep = opts[lv][0]
    return sum(len(next(iter(b.values()))) for b in batches)
