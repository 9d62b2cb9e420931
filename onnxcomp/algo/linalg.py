"""Small dense linear-algebra helpers for the low-rank passes: SVD ranks, whitening, least squares.

Everything is numpy/scipy on float64 copies. Conventions: a linear map is ``y = W x`` with ``W``
of shape ``[out, in]``; an input covariance is the *uncentred* second moment ``E[x xᵀ]`` (the
output error of a replaced weight ``W'`` is ``E||(W - W') x||² = tr(ΔW Σ ΔWᵀ)``, bias untouched).
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

DAMP = 1e-6  # relative ridge added to covariances (fraction of their mean eigenvalue)
INTERRUPTIBLE_ELEMENTS = 1 << 18  # decompositions of bigger matrices run in a worker thread
_RUNNING: set[threading.Event] = set()  # the "done" events of calls still running in workers


def running() -> bool:
    """Whether a decomposition abandoned by an interrupt is still running: the process must then
    end with ``os._exit`` (OpenBLAS's exit handler would wait for it forever)."""
    return any(not done.is_set() for done in _RUNNING)


def interruptible(fn, *args, size: int = 0, **kwargs):
    """``fn(*args, **kwargs)``; for inputs of ``size`` or more elements in a worker thread.

    One LAPACK call on a big matrix (the SVD of a 200 MB weight) runs for minutes, and Python
    handles signals only between bytecodes of the main thread: Ctrl-C and SIGTERM would wait for
    it. In a (daemon) worker the main thread keeps waiting in short joins, so an interrupt ends
    the command at once; the abandoned computation dies with the process.
    """
    if size < INTERRUPTIBLE_ELEMENTS or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    box: dict = {}
    done = threading.Event()  # waited on, not Thread.join: an interrupted join marks a running
    # thread as stopped (CPython before 3.13), and running() must stay true for it

    def work() -> None:
        try:
            box["out"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["err"] = exc
        finally:
            done.set()

    _RUNNING.add(done)
    threading.Thread(target=work, name="onnxcomp-linalg", daemon=True).start()
    while not done.wait(0.05):
        pass
    _RUNNING.discard(done)
    if "err" in box:
        raise box["err"]
    return box["out"]


def blas_threads(n: int = 1):
    """Limit BLAS/LAPACK threads inside a ``with`` block.

    The matrices here are small (at most a few thousand rows); on a loaded 2-core machine
    multi-threaded OpenBLAS ran eigh/SVD of such matrices about 10x slower than one thread.
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64: ``U, s, Vt`` with ``matrix = U diag(s) Vt``."""
    m = np.asarray(matrix, np.float64)
    try:
        return interruptible(np.linalg.svd, m, full_matrices=False, size=m.size)
    except np.linalg.LinAlgError:  # rare LAPACK gesdd failure: fall back to the slower gesvd
        import scipy.linalg  # imported when used: start-up of the commands that never solve

        return interruptible(scipy.linalg.svd, m, full_matrices=False, lapack_driver="gesvd", size=m.size)


def energy_curve(s: np.ndarray) -> np.ndarray:
    """Fraction of the squared singular values kept by ranks 1, 2, ... (last entry 1.0)."""
    e = np.cumsum(np.asarray(s, np.float64) ** 2)
    return e / e[-1] if e.size and e[-1] > 0 else np.ones_like(e)


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """Smallest rank whose squared singular values keep at least ``energy`` of the total."""
    curve = energy_curve(s)
    return int(min(len(curve), np.searchsorted(curve, energy - 1e-12) + 1)) if len(curve) else 1


def round_rank(rank: int, multiple: int, full: int) -> int:
    """Round ``rank`` up to a multiple of ``multiple``, within 1..full."""
    multiple = max(1, int(multiple))
    r = int(math.ceil(max(1, rank) / multiple) * multiple)
    return int(max(1, min(r, full)))


def largest_rank(cost, budget: float, full: int) -> int:
    """The largest rank in 1..full whose ``cost(rank)`` stays within ``budget`` (1 if none does).

    ``cost`` must be non-decreasing in the rank (bisection).
    """
    lo, hi = 1, full
    if cost(lo) > budget:
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def symmetric(cov: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``cov = Q diag(lam) Qᵀ`` with eigenvalues floored at a small ridge."""
    c = np.asarray(cov, np.float64)
    c = 0.5 * (c + c.T)
    lam, q = interruptible(np.linalg.eigh, c, size=c.size)
    floor = damp * max(float(np.mean(np.abs(lam))), 1e-30)
    return np.maximum(lam, floor), q


def whitener(cov: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """``(L, L⁻¹)`` with ``cov ≈ L Lᵀ`` (symmetric square root, ridge-damped).

    The best rank-r approximation of ``W`` under the output error ``tr(ΔW cov ΔWᵀ)`` is
    ``[W L]_r L⁻¹`` (Eckart–Young on the whitened matrix).
    """
    lam, q = symmetric(cov, damp)
    root = np.sqrt(lam)
    return (q * root) @ q.T, (q / root) @ q.T


def ridge_solve(cross: np.ndarray, gram: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """``X = cross · gram⁻¹`` (the least-squares map) with a small relative ridge on ``gram``."""
    g = np.asarray(gram, np.float64)
    g = 0.5 * (g + g.T)
    ridge = damp * max(float(np.trace(g)) / max(len(g), 1), 1e-30)
    g = g + ridge * np.eye(len(g))
    import scipy.linalg  # imported when used: start-up of the commands that never solve

    try:
        return interruptible(scipy.linalg.solve, g, np.asarray(cross, np.float64).T, assume_a="pos", size=g.size).T
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return interruptible(np.linalg.lstsq, g, np.asarray(cross, np.float64).T, rcond=None, size=g.size)[0].T


def refit(weight: np.ndarray, cov: np.ndarray, first: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """The second factor ``B`` minimising ``E||W x - B (F x)||²`` for a fixed first factor ``F``.

    ``weight`` [out, D], ``cov`` [D, D] (E[x xᵀ]), ``first`` [r, D]: ``B = W Σ Fᵀ (F Σ Fᵀ)⁻¹``.
    """
    w, c, f = (np.asarray(a, np.float64) for a in (weight, cov, first))
    cf = c @ f.T
    return ridge_solve(w @ cf, f @ cf, damp)


def top_eigvecs(matrix: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading eigenvectors (columns) of a symmetric matrix."""
    lam, q = interruptible(np.linalg.eigh, 0.5 * (matrix + matrix.T), size=np.size(matrix))
    order = np.argsort(lam)[::-1][:k]
    return q[:, order]


def weight_energy(weight: np.ndarray, approx: np.ndarray) -> float:
    """Retained energy ``1 - ||W - W'||² / ||W||²`` (1.0 for an all-zero weight)."""
    w = np.asarray(weight, np.float64)
    total = float((w * w).sum())
    if total == 0:
        return 1.0
    d = w - np.asarray(approx, np.float64)
    return 1.0 - float((d * d).sum()) / total


def output_error(weight: np.ndarray, approx: np.ndarray, cov: np.ndarray, cross: np.ndarray | None = None,
                 ref: np.ndarray | None = None) -> float:
    """Relative output error ``sqrt(E||W x_ref - W' x||² / E||W x_ref||²)``, W flattened to [out, D].

    Without ``cross``/``ref`` the inputs are the same (``x = x_ref``, ``E[x xᵀ] = cov``):
    ``sqrt(tr(ΔW cov ΔWᵀ) / tr(W cov Wᵀ))``. With them ``cross = E[x_ref xᵀ]`` and
    ``ref = E[x_ref x_refᵀ]`` (the inputs drifted because earlier layers were rewritten).
    """
    w = np.asarray(weight, np.float64).reshape(len(weight), -1)
    a = np.asarray(approx, np.float64).reshape(w.shape)
    if cross is None:
        d = w - a
        ref_e, err = float(np.sum((w @ cov) * w)), float(np.sum((d @ cov) * d))
    else:
        ref_e = float(np.sum((w @ ref) * w))
        err = ref_e - 2.0 * float(np.sum((w @ cross) * a)) + float(np.sum((a @ cov) * a))
    return math.sqrt(max(err, 0.0) / ref_e) if ref_e > 0 else 0.0
