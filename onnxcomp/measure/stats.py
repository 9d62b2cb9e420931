"""Layer-input statistics: second moments of im2col patches or matrix rows, with cross moments to
a reference model's inputs at the same samples and positions.

For a conv the statistic is the uncentred covariance ``E[p pᵀ]`` of its im2col patches (one
patch per output position, flattened in kernel order ``(c, i, j)``, per group); for a Gemm/MatMul
it is ``E[x xᵀ]`` over the rows that meet the weight. The inputs come batch by batch
(from the streaming engine, :mod:`onnxcomp.measure.engine`, or a capture), and a seeded random
subset of at most ``max_patches / samples`` output positions per sample is gathered, so memory
and time stay bounded on large feature maps. Only the ``D × D`` accumulators are kept (``D`` = patch size),
and each estimate is shrunk toward a scaled identity by ``D / (D + n)`` (see :func:`shrink`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnxcomp.graph.shapes import same_pads


@dataclass
class StatsRequest:
    """What to measure for one layer: its input tensor and how the weight meets it."""

    key: str
    tensor: str
    kind: str  # "conv" or "matrix"
    kernel: tuple[int, ...] = (1, 1)  # one entry per spatial axis (a 1-D conv: (1, k), height 1)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # ONNX order: every axis' begin, then every end (top, left, bottom, right)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    transposed: bool = False  # matrix input stored [K, M] (Gemm transA=1)
    seq_first: bool = False  # a recurrent op's input [seq, batch, features]: the samples are on axis 1
    auto_pad: str = "NOTSET"  # SAME_UPPER / SAME_LOWER: the pads follow from the input's size
    upsample: tuple[int, int] = (1, 1)  # a ConvTranspose's strides: zeros between the input's pixels


def conv_patches(x: np.ndarray, req: StatsRequest, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` random im2col patches per sample of ``x [N, C, H, W]`` (or ``[N, C, L]``, a
    1-D conv's input, as height 1; or ``[N, C, D, H, W]`` with a 3-D request): ``[S, C·prod(kernel)]``."""
    x = x[:, :, None, :] if x.ndim == 3 and len(req.kernel) == 2 else x
    if req.upsample != (1, 1):  # a ConvTranspose is the conv of its input spread out by its strides
        (uh, uw), (n, c, h, w) = req.upsample, x.shape
        spread = np.zeros((n, c, (h - 1) * uh + 1, (w - 1) * uw + 1), x.dtype)
        spread[:, :, ::uh, ::uw] = x
        x = spread
    nd, (n, c), size = len(req.kernel), x.shape[:2], x.shape[2:]
    pads = req.pads if not req.auto_pad.startswith("SAME") else \
        same_pads(size, req.kernel, req.strides, req.dilations, req.auto_pad)
    xp = np.pad(x, ((0, 0), (0, 0), *((pads[a], pads[nd + a]) for a in range(nd))))
    outs = [(size[a] + pads[a] + pads[nd + a] - req.dilations[a] * (req.kernel[a] - 1) - 1) // req.strides[a] + 1
            for a in range(nd)]
    dim = c * math.prod(req.kernel)
    if min(outs) <= 0:
        return np.zeros((0, dim), np.float64)
    total = math.prod(outs)
    per = min(count, total)
    picks = np.concatenate([rng.choice(total, per, replace=False) for _ in range(n)])
    batch = np.repeat(np.arange(n), per)
    at = np.unravel_index(picks, outs)
    # a strided window view gathered at the picked positions: [S, C, *kernel] in kernel order (2-4x faster
    # than indexing the padded input with broadcast index arrays)
    spans = tuple(d * (k - 1) + 1 for d, k in zip(req.dilations, req.kernel))
    win = np.lib.stride_tricks.sliding_window_view(xp, spans, axis=tuple(range(2, 2 + nd)))
    win = win[(Ellipsis, *(slice(None, None, d) for d in req.dilations))]
    patches = win[(batch, slice(None), *(p * s for p, s in zip(at, req.strides)))]
    return patches.reshape(len(batch), dim)


