"""How much a measured drop can be trusted: one-sided 95 % upper bounds for the fidelity headline
on the samples it was measured on, and whether that sample count can resolve a quality gate.

Top-1 agreement is a proportion: the bound on the disagreement rate is Clopper-Pearson's (with no
disagreement at all it is about 3 / n, the "rule of three"). Cosine similarity is a mean of
per-sample values: the bound on 1 - cosine is the mean plus 1.645 standard errors.
"""
from __future__ import annotations

import math

Z95 = 1.645  # one-sided 95 %


def disagreement_bound(agree: int, n: int) -> float:
    """95 % upper bound on the disagreement rate when ``agree`` of ``n`` samples agree."""
    if n <= 0:
        return 1.0
    k = n - agree  # disagreements
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, k + 1, n - k))


def loss_bound(mean_loss: float, sd: float, n: int) -> float:
    """95 % upper bound on the mean of a per-sample loss (e.g. 1 - cosine) from its mean and sd."""
    if n <= 1:
        return 1.0
    return mean_loss + Z95 * sd / math.sqrt(n)


def resolvable(n: int, max_drop: float) -> bool:
    """Whether ``n`` samples with no disagreement at all would bound the drop below ``max_drop``."""
    return disagreement_bound(n, n) <= max_drop


def samples_needed(max_drop: float, drop: float = 0.0) -> int | None:
    """About how many samples bound the disagreement below ``max_drop`` when the rate measured on
    them is ``drop`` (with none: the rule of three); None when ``drop`` is not below ``max_drop``
    (no sample count confirms a drop already above the gate)."""
    if max_drop <= 0 or drop >= max_drop:
        return None

    def bound(n: int) -> float:
        return disagreement_bound(n - round(drop * n), n)

    hi = max(1, math.ceil(-math.log(0.05) / max_drop))
    while bound(hi) > max_drop:
        hi *= 2
    lo = hi // 2
    while hi - lo > max(1, hi // 100):  # to about 1 %
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if bound(mid) <= max_drop else (mid, hi)
    return hi
