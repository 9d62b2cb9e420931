"""Integer factorisations of codebook tables: each row as integers times one float16 scale,
exact in float32 (the channel grid, the shared table), and their lowest terms."""
from __future__ import annotations

import numpy as np


def factor(table: np.ndarray, maxint: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Write each row as integers q (|q| <= maxint) times one float16 scale, exactly in float32.

    Returns (q [C, K] int16, s [C] float16) or None when some row has no such factorisation.
    The scale tried first is the row's largest |value| / maxint, then / (maxint - 1), ...: the
    largest |q| that works, which is the one the cluster pass chose.
    """
    c = np.asarray(table, np.float64)
    m = np.abs(c).max(axis=1)
    s = np.where(m == 0, 1.0, np.nan)
    todo = np.flatnonzero(m > 0)
    probe = todo[:4]  # values that are no grid fail on every row: a few rows searched in full say so
    s[probe] = _first_scales(c, m, probe, np.arange(maxint, 0, -1, dtype=np.float64), maxint)
    if np.isnan(s[probe]).any():
        return None
    todo = todo[4:]
    start, width = maxint, 8
    while todo.size and start > 0:  # candidates in descending blocks (8, 16, 32, ...): a row leaves
        js = np.arange(start, max(start - width, 0), -1, dtype=np.float64)  # at its first hit,
        found = _first_scales(c, m, todo, js, maxint)  # which is the full search's answer
        s[todo] = found
        todo = todo[np.isnan(found)]
        start, width = start - width, width * 2
    return _written(c, s)


def _first_scales(c: np.ndarray, m: np.ndarray, todo: np.ndarray, js: np.ndarray, maxint: int) -> np.ndarray:
    """For rows ``todo``, the first scale m/j (j in ``js``, in order; [J] for every row or
    [rows, J] per row, 0 = no candidate) that writes the row as integers |q| <= maxint times a
    float16 exactly in float32; NaN where none of ``js`` does."""
    out = np.full(todo.size, np.nan)
    per_row = js.ndim == 2
    step = max(1, (1 << 18) // max(1, js.shape[-1] * c.shape[1]))  # bounded [rows, js, K] blocks
    for lo in range(0, todo.size, step):
        chunk = todo[lo:lo + step]
        with np.errstate(divide="ignore"):
            cand = m[chunk, None] / (js[lo:lo + step] if per_row else js[None, :])
        rows, cols = np.nonzero((np.float16(cand).astype(np.float64) == cand) & np.isfinite(cand))  # float16 scales only
        if rows.size == 0:
            continue
        sc = cand[rows, cols]
        vals = c[chunk[rows]]
        q = vals / sc[:, None]
        good = np.all((q == np.round(q)) & (np.abs(q) <= maxint), axis=1)
        good &= np.all(np.round(q).astype(np.float32) * sc[:, None].astype(np.float32)
                       == vals.astype(np.float32), axis=1)
        rows, sc = rows[good], sc[good]
        first = np.unique(rows, return_index=True)[1]  # per row, the largest |q| that works
        out[lo + rows[first]] = sc[first]
    return out


def factor_multiples(table: np.ndarray, maxint: int, base: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``factor(table, maxint)`` for rows already written as integers ``base`` times a scale (the
    8-bit grid): a row's valid scales are m/j for j a multiple of max|base| / gcd(base) (any other
    j leaves some q a fraction of at least 1/max|base| away from an integer), so only those are
    tried, largest first: the same first hit as the full search, without its ~2000 candidates."""
    c = np.asarray(table, np.float64)
    m = np.abs(c).max(axis=1)
    b = np.abs(np.asarray(base, np.int64))
    g = np.gcd.reduce(b, axis=1)
    j0 = np.where(g > 0, b.max(axis=1) // np.maximum(g, 1), 1)
    s = np.where(m == 0, 1.0, np.nan)
    todo = np.flatnonzero(m > 0)
    top = maxint // j0  # the largest multiplier of each row
    done, width = 0, 4
    while todo.size:
        k = top[todo, None] - done - np.arange(width)[None, :]  # the next ``width`` multiples, descending
        if (k < 1).all():
            break
        js = np.where(k >= 1, k * j0[todo, None], 0).astype(np.float64)
        found = _first_scales(c, m, todo, js, maxint)
        s[todo] = found
        todo = todo[np.isnan(found)]
        done, width = done + width, width * 2
    return _written(c, s)


def _written(c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(q int16, s float16) for the scales found, or None when some row has none."""
    if np.isnan(s).any():
        return None
    return np.round(c / s[:, None]).astype(np.int16), s.astype(np.float16)


def lowest_terms(q: np.ndarray, s: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's integers divided by their common divisor (the scale multiplied by it) where that
    stays exact: ``factor`` picks the largest integers, so rows of one uniform grid (q * step) come
    out as q * 2^t with a different t per row; in lowest terms they share one small table."""
    d = np.gcd.reduce(np.abs(q.astype(np.int64)), axis=1)
    d[d == 0] = 1
    s2 = (s.astype(np.float64) * d).astype(np.float16)
    q2 = (q // d[:, None]).astype(np.int16)
    ok = (d > 1) & np.isfinite(s2) & np.all(q2.astype(np.float32) * s2.astype(np.float32)[:, None]
                                           == np.asarray(table, np.float32), axis=1)
    if not ok.any():
        return q, s
    q, s = q.copy(), s.copy()
    q[ok], s[ok] = q2[ok], s2[ok]
    return q, s
