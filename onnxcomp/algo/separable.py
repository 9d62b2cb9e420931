"""Depthwise-separable and grouped approximations of a dense conv kernel (the math of ``depthwise``).

:class:`Separable`: ``W [O, C, kh, kw]`` -> a depthwise kh×kw conv with depth multiplier ``M``
(``C -> C·M``, group = C) and a pointwise 1×1 conv (``C·M -> O``). Per input channel ``c`` the
slice ``W[:, c]`` (``O × kh·kw``) is replaced by its best rank-M approximation, so the result is
exact at ``M = min(O, kh·kw)``. With the patch covariance ``cov`` (see :mod:`onnxcomp.algo.lowrank`)
each slice is whitened by its channel's spatial covariance and the pointwise factor is then
refit by least squares (the output error, not the weight error, is minimised).

:func:`co_cluster`: a balanced co-clustering of output and input channels into ``G`` blocks that
keeps the most weight energy ``A[o, c] = Σ_ij W[o, c, i, j]²`` inside the diagonal blocks:
start from the spectral embedding of ``A`` (sorted leading singular vectors, cut into equal
chunks), then alternate optimal balanced assignments of the input channels given the output
blocks and vice versa (each one a linear assignment problem, solved exactly by
``scipy.optimize.linear_sum_assignment``) until the kept energy stops growing.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from onnxcomp.algo.linalg import refit, ridge_solve, svd, whitener


class Separable:
    """Per-input-channel rank-M factorization of a dense kernel."""

    def __init__(self, weight: np.ndarray, cov: np.ndarray | None = None) -> None:
        o, c, kh, kw = weight.shape
        self.shape, self.cov = weight.shape, cov
        self.w = np.asarray(weight, np.float64)
        k2 = kh * kw
        self.parts = []  # per channel: (U, s, Vt, L⁻¹ or None)
        for ch in range(c):
            s_c = self.w[:, ch].reshape(o, k2)
            linv = None
            if cov is not None:
                idx = slice(ch * k2, (ch + 1) * k2)
                lw, linv = whitener(cov[idx, idx])
                s_c = s_c @ lw
            u, s, vt = svd(s_c)
            self.parts.append((u, s, vt, linv))
        self.full = min(o, k2)

    def energy(self, multiplier: int) -> float:
        """Fraction of the (whitened, with cov) slice energy kept at multiplier ``M``."""
        kept = sum(float((s[:multiplier] ** 2).sum()) for _, s, _, _ in self.parts)
        total = sum(float((s ** 2).sum()) for _, s, _, _ in self.parts)
        return kept / total if total > 0 else 1.0

    def factors(self, multiplier: int) -> list[np.ndarray]:
        """``[depthwise [C·M, 1, kh, kw], pointwise [O, C·M, 1, 1]]``."""
        o, c, kh, kw = self.shape
        m = multiplier
        dw = np.zeros((c, m, kh * kw))
        pw = np.zeros((o, c, m))
        for ch, (u, s, vt, linv) in enumerate(self.parts):
            r = min(m, len(s))
            root = np.sqrt(s[:r])
            dw[ch, :r] = root[:, None] * vt[:r] @ (linv if linv is not None else np.eye(kh * kw))
            pw[:, ch, :r] = u[:, :r] * root[None, :]
        if self.cov is not None:  # refit the pointwise conv on the full patch covariance
            first = np.zeros((c * m, c * kh * kw))
            for ch in range(c):
                first[ch * m:(ch + 1) * m, ch * kh * kw:(ch + 1) * kh * kw] = dw[ch]
            pw = refit(self.w.reshape(o, -1), self.cov, first).reshape(o, c, m)
        return [dw.reshape(c * m, 1, kh, kw), pw.reshape(o, c * m, 1, 1)]

    def approx(self, factors: list[np.ndarray]) -> np.ndarray:
        o, c, kh, kw = self.shape
        dw, pw = factors
        m = len(dw) // c
        return np.einsum("ocm,cmij->ocij", pw.reshape(o, c, m), dw.reshape(c, m, kh, kw))


def _balanced(score: np.ndarray, groups: int) -> np.ndarray:
    """Assign rows of ``score [n, G]`` to groups, n/G each, maximising the total score."""
    n = len(score)
    size = n // groups
    cost = -np.repeat(score, size, axis=1)  # column g*size+k = slot k of group g
    rows, cols = linear_sum_assignment(cost)
    label = np.empty(n, np.int64)
    label[rows] = cols // size
    return label


def _chunks(values: np.ndarray, groups: int) -> np.ndarray:
    label = np.empty(len(values), np.int64)
    label[np.argsort(values, kind="stable")] = np.arange(len(values)) * groups // len(values)
    return label


def block_energy(energy: np.ndarray, out_label: np.ndarray, in_label: np.ndarray) -> float:
    """Fraction of ``energy [O, C]`` inside the blocks where output and input labels agree."""
    total = float(energy.sum())
    inside = float(energy[out_label[:, None] == in_label[None, :]].sum())
    return inside / total if total > 0 else 1.0


def co_cluster(energy: np.ndarray, groups: int, iters: int = 20) -> tuple[np.ndarray, np.ndarray, float]:
    """Balanced block labels ``(out_label [O], in_label [C], kept energy fraction)``.

    ``O`` and ``C`` must be divisible by ``groups``; labels are 0..G-1 with O/G and C/G members.
    """
    o, c = energy.shape
    if groups == 1:
        return np.zeros(o, np.int64), np.zeros(c, np.int64), 1.0
    a = np.asarray(energy, np.float64)
    d_o, d_c = a.sum(1) + 1e-30, a.sum(0) + 1e-30
    u, _, vt = svd(a / np.sqrt(d_o)[:, None] / np.sqrt(d_c)[None, :])
    starts = [_chunks(u[:, 1] if u.shape[1] > 1 else np.arange(o), groups),
              np.arange(o) * groups // o]  # the spectral cut, and the identity order as a fallback
    best = (starts[1], np.arange(c) * groups // c, -1.0)
    for out_label in starts:
        in_label = _balanced(_scores(a.T, out_label, groups), groups)
        kept = block_energy(a, out_label, in_label)
        for _ in range(iters):
            out_label = _balanced(_scores(a, in_label, groups), groups)
            in_label = _balanced(_scores(a.T, out_label, groups), groups)
            new = block_energy(a, out_label, in_label)
            if new <= kept + 1e-12:
                kept = max(kept, new)
                break
            kept = new
        if kept > best[2]:
            best = (out_label.copy(), in_label.copy(), kept)
    return best


def _scores(a: np.ndarray, other: np.ndarray, groups: int) -> np.ndarray:
    """score[i, g] = energy between row i of ``a`` and the columns labelled g."""
    return np.stack([a[:, other == g].sum(1) for g in range(groups)], axis=1)


def grouped_kernel(weight: np.ndarray, out_label: np.ndarray, in_label: np.ndarray, groups: int,
                   cov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kernel [O, C/G, kh, kw], out_perm, in_perm)`` of the grouped conv on permuted channels.

    The grouped conv reads input channels ``in_perm`` (block g = ``in_perm[g·C/G:(g+1)·C/G]``)
    and writes output channel ``out_perm[k]`` at position k. With ``cov`` each output row is
    refit by least squares on its block's input patches.
    """
    o, c, kh, kw = weight.shape
    out_perm = np.argsort(out_label, kind="stable")
    in_perm = np.argsort(in_label, kind="stable")
    cg, og, k2 = c // groups, o // groups, kh * kw
    w = np.asarray(weight, np.float64)
    kernel = np.empty((o, cg, kh, kw))
    for g in range(groups):
        outs, ins = out_perm[g * og:(g + 1) * og], in_perm[g * cg:(g + 1) * cg]
        block = w[np.ix_(outs, ins)]
        if cov is not None:
            idx = (ins[:, None] * k2 + np.arange(k2)[None, :]).reshape(-1)
            sub = cov[np.ix_(idx, idx)]
            cross = w[outs].reshape(og, -1) @ cov[:, idx]
            block = ridge_solve(cross, sub).reshape(og, cg, kh, kw)
        kernel[g * og:(g + 1) * og] = block
    return kernel, out_perm, in_perm


def grouped_approx(kernel: np.ndarray, out_perm: np.ndarray, in_perm: np.ndarray,
                   groups: int) -> np.ndarray:
    """The dense kernel the grouped conv (with its permutations) computes."""
    o, cg, kh, kw = kernel.shape
    og = o // groups
    dense = np.zeros((o, cg * groups, kh, kw))
    for g in range(groups):
        outs, ins = out_perm[g * og:(g + 1) * og], in_perm[g * cg:(g + 1) * cg]
        dense[np.ix_(outs, ins)] = kernel[g * og:(g + 1) * og]
    return dense
