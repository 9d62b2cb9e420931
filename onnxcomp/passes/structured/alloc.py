"""Group budgets from measured error curves: the MACs saving is spent where the output error per
MAC saved is lowest (needs real calibration data).

Every prunable group has a curve, the relative output error of its consumers (after the
least-squares refit of the kept channels) against units removed, measured once on the
calibration data (:mod:`onnxcomp.passes.structured.select`). Its options are the kept counts that
are multiples of its rounding, keeping at least ``1 - MAX_RATIO`` of the units. The allocator
(:func:`onnxcomp.algo.allocation.allocate`) moves along each group's lower convex hull of (MACs,
error), the least error per MAC first, until the saving equals what the uniform ratio would save:
the same compute budget, spent where the model is least sensitive. Savings of two groups overlap
where one layer reads the one and writes the other; the additive target is raised by bisection
until the joint saving is met. No model run: the cost is the one statistics walk.

Also here: which units a group keeps at a count (:func:`chosen`; a stream widened stage by stage
keeps that share of every stage, :func:`stages`), the uniform reference every allocation spends
the MACs of, and :func:`decide`.
"""
from __future__ import annotations

from math import gcd

import numpy as np

from onnxcomp.algo.allocation import allocate as spend

MAX_RATIO = 0.9


def keep_count(n: int, ratio: float, round_to: int) -> int:
    """Units kept of ``n`` at ``ratio``: a multiple of ``round_to`` (at least one), at most ``n``."""
    if ratio <= 0:
        return n
    k = max(round_to, int(np.floor(n * (1.0 - ratio) / round_to + 0.5)) * round_to)
    return min(n, k)


