"""The output error of a low-rank rewrite at every rank at once (what the rank allocator spends).

For one group's weight ``W [O, D]`` (``y = W x``; a conv flattened over its patch ``(c, i, j)``)
and the layer-input second moment ``Σ = E[x xᵀ]`` (None: the identity, i.e. the weight error),
each function returns ``(total, error)``: ``total = tr(W Σ Wᵀ)`` (the output energy) and
``error[k]`` the output error energy ``E||W x - W'_r x||²`` of the method's rewrite at
``ranks[k]``, as :mod:`onnxcomp.algo.lowrank` builds it:

- :func:`svd_curve`: the whitened SVD truncated to ``r`` (Eckart–Young): the tail of the squared
  singular values of ``W L`` (``Σ = L Lᵀ``).
- :func:`nested_curve` (spatial with data): the rewrite is a fixed first factor ``F_r`` (nested:
  the rows of rank ``r`` are the first rows of the full one) and a least-squares refit of the
  second, so ``error(r) = total - ||P_r||²`` where ``P = (W Σ Fᵀ) L⁻ᵀ`` with ``F Σ Fᵀ = L Lᵀ``
  (Cholesky): the columns of ``P`` are the output energy each new row of ``F`` explains, in order,
  one Cholesky for every rank.
- :func:`tucker_curve`: the same refit through the input projection (rank ``r1``), then the
  orthogonal projection onto the ``r2`` leading output directions ``U``: the refit residual is
  orthogonal to the span of the refit, so ``error = total - ||U_r2ᵀ P_r1||²``.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from onnxcomp.algo.linalg import DAMP, svd


def svd_curve(spectrum: np.ndarray, ranks: list[int]) -> tuple[float, np.ndarray]:
    """(total, error at each rank) of a truncated (whitened) SVD from its singular values."""
    sq = np.asarray(spectrum, np.float64) ** 2
    tail = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])  # tail[r] = sum of sq[r:]
    return float(sq.sum()), np.array([tail[min(r, len(sq))] for r in ranks])


def _explained(w_sigma_ft: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``P = (W Σ Fᵀ) L⁻ᵀ`` with ``F Σ Fᵀ = L Lᵀ`` (ridge-damped Cholesky)."""
    g = 0.5 * (gram + gram.T)
    ridge = DAMP * max(float(np.trace(g)) / max(len(g), 1), 1e-30)
    g = g + ridge * np.eye(len(g))
    try:
        low = np.linalg.cholesky(g)
    except np.linalg.LinAlgError:  # numerically indefinite: a stronger ridge
        low = np.linalg.cholesky(g + 1e3 * ridge * np.eye(len(g)))
    return scipy.linalg.solve_triangular(low, w_sigma_ft.T, lower=True).T


def nested_curve(w_sigma: np.ndarray, total: float, first: np.ndarray, sigma: np.ndarray | None,
                 block: int, ranks: list[int]) -> np.ndarray:
    """Error at each rank of ``first`` (rows of rank r: the first ``r·block``) plus a refit second factor.

    ``w_sigma = W Σ`` ([O, D]), ``first`` [R·block, D], ``sigma`` Σ (None: identity).
    """
    f = np.asarray(first, np.float64)
    gram = f @ (f.T if sigma is None else sigma @ f.T)
    p = _explained(w_sigma @ f.T, gram)
    cum = np.concatenate([[0.0], np.cumsum((p * p).sum(0))])
    return np.array([max(0.0, total - cum[min(r * block, p.shape[1])]) for r in ranks])


def tucker_curve(weight: np.ndarray, sigma: np.ndarray | None, first: np.ndarray, u_out: np.ndarray,
                 pairs: list[tuple[int, int]], k2: int) -> tuple[float, np.ndarray]:
    """(total, error at each (r1, r2)) of Tucker-2 with a refit core (see the module doc).

    ``weight`` [O, C, kh, kw]; ``first`` [R1max, C] the input projections (nested rows);
    ``u_out`` [O, R2max] the output directions (nested columns).
    """
    o, c = weight.shape[:2]
    w = np.asarray(weight, np.float64).reshape(o, c * k2)
    f = np.asarray(first, np.float64)
    r1max = len(f)
    if sigma is None:
        w_sigma = w
        gram = np.kron(f @ f.T, np.eye(k2))  # rows ordered (a, i, j)
    else:
        w_sigma = w @ sigma
        s4 = sigma.reshape(c, k2, c, k2)
        half = np.einsum("ac,cidj->aidj", f, s4, optimize=True)
        gram = np.einsum("aidj,bd->aibj", half, f, optimize=True).reshape(r1max * k2, r1max * k2)
    total = float(np.sum(w_sigma * w))
    cross = np.einsum("oci,ac->oai", w_sigma.reshape(o, c, k2), f, optimize=True).reshape(o, r1max * k2)
    p = _explained(cross, gram)  # [O, R1max·k2]
    proj = np.asarray(u_out, np.float64).T @ p  # [R2max, R1max·k2]
    sq = proj * proj
    # energy[r2, r1·k2]: rows cumulated over the output directions, columns over the input blocks
    cum = np.cumsum(np.cumsum(sq, axis=0), axis=1)
    out = []
    for r1, r2 in pairs:
        a, b = min(r2, cum.shape[0]), min(r1 * k2, cum.shape[1])
        out.append(max(0.0, total - (cum[a - 1, b - 1] if a and b else 0.0)))
    return total, np.array(out)


def plain_spatial_spectrum(weight: np.ndarray) -> np.ndarray:
    """Singular values of the ``(C·kh) × (O·kw)`` reshaped kernel (the data-free spatial SVD)."""
    o, c, kh, kw = weight.shape
    return svd(np.asarray(weight, np.float64).transpose(1, 2, 0, 3).reshape(c * kh, o * kw))[1]