def matrix_rows(x: np.ndarray, req: StatsRequest, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` random input rows per sample (the vectors the weight multiplies)."""
    if req.transposed:
        x = np.swapaxes(x, -1, -2)
    n = x.shape[0] if x.ndim > 2 else 1
    rows = x.reshape(n, -1, x.shape[-1])
    per = min(count, rows.shape[1])
    picks = [row[rng.choice(len(row), per, replace=False)] for row in rows]
    return np.concatenate(picks)


@dataclass
class LayerStats:
    """Second moments of one layer's (group's) input vectors ``x`` (``D × D``, float64, shrunk).

    ``cov = E[x xᵀ]``. With a reference model (sequential fitting) ``x`` comes from the model
    being rewritten and ``x_ref`` from the original at the same samples and positions:
    ``cross = E[x_ref xᵀ]`` and ``ref = E[x_ref x_refᵀ]``.
    """

    cov: np.ndarray
    cross: np.ndarray | None = None
    ref: np.ndarray | None = None
    n: int = 0

    def target(self, weight: np.ndarray) -> np.ndarray:
        """The weight to approximate on ``x``: ``W`` itself, or with a reference the least-squares
        map ``W cross cov⁻¹`` that best reproduces the original outputs ``W x_ref`` from ``x``."""
        if self.cross is None:
            return weight
        from onnxcomp.algo.linalg import ridge_solve
        from onnxcomp.algo.numeric import keep_finite
        w = np.asarray(weight, np.float64).reshape(len(weight), -1)
        with np.errstate(over="ignore", invalid="ignore"):
            solved = ridge_solve(w @ self.cross, self.cov) if np.isfinite(w).all() else w
        return keep_finite(solved, w).reshape(weight.shape)


def _draw(x: np.ndarray, req: StatsRequest, count: int, rng: np.random.Generator) -> np.ndarray:
    p = conv_patches(x, req, count, rng) if req.kind == "conv" else matrix_rows(x, req, count, rng)
    return np.ascontiguousarray(p, np.float32)


def _grams(a: np.ndarray, b: np.ndarray, group: int) -> list[np.ndarray]:
    """Per group ``aᵀ b`` (float32 BLAS, float64 result)."""
    pa = np.split(a, group, axis=1) if group > 1 else [a]
    pb = np.split(b, group, axis=1) if group > 1 else [b]
    return [(x.T @ y).astype(np.float64) for x, y in zip(pa, pb)]


def _finish(acc: dict[str, list[np.ndarray]], n: int, spread: list[float] | None = None, units: int = 0,
            sums: dict[str, list[np.ndarray]] | None = None) -> list[LayerStats] | None:
    """The shrunk moments per group; None when any is not finite (inputs holding NaN/Inf or
    overflowing squares): the layer is then solved without statistics, never on NaN. With
    ``spread`` (per group, the summed ``||M_j||²`` of ``units`` independent samples' own moments)
    and ``sums`` (the inputs' sums, ``x`` and the reference's ``ref``) the intensity is
    Ledoit-Wolf's on the centred moments, else ``D / (D + n)``."""
    if not all(np.isfinite(m).all() for v in acc.values() for m in v):
        return None
    out = []
    for g in range(len(acc["cov"])):
        mom = {k: v[g] / max(n, 1) for k, v in acc.items()}
        if spread is None or sums is None:
            out.append(LayerStats(shrink(mom["cov"], n), shrink(mom["cross"], n) if "cross" in mom else None,
                                  shrink(mom["ref"], n) if "ref" in mom else None, n))
            continue
        mu, s0 = sums["x"][g] / max(n, 1), sums["shift"][g]
        mr = sums["ref"][g] / max(n, 1) if "ref" in sums else None
        about = mom["cov"] - np.outer(s0, mu) - np.outer(mu, s0) + np.outer(s0, s0)  # E[(x-s0)(x-s0)ᵀ]
        a = ledoit_wolf(about, mu - s0, spread[g], units)
        out.append(LayerStats(_shrink_centred(mom["cov"], mu, mu, a),
                              _shrink_centred(mom["cross"], mr, mu, a) if "cross" in mom else None,
                              _shrink_centred(mom["ref"], mr, mr, a) if "ref" in mom else None, n))
    return out


def ledoit_wolf(cov: np.ndarray, mean: np.ndarray, spread: float, units: int) -> float:
    """Ledoit-Wolf shrinkage intensity of the second moment ``cov`` (the mean of ``units``
    independent samples' moments ``M_j``, ``spread = Σ_j ||M_j||²``; ``mean`` the inputs' mean;
    all taken about a point near the mean, so the spread is not the mean's own noise times it):
    the estimate's variance ``(Σ_j ||M_j||² / N - ||cov||²) / N`` over the distance of the
    centred covariance ``cov - mean meanᵀ`` to ``(its trace / D) I``, clipped to [0, 1] (Ledoit
    & Wolf 2004). The mean is estimated far better than the spread around it, so only the
    centred part is shrunk: toward the identity a large mean (post-ReLU features) would look
    like structure and hide the noise in the small directions. A sample's positions (patches,
    tokens) are one unit, not independent vectors: they are correlated, and counting them apart
    would shrink too little."""
    d, n = len(cov), max(units, 1)
    c = cov - np.outer(mean, mean)
    dist = float(((c - np.trace(c) / d * np.eye(d)) ** 2).sum())
    var = max(0.0, (spread / n - float((cov * cov).sum())) / n)
    return min(var, dist) / dist if dist > 0 else 1.0


def _shrink_centred(m: np.ndarray, u: np.ndarray | None, v: np.ndarray, a: float) -> np.ndarray:
    """``m = E[u' v'ᵀ]`` with its centred part ``m - u vᵀ`` shrunk by ``a`` toward a scaled identity."""
    c = m - np.outer(u if u is not None else v, v)
    return m - a * (c - np.trace(c) / len(c) * np.eye(len(c)))


def _spread(p: np.ndarray, samples: int, group: int) -> tuple[list[float], list[np.ndarray] | None]:
    """Per group ``Σ_j ||M_j||²`` of the per-sample moments ``M_j = P_jᵀ P_j / m`` (``p`` holds
    ``samples`` blocks of ``m`` rows), from whichever of ``P_j P_jᵀ`` / ``P_jᵀ P_j`` is smaller
    (the two have the same Frobenius norm), one sample at a time; and, when that was
    ``P_jᵀ P_j``, their sums (the groups' Grams ``pᵀ p``, so they are not computed twice)."""
    blocks = p.reshape(samples, -1, p.shape[1])
    m = blocks.shape[1]
    spread, grams = [], []
    for b in (np.split(blocks, group, axis=2) if group > 1 else [blocks]):
        wide = b.shape[2] > m
        norm, gram = 0.0, None if wide else np.zeros((b.shape[2], b.shape[2]))
        for pj in b:
            per = pj @ pj.T if wide else pj.T @ pj
            norm += float(np.square(per, dtype=np.float64).sum())
            if gram is not None:
                gram += per
        spread.append(norm / (m * m))
        grams.append(gram)
    return spread, (None if any(g is None for g in grams) else grams)


def shrink(cov: np.ndarray, n: int, a: float | None = None) -> np.ndarray:
    """Shrink a covariance estimated from ``n`` vectors toward a scaled identity.

    ``(1 - a) cov + a (tr cov / D) I`` with ``a = D / (D + n)``: with few samples (``n`` not much
    larger than the dimension ``D``, e.g. a Gemm after global pooling) the raw estimate has
    unseen directions that whitening would discard; the shrunk one falls back smoothly toward
    the plain (data-free) SVD, which is the ``a = 1`` limit.
    """
    d = len(cov)
    a = d / (d + max(n, 0)) if a is None else a
    return (1.0 - a) * cov + a * (np.trace(cov) / max(d, 1)) * np.eye(d)
    # (a cross moment E[x_ref xᵀ] is shrunk the same way, toward "no drift": x = x_ref)


def accumulate(xs: Sequence[np.ndarray], refs: Sequence[np.ndarray] | None, req: StatsRequest, *, samples: int,
               max_patches: int = 16384, seed: int = 0, with_ref: bool = False,
               ledoit: bool = False) -> list[LayerStats] | None:
    """Per-group :class:`LayerStats` of one layer's input batches ``xs`` (with the reference's
    ``refs`` at the same samples and positions, for the cross moments; ``with_ref`` also
    ``E[x_ref x_refᵀ]``, which only the low-rank error model reads), at most ``max_patches /
    samples`` positions per sample. ``ledoit``: shrunk by the Ledoit-Wolf intensity measured
    over the samples (see :func:`ledoit_wolf`) instead of ``D / (D + n)``."""
    rng = np.random.default_rng(seed)
    per_sample = max(1, math.ceil(max_patches / max(samples, 1)))
    acc: dict[str, list[np.ndarray]] = {}
    count = units = 0
    spread: list[float] | None = None
    sums: dict[str, list[np.ndarray]] = {}
    shift: np.ndarray | None = None
    for b, x in enumerate(xs):
        state = rng.bit_generator.state
        x = np.asarray(x, np.float32)
        x = np.swapaxes(x, 0, 1) if req.seq_first else x
        p = _draw(x, req, per_sample, rng)
        cov = None
        if ledoit and len(p):  # a 2-D matrix input: each row is a sample of its own
            n_units = len(p) if req.kind == "matrix" and x.ndim <= 2 else len(x)
            if shift is None:  # the spread is taken about the first batch's mean
                shift = p.mean(axis=0, dtype=np.float64).astype(np.float32)
                sums["shift"] = _col_sums(shift[None], req.group)
            ps = p - shift
            part, about = _spread(ps, n_units, req.group)
            spread = part if spread is None else [a + c for a, c in zip(spread, part)]
            units += n_units
            _add(sums, "x", _col_sums(p, req.group))
            if about is not None:  # Σ x xᵀ from Σ (x - s)(x - s)ᵀ: no second product
                cov = [g + np.outer(c, s0) + np.outer(s0, c) + len(p) * np.outer(s0, s0)
                       for g, c, s0 in zip(about, _col_sums(ps, req.group), sums["shift"])]
        parts = {"cov": cov if cov is not None else _grams(p, p, req.group)}
        if refs is not None:
            rng.bit_generator.state = state  # the same samples and positions in the reference
            q = np.asarray(refs[b], np.float32)
            q = _draw(np.swapaxes(q, 0, 1) if req.seq_first else q, req, per_sample, rng)
            parts["cross"] = _grams(q, p, req.group)
            if ledoit and len(q):
                _add(sums, "ref", _col_sums(q, req.group))
            if with_ref:
                parts["ref"] = _grams(q, q, req.group)
        for name, grams in parts.items():
            acc[name] = grams if name not in acc else [a + g for a, g in zip(acc[name], grams)]
        count += len(p)
    return _finish(acc, count, spread, units, sums) if acc else None


def _col_sums(p: np.ndarray, group: int) -> list[np.ndarray]:
    return [c.sum(axis=0, dtype=np.float64) for c in (np.split(p, group, axis=1) if group > 1 else [p])]


def _add(into: dict[str, list[np.ndarray]], key: str, parts: list[np.ndarray]) -> None:
    into[key] = parts if key not in into else [a + b for a, b in zip(into[key], parts)]
