"""Which weight values the numerics can take, and the finite-safe guard for what they write back.

Every solver here (k-means, GPTQ/OBS, least squares, SVD) works in float32 or float64. A weight
holding NaN or Inf is left alone by every pass (its layer's outputs are already NaN/Inf; nothing
a rewrite does would help). A float64 weight whose magnitudes exceed float32 is left alone too
(the k-means sorts float32 keys). Finite weights of any range are taken; what a solver writes
back goes through :func:`keep_finite`, so an overflow can never put NaN into a model whose
weights were finite.
"""
from __future__ import annotations

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)


def numeric_problem(values: np.ndarray) -> str | None:
    """Why a pass must leave these weight values alone, or None when it may compress them."""
    a = np.asarray(values)
    if a.dtype.kind != "f" or a.size == 0:
        return None
    if not np.isfinite(a).all():
        return "contains NaN or Inf"
    if a.dtype.itemsize > 4 and float(np.abs(a).max()) > F32_MAX:
        return f"values up to {float(np.abs(a).max()):.3g}, beyond the float32 range the solvers use"
    return None


def keep_finite(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``new``, with ``old`` put back wherever ``new`` is not finite but ``old`` was (same shape)."""
    new = np.asarray(new)
    bad = ~np.isfinite(new)
    if not bad.any():
        return new
    old = np.asarray(old).reshape(new.shape)
    bad &= np.isfinite(old)
    return np.where(bad, old.astype(new.dtype), new) if bad.any() else new