def unit_multiple(group, round_to: int) -> int:
    """Units to keep at a time so that every producer keeps a multiple of ``round_to`` channels (a
    unit may hold several channels of one producer: a head holds its head size)."""
    width = max(1, len(group.units[0]) // max(1, len(group.producers))) if group.units else 1
    return round_to // gcd(round_to, width)


def _mask(plan, gp, removed: np.ndarray) -> np.ndarray:
    keep = np.ones(plan.cg.n_ids, bool)
    for u in removed:
        keep[gp.group.units[u]] = False
    return keep


def allocate(plan, curves: dict[int, tuple[np.ndarray, np.ndarray]], target: float, round_to: int) -> None:
    """Set ``n_keep`` of every group in ``curves`` (group index -> (removal order, cumulative error))
    so that the joint MACs saving reaches ``target`` at the least summed error."""
    by_index = {gp.group.index: gp for gp in plan.groups}
    total = plan.macs.total
    errors, saved = {}, {}
    for g, (order, cum) in curves.items():
        gp = by_index[g]
        n, m = gp.group.size, unit_multiple(gp.group, round_to)
        least = max(m, int(np.ceil(n * (1 - MAX_RATIO))))
        ks = [k for k in range(m, n, m) if k >= least and n - k < len(cum)] + [n]
        errors[g] = {k: float(cum[n - k]) for k in ks}
        saved[g] = {k: total - plan.macs.after(_mask(plan, gp, order[:n - k])) for k in ks}
    if not errors:
        return
    most = {g: max(s.values()) for g, s in saved.items()}
    costs = {g: {k: most[g] - s for k, s in saved[g].items()} for g in saved}

    def choose(additive: float) -> dict:
        return spend(errors, {g: 1 for g in errors}, 0.0, costs, limit=sum(most.values()) - additive)

    def joint(choice: dict) -> float:
        keep = np.ones(plan.cg.n_ids, bool)
        for g, k in choice.items():
            order, _ = curves[g]
            keep &= _mask(plan, by_index[g], order[:by_index[g].group.size - k])
        return total - plan.macs.after(keep)

    lo, hi = target, max(target, sum(most.values()))
    best = choose(hi)
    if joint(choose(lo)) >= target:
        best = choose(lo)
    else:
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            c = choose(mid)
            if joint(c) >= target:
                hi, best = mid, c
            else:
                lo = mid
    for g, k in best.items():
        by_index[g].n_keep = int(k)


def stages(cg) -> dict[int, list[np.ndarray]]:
    """Per group index, the units its tensors add stage by stage, for groups whose tensors hold
    nested sets of their units and not all of them: a residual stream widened by padded channels
    (TFLite exports; :meth:`onnxcomp.graph.channels.maps.MapRules.r_Pad`). Other groups are absent."""
    position = {}  # unit -> (group, index within the group)
    for g in cg.groups:
        for i, u in enumerate(g.units):
            position[int(cg.unit_of[u[0]])] = (g.index, i)
    sets: dict[int, set] = {}
    for lay in cg.layouts.values():
        found: dict[int, set] = {}
        for u in np.unique(cg.unit_of[lay.ids[lay.ids >= 0]]).tolist():
            if u in position:
                found.setdefault(position[u][0], set()).add(position[u][1])
        for g, units in found.items():
            sets.setdefault(g, set()).add(frozenset(units))
    out = {}
    for g, found in sets.items():
        chain = sorted(found, key=len)
        if len(chain) > 1 and all(a <= b for a, b in zip(chain, chain[1:])) and len(chain[-1]) == cg.groups[g].size:
            out[g] = [np.array(sorted(b - a)) for a, b in zip([frozenset()] + chain[:-1], chain)]
    return out


def chosen(gp, k: int, round_to: int) -> np.ndarray:
    """Which units of the group stay (bool per unit) when it keeps ``k``: the best ``k`` by score;
    in a staged group, each tensor keeps that share of its channels, rounded to the multiple, best
    first among the units each stage adds (so every stage narrows alike and stays a multiple)."""
    keep = np.zeros(gp.group.size, bool)
    if gp.stages is None:
        keep[np.argsort(-gp.scores, kind="stable")[:k]] = True
        return keep
    step, frac, kept, seen = unit_multiple(gp.group, round_to), k / gp.group.size, 0, 0
    for added in gp.stages:
        seen += len(added)
        want = min(seen, max(kept, step, int(round(frac * seen / step)) * step))
        best = added[np.argsort(-gp.scores[added], kind="stable")][:want - kept]
        keep[best] = True
        kept += len(best)
    return keep


def mask(plan, gp, k: int, round_to: int) -> np.ndarray:
    """The kept channel ids (bool per id) with the group alone keeping ``k`` units."""
    keep = np.ones(plan.cg.n_ids, bool)
    for u, kept in zip(gp.group.units, chosen(gp, k, round_to)):
        if not kept:
            keep[u] = False
    return keep


def uniform_keep(plan, round_to: int) -> np.ndarray:
    """The kept channel ids if every live group kept its share at the uniform ratio."""
    keep = np.ones(plan.cg.n_ids, bool)
    for gp in plan.groups:
        if gp.reason is None:
            keep &= mask(plan, gp, keep_count(gp.group.size, gp.ratio, unit_multiple(gp.group, round_to)), round_to)
    return keep


def decide(plan, round_to: int) -> None:
    """Choose the kept units of every group at its count; never empty a producer, Split or Slice."""
    cg = plan.cg
    keep = np.ones(cg.n_ids, bool)
    for gp in plan.groups:
        if gp.reason is not None or (gp.ratio <= 0 and gp.n_keep is None):
            continue
        k = gp.n_keep if gp.n_keep is not None else keep_count(gp.group.size, gp.ratio,
                                                               unit_multiple(gp.group, round_to))
        gp.keep = chosen(gp, k, round_to)
        for u, kept in zip(gp.group.units, gp.keep):
            keep[u] = kept
    segments = [p.ids for p in cg.producers] + [ids for e in cg.edits if e.kind == "split" for ids in e.ids]
    segments += [e.ids[0][e.info["start"]:e.info["end"]] for e in cg.edits if e.kind == "slice"]
    for ids in segments:  # a part that would lose every channel keeps its best unit
        real = ids[ids >= 0]
        if len(real) and not keep[real].any():
            units = np.unique(cg.unit_of[real])
            if cg.group_of_unit[units[0]] < 0:  # channels a Pad adds, in no group: always kept
                continue
            gp = plan.groups[int(cg.group_of_unit[units[0]])]
            index = {int(cg.unit_of[u[0]]): i for i, u in enumerate(gp.group.units)}
            best = max((index[int(u)] for u in units), key=lambda i: gp.scores[i])
            gp.keep[best] = True
            keep[gp.group.units[best]] = True
    plan.keep = keep
