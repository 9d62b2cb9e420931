"""Group OBS (algo/groupobs.py): the error it books for removing input units is the least-squares
error of refitting the rest, and it removes the cheapest unit first."""
from __future__ import annotations

import numpy as np

from onnxcomp.algo.groupobs import Problem, mean_fold, removal_curve


def _problem(seed: int = 0, n: int = 400, d: int = 6, out: int = 3, width: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))  # correlated inputs
    w = rng.standard_normal((d, out))
    cols = [np.arange(u * width, (u + 1) * width) for u in range(d // width)]
    return x, w, Problem(w, x.T @ x / n, cols)


def _ls_error(x: np.ndarray, w: np.ndarray, kept: np.ndarray) -> float:
    """Relative output error of the best refit of the kept rows."""
    y = x @ w
    if not kept.any():
        return 1.0
    coef, *_ = np.linalg.lstsq(x[:, kept], y, rcond=None)
    return float(((y - x[:, kept] @ coef) ** 2).sum() / (y ** 2).sum())


def test_booked_error_is_the_least_squares_refit_error():
    for width in (1, 2):  # single channels and heads of two rows
        x, w, p = _problem(width=width)
        removed, added = removal_curve([p], len(p.cols), 2, damp=0.0)
        kept = np.ones(x.shape[1], bool)
        for u, cum in zip(removed, np.cumsum(added)):
            kept[p.cols[u]] = False
            assert abs(cum - _ls_error(x, w, kept)) < 1e-8


def test_first_removal_is_the_cheapest_unit():
    x, w, p = _problem(seed=3)
    removed, _ = removal_curve([p], len(p.cols), 1, damp=0.0)
    errs = [_ls_error(x, w, np.arange(x.shape[1]) != u) for u in range(x.shape[1])]
    assert removed[0] == int(np.argmin(errs))


def test_given_order_is_followed():
    _, _, p = _problem(seed=1)
    order = np.array([4, 0, 2, 1, 3, 5])
    removed, added = removal_curve([p], len(p.cols), 4, order=order)
    assert list(removed) == [4, 0, 2, 1] and (added >= 0).all()


def test_mean_fold_keeps_the_average_output():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((500, 4)) + 2.0, np.ones((500, 1))], 1)  # bias feature last
    w = rng.standard_normal((5, 3))
    keep = np.array([True, False, True, False, True])
    folded = mean_fold(w, x.mean(0), keep)
    assert np.allclose((x[:, keep] @ folded).mean(0), (x @ w).mean(0))
    assert np.array_equal(folded[:-1], w[keep][:-1])
