"""Sensitivity-driven allocation of the channel ratio across groups (needs real calibration data).

Each prunable group is pruned alone at a few ratios (0.5x, 1x and 1.5x the requested ratio) and
the relative output error on a small calibration subset is measured against the MACs it saves.
Starting from nothing pruned, the step with the least added error per MAC saved is taken until
the saving equals what the uniform ratio would save: the same compute budget, spent where the
model is least sensitive. Sensitive groups keep more channels (or all of them).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.groups import apply_removal, rebind
from onnxcomp.io.sessions import session
from onnxcomp.passes.structured.importance import limited
from onnxcomp.passes.structured.refit import add_shifts, mean_shifts

LEVELS = (0.5, 1.0, 1.5)
MAX_RATIO = 0.9
MAX_SAMPLES = 256  # calibration samples behind scores, sensitivity and the refit
INPUT_BUDGET = 8 * 3 * 224 * 224  # input elements used to measure sensitivity


def _subset(ctx, max_samples: int) -> list[dict[str, np.ndarray]]:
    first = next(iter(ctx.data))
    per = max(1, int(sum(np.prod(v.shape[1:]) for v in first.values())))
    n = int(np.clip(INPUT_BUDGET // per, 2, min(32, max_samples)))
    return list(limited(ctx.data, n))


def _outputs(model: onnx.ModelProto, batches, threads) -> list[np.ndarray]:
    sess = session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    feeds = [{i.name: b[i.name] for i in sess.get_inputs()} for b in batches]
    outs = [sess.run(names, f) for f in feeds]
    return [np.concatenate([o[k] for o in outs]).astype(np.float64) for k in range(len(names))]


def _error(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    return float(sum(np.sum((a - b) ** 2) / max(np.sum(a ** 2), 1e-12) for a, b in zip(ref, out)))


def _keep_for(plan, gp, ratio: float, round_to: int) -> np.ndarray:
    keep = np.ones(plan.cg.n_ids, bool)
    k = keep_count(gp.group.size, ratio, round_to)
    order = np.argsort(-gp.scores, kind="stable")
    for u in order[k:]:
        keep[gp.group.units[u]] = False
    return keep


def _probe(model: onnx.ModelProto, plan, gp, batches, ref, ctx, cfg) -> list[tuple]:
    """[(ratio, MACs saved, output error, keep mask)] of one group pruned alone at each level."""
    total = plan.macs.total
    opts, seen = [(0.0, 0.0, 0.0, None)], set()
    for level in LEVELS:
        r = min(MAX_RATIO, cfg.ratio * level)
        keep = _keep_for(plan, gp, r, cfg.round_to)
        n_kept = int(keep[np.concatenate(gp.group.units)].sum())
        if n_kept in seen or n_kept == sum(len(u) for u in gp.group.units):
            continue
        seen.add(n_kept)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        bound = rebind(plan.cg, copy)
        shifts = mean_shifts(plan.cg, keep, plan.stats) if plan.stats is not None else {}
        apply_removal(copy, bound, keep)
        add_shifts(copy, bound, keep, shifts)
        opts.append((r, total - plan.macs.after(keep), _error(ref, _outputs(copy, batches, ctx.threads)), keep))
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


def allocate(model: onnx.ModelProto, plan, ctx, cfg) -> None:
    """Set ``ratio`` of every prunable group in ``plan`` from measured sensitivity."""
    groups = [gp for gp in plan.groups if gp.reason is None]
    if not groups:
        return
    batches = _subset(ctx, MAX_SAMPLES)
    ref = _outputs(model, batches, ctx.threads)
    uniform = np.ones(plan.cg.n_ids, bool)
    for gp in groups:
        uniform &= _keep_for(plan, gp, cfg.ratio, cfg.round_to)
    options = [_probe(model, plan, gp, batches, ref, ctx, cfg) for gp in groups]
    level = _choose(plan, options, plan.macs.total - plan.macs.after(uniform))
    for gp, opts, lv in zip(groups, options, level):
        gp.ratio = opts[lv][0]
        if gp.ratio == 0:
            gp.reason = "protected: most sensitive per MAC saved"
    plan.notes.append(f"sensitivity allocation on {sum(len(next(iter(b.values()))) for b in batches)} samples: "
                      f"{sum(lv > 0 for lv in level)} of {len(groups)} groups pruned")


def keep_count(n: int, ratio: float, round_to: int) -> int:
    """Units kept of ``n`` at ``ratio``: a multiple of ``round_to`` (at least one), at most ``n``."""
    if ratio <= 0:
        return n
    k = max(round_to, int(np.floor(n * (1.0 - ratio) / round_to + 0.5)) * round_to)
    return min(n, k)
