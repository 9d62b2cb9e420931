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
