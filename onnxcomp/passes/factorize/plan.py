"""Per-layer planning for ``factorize``: costs of each method, rank choice, and the auto rule.

Costs are MACs per sample at the layer's shapes (params when a shape is unknown), summed over
the uses of a shared weight. For a conv with input ``[C, H, W]``, output ``[O, Ho, Wo]``, ``g``
groups (``Cg = C/g``) and kernel ``kh×kw``:

- original:  ``O·Ho·Wo·Cg·kh·kw``
- spatial R: ``g·R·Ho·W·Cg·kh + O·Ho·Wo·R·kw`` (the k×1 conv runs at the input width)
- tucker2 (R1, R2): ``g·R1·H·W·Cg + g·R2·Ho·Wo·R1·kh·kw + O·Ho·Wo·R2``
- svd R:     ``g·R·Ho·Wo·Cg·kh·kw + O·Ho·Wo·R`` (k×k conv to R channels, then 1×1)
- Gemm/MatMul ``[M, K] x [K, N]``: ``M·K·N`` -> ``M·R·(K + N)``

Ranks: ``--rank`` as given; ``--energy`` the smallest rank keeping that fraction of the squared
singular values (of the whitened matrix when data-aware; the largest over groups);
``--ratio`` the largest rank whose cost stays within ratio × the original cost. Then rounded up
to a multiple of ``round_to`` and capped at full rank. Tucker-2 ranks scale together:
``R2 = round(R1 · Og / Cg)`` (``--rank R`` sets both to R).

``auto`` rule (per layer, among the methods that apply: k×k convs spatial/tucker2/svd, 1×1 convs
and Gemm/MatMul svd): with a target ratio (``--ratio``, or the default 0.5) the lowest error at
that ratio wins; with ``--energy`` the lowest cost at that energy; with ``--rank`` the lowest
error at that rank. The error is the estimated relative output error with calibration data,
else the relative weight error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.algo.linalg import largest_rank, output_error, rank_for_energy, round_rank, weight_energy
from onnxcomp.algo.lowrank import MatrixSVD, SpatialSVD, Tucker2
from onnxcomp.passes.rewrite import Layer

CONV_METHODS = ("spatial", "tucker2", "svd")


@dataclass
class Candidate:
    """One way to factorize a layer: method, ranks, factors per group, cost and error."""

    method: str
    ranks: tuple[int, ...]
    factors: list[list[np.ndarray]]  # per group, kernels of the new nodes in graph order
    macs: int | None
    params: int
    energy: float
    out_error: float | None = None
    detail: dict = field(default_factory=dict)

    @property
    def error(self) -> float:
        return self.out_error if self.out_error is not None else math.sqrt(max(0.0, 1.0 - self.energy))


def applicable(layer: Layer, method: str) -> str | None:
    """Why ``method`` cannot rewrite ``layer`` (None when it can)."""
    if layer.kind != "conv":
        return None if method == "svd" else f"{method} applies to convs only (this is a {layer.kind})"
    kh, kw = layer.geom.kernel
    if layer.group > 1 and layer.kernel.shape[1] == 1:
        return "depthwise conv (one input channel per group): nothing to factorize"
    if method == "spatial" and (kh == 1 or kw == 1):
        return f"{kh}x{kw} kernel: nothing to split spatially"
    if method == "tucker2" and kh * kw == 1:
        return "1x1 kernel: use svd"
    return None


def candidates_for(layer: Layer, method: str) -> list[str]:
    if method != "auto":
        return [method]
    if layer.kind == "conv" and layer.geom.kernel != (1, 1):
        return list(CONV_METHODS)
    return ["svd"]


def _conv_dims(layer: Layer, i: int):
    _, c, h, w = layer.lifted(layer.in_shapes[i])
    _, o, ho, wo = layer.lifted(layer.out_shapes[i])
    return c, h, w, o, ho, wo


def cost(layer: Layer, method: str | None, ranks: tuple[int, ...] = ()) -> tuple[int | None, int]:
    """(MACs per sample summed over uses or None, params) of the original or of a rewrite."""
    k = layer.kernel
    g = layer.group
    if layer.kind == "conv":
        o, cg, kh, kw = k.shape
        params = {None: k.size, "spatial": lambda r: g * r * cg * kh + o * r * kw,
                  "tucker2": lambda r1, r2: g * r1 * cg + g * r2 * r1 * kh * kw + o * r2,
                  "svd": lambda r: g * r * cg * kh * kw + o * r}[method]
    else:
        o, kk = k.shape
        params = {None: k.size, "svd": lambda r: r * (kk + o)}[method]
    params = params if method is None else params(*ranks)
    if not layer.shapes_known:
        return None, int(params)
    macs = 0
    for i in range(len(layer.nodes)):
        if layer.kind == "conv":
            c, h, w, o, ho, wo = _conv_dims(layer, i)
            cg, kh, kw = k.shape[1:]
            out = o * ho * wo
            if method is None:
                macs += out * cg * kh * kw
            elif method == "spatial":
                macs += g * ranks[0] * ho * w * cg * kh + out * ranks[0] * kw
            elif method == "tucker2":
                r1, r2 = ranks
                macs += g * r1 * h * w * cg + g * r2 * ho * wo * r1 * kh * kw + out * r2
            else:
                macs += g * ranks[0] * ho * wo * cg * kh * kw + out * ranks[0]
        else:
            rows = int(np.prod(layer.out_shapes[i][:-1], dtype=np.int64))
            kk, n = k.shape[1], k.shape[0]
            macs += rows * kk * n if method is None else rows * ranks[0] * (kk + n)
    return int(macs), int(params)


def _groups(layer: Layer) -> list[np.ndarray]:
    g = layer.group
    return np.split(layer.kernel, g, axis=0) if g > 1 else [layer.kernel]


def _makers(method: str, layer: Layer, stats: list | None, hooi_iters: int):
    """One factorizer per group, on the weight to approximate (see LayerStats.target)."""
    parts = _groups(layer)
    pairs = [(s.target(w), s.cov) for w, s in zip(parts, stats)] if stats else [(w, None) for w in parts]
    if method == "spatial":
        return [SpatialSVD(w, c) for w, c in pairs]
    if method == "tucker2":
        return [Tucker2(w, c, iters=hooi_iters) for w, c in pairs]
    return [MatrixSVD(w, c) for w, c in pairs]


def _budget(layer: Layer, ratio: float) -> tuple[int, float]:
    """(index into cost(): 0 MACs or 1 params, allowed cost) for a target ratio."""
    macs, params = cost(layer, None)
    return (0, ratio * macs) if macs is not None else (1, ratio * params)


def choose_ranks(method: str, layer: Layer, makers: list, config) -> tuple[int, ...]:
    """Ranks for ``method`` from --rank / --energy / --ratio, rounded up and capped."""
    step = config.round_to
    if method == "tucker2":
        c_full, o_full = makers[0].full
        if config.rank is not None:
            r1 = r2 = config.rank
        elif config.energy is not None:
            r1 = max(rank_for_energy(m.spectra[0], config.energy) for m in makers)
            r2 = max(rank_for_energy(m.spectra[1], config.energy) for m in makers)
        else:
            def pair(r):
                return r, max(1, min(o_full, round(r * o_full / c_full)))
            which, budget = _budget(layer, config.target_ratio)
            r1, r2 = pair(largest_rank(lambda r: cost(layer, "tucker2", pair(r))[which], budget, c_full))
        return round_rank(r1, step, c_full), round_rank(r2, step, o_full)
    full = makers[0].full
    if config.rank is not None:
        r = config.rank
    elif config.energy is not None:
        r = max(rank_for_energy(m.spectrum, config.energy) for m in makers)
    else:
        which, budget = _budget(layer, config.target_ratio)
        r = largest_rank(lambda q: cost(layer, method, (q,))[which], budget, full)
    return (round_rank(r, step, full),)


def evaluate(method: str, layer: Layer, stats: list | None, config, ranks: tuple[int, ...] | None = None) -> Candidate:
    """Factorize ``layer`` with ``method`` at ``ranks`` (default: the configured rank); cost and error.

    ``stats``: one :class:`onnxcomp.measure.stats.LayerStats` per group (None: data-free).
    """
    makers = _makers(method, layer, stats, config.hooi_iters)
    ranks = tuple(ranks) if ranks is not None else choose_ranks(method, layer, makers, config)
    arg = ranks if method == "tucker2" else ranks[0]
    factors = [m.factors(arg) for m in makers]
    approx = np.concatenate([m.approx(f) for m, f in zip(makers, factors)], axis=0)
    macs, params = cost(layer, method, ranks)
    out_err = None
    if stats:
        parts = np.split(approx, layer.group, axis=0) if layer.group > 1 else [approx]
        errs = [output_error(w, a, s.cov, s.cross, s.ref) ** 2
                for w, a, s in zip(_groups(layer), parts, stats)]
        out_err = math.sqrt(sum(errs) / len(errs))
    return Candidate(method, ranks, factors, macs, params, weight_energy(layer.kernel, approx), out_err)


def pick(cands: list[Candidate], config) -> Candidate:
    """The auto rule: lowest cost at equal energy (--energy), else lowest error."""
    if config.energy is not None:
        return min(cands, key=lambda c: (c.macs if c.macs is not None else c.params, c.error))
    return min(cands, key=lambda c: (c.error, c.macs if c.macs is not None else c.params))
