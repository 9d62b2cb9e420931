"""Low-rank factorizations of one conv kernel or one weight matrix (the math of ``factorize``).

Each class takes one group's kernel (``[O, C, kh, kw]`` for convs, ``[O, K]`` with ``y = W x`` for
matrices) and optionally the layer-input covariance ``cov`` (uncentred ``E[p pᵀ]`` over im2col
patches flattened in kernel order ``(c, i, j)``, or over input rows for matrices). Without
``cov`` the factors are the plain truncated SVD / HOSVD; with it they minimise the *output*
error ``tr(ΔW cov ΔWᵀ)`` instead of the weight error:

- :class:`MatrixSVD` (Gemm, MatMul, and any conv as ``[O, C·kh·kw]``): SVD of ``W L`` where
  ``cov = L Lᵀ`` (exactly optimal for the linear output).
- :class:`SpatialSVD` (k×k -> k×1 then 1×k, Jaderberg/Tai): SVD of the kernel reshaped
  ``(C·kh) × (O·kw)``; data-aware: whitened by the vertical-patch covariance, then the 1×k
  factor is refit by least squares on the full patch covariance.
- :class:`Tucker2` (1×1 -> k×k core -> 1×1): HOSVD plus a few HOOI sweeps; data-aware: the
  input projection from the channel-whitened mode-1 unfolding, the output basis from the output
  covariance ``W cov Wᵀ``, and the core refit by least squares.

``spectrum`` gives the singular values that ``--energy`` ranks are chosen from; ``factors(rank)``
returns the kernels of the new nodes in graph order; ``approx(factors)`` rebuilds ``W'``.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.algo.linalg import interruptible, refit, svd, whitener


def _root(s: np.ndarray, rank: int) -> np.ndarray:
    return np.sqrt(np.maximum(s[:rank], 0.0))


class MatrixSVD:
    """``W [O, D] ≈ B A`` with ``A [R, D]`` (first factor) and ``B [O, R]`` (second)."""

    def __init__(self, weight: np.ndarray, cov: np.ndarray | None = None) -> None:
        self.shape = weight.shape
        w = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
        self.linv = None
        if cov is not None:
            lw, self.linv = whitener(cov)
            w = w @ lw
        self.u, self.spectrum, self.vt = svd(w)
        self.full = len(self.spectrum)

    def factors(self, rank: int) -> list[np.ndarray]:
        r = _root(self.spectrum, rank)
        first = r[:, None] * self.vt[:rank]
        if self.linv is not None:
            first = first @ self.linv
        second = self.u[:, :rank] * r[None, :]
        return [first.reshape((rank,) + tuple(self.shape[1:])), second]

    @staticmethod
    def approx(factors: list[np.ndarray]) -> np.ndarray:
        first, second = factors
        return (second @ first.reshape(len(first), -1)).reshape((len(second),) + first.shape[1:])


def _vertical_cov(cov: np.ndarray, c: int, kh: int, kw: int) -> np.ndarray:
    """Covariance of the (c, i) vertical patches, averaged over the kw horizontal offsets."""
    six = cov.reshape(c, kh, kw, c, kh, kw)
    return np.einsum("aibcjb->aicj", six).reshape(c * kh, c * kh) / kw


def _channel_cov(cov: np.ndarray, c: int, k2: int) -> np.ndarray:
    """Covariance of the input channels, averaged over the kernel offsets."""
    four = cov.reshape(c, k2, c, k2)
    return np.einsum("aibi->ab", four) / k2


class SpatialSVD:
    """``W [O, C, kh, kw] ≈ Σ_r H[o, r, j] V[r, c, i]``: a kh×1 conv (C->R) then a 1×kw conv (R->O)."""

    def __init__(self, weight: np.ndarray, cov: np.ndarray | None = None) -> None:
        o, c, kh, kw = weight.shape
        self.shape, self.cov = weight.shape, cov
        self.w = np.asarray(weight, np.float64)
        m = self.w.transpose(1, 2, 0, 3).reshape(c * kh, o * kw)
        self.linv = None
        if cov is not None:
            lv, self.linv = whitener(_vertical_cov(cov, c, kh, kw))
            m = lv @ m  # lv is symmetric: Lᵀ M
        self.u, self.spectrum, self.vt = svd(m)
        self.full = len(self.spectrum)

    def vertical(self, rank: int) -> np.ndarray:
        """The k×1 factor ``[R, C, kh]`` (its first rows are the factor of every lower rank)."""
        o, c, kh, kw = self.shape
        vert = self.u[:, :rank] * _root(self.spectrum, rank)[None, :]  # [(c, i), R]
        if self.linv is not None:
            vert = self.linv @ vert
        return vert.T.reshape(rank, c, kh)

    def factors(self, rank: int) -> list[np.ndarray]:
        o, c, kh, kw = self.shape
        r = _root(self.spectrum, rank)
        v = self.vertical(rank)[..., None]
        if self.cov is None:
            h = (r[:, None] * self.vt[:rank]).reshape(rank, o, kw).transpose(1, 0, 2)
        else:  # least-squares refit of the 1×k factor on the full patch covariance
            first = np.einsum("rci,jk->rjcik", v[..., 0], np.eye(kw)).reshape(rank * kw, c * kh * kw)
            h = refit(self.w.reshape(o, -1), self.cov, first).reshape(o, rank, kw)
        return [v, h[:, :, None, :]]

    @staticmethod
    def approx(factors: list[np.ndarray]) -> np.ndarray:
        v, h = factors
        return np.einsum("orj,rci->ocij", h[:, :, 0, :], v[..., 0])


class Tucker2:
    """``W ≈ U_out · G · U_in``: 1×1 conv (C->R1), k×k core (R1->R2), 1×1 conv (R2->O)."""

    def __init__(self, weight: np.ndarray, cov: np.ndarray | None = None, iters: int = 2) -> None:
        o, c, kh, kw = weight.shape
        self.shape, self.cov, self.iters = weight.shape, cov, iters
        self.w = np.asarray(weight, np.float64)
        mode1 = self.w.transpose(1, 0, 2, 3).reshape(c, -1)
        if cov is None:
            self.u0, s0, _ = svd(self.w.reshape(o, -1))
            self.u1, s1, _ = svd(mode1)
            self.lcinv = None
        else:
            lc, self.lcinv = whitener(_channel_cov(cov, c, kh * kw))
            self.u1, s1, _ = svd(lc @ mode1)
            wf = self.w.reshape(o, -1)
            m = wf @ cov @ wf.T
            lam, self.u0 = interruptible(np.linalg.eigh, m, size=m.size)
            order = np.argsort(lam)[::-1]
            s0, self.u0 = np.sqrt(np.maximum(lam[order], 0.0)), self.u0[:, order]
        self.spectra = (s1, s0)  # input side (R1), output side (R2)
        self.full = (c, o)

    def projections(self, r1: int, r2: int) -> tuple[np.ndarray, np.ndarray]:
        """The input projection ``[R1, C]`` and output directions ``[O, R2]`` (before HOOI sweeps)."""
        first = self.u1[:, :r1].T
        return (first if self.lcinv is None else first @ self.lcinv), self.u0[:, :r2]

    def factors(self, ranks: tuple[int, int]) -> list[np.ndarray]:
        o, c, kh, kw = self.shape
        # no rank beyond what each side has (a [1, 3, 1, 2] kernel unfolds to rank 2 on its input side)
        r1, r2 = min(ranks[0], self.u1.shape[1]), min(ranks[1], self.u0.shape[1])
        if self.cov is None:
            u_in, u_out = self.u1[:, :r1], self.u0[:, :r2]
            for _ in range(self.iters):  # HOOI sweeps
                u_in = svd(np.einsum("ocij,ob->cbij", self.w, u_out).reshape(c, -1))[0][:, :r1]
                u_out = svd(np.einsum("ocij,ca->oaij", self.w, u_in).reshape(o, -1))[0][:, :r2]
            core = np.einsum("ocij,ob,ca->baij", self.w, u_out, u_in, optimize=True)
            first = u_in.T
        else:
            first = self.u1[:, :r1].T @ self.lcinv  # [R1, C]
            u_out = self.u0[:, :r2]
            expand = np.kron(first, np.eye(kh * kw))  # [(a, i, j), (c, i, j)]
            second = refit(self.w.reshape(o, -1), self.cov, expand)  # [O, R1·kh·kw]
            core = (u_out.T @ second).reshape(r2, r1, kh, kw)
        return [first[:, :, None, None], core, u_out[:, :, None, None]]

    @staticmethod
    def approx(factors: list[np.ndarray]) -> np.ndarray:
        first, core, last = factors
        return np.einsum("ob,baij,ac->ocij", last[:, :, 0, 0], core, first[:, :, 0, 0], optimize=True)
