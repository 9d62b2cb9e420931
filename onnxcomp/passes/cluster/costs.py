"""What each clustering option stores and which options a weight has: the budget side of the pass.

A weight's options are (granularity, bits) pairs; their stored bits count the indices and the
tables of the codebook encodings (or, for a grid, the variable-length code itself; for a pruned
weight, its smallest sparse encoding), so the allocations compare options by what the file pays.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.config import ClusterConfig
from onnxcomp.encode.tables import Layout
from onnxcomp.graph.weights import Weight
from onnxcomp.passes.base import Change
from onnxcomp.passes.cluster.fit import GRID_MAX_K, GRID_Q, Fit


def select(weights, cfg: ClusterConfig) -> tuple[list[Weight], list[Change]]:
    """The weights the pass may cluster, and a skip row (with its reason) for the others.

    The measured (sensitivity) allocation also takes depthwise kernels: it gives them the bits
    their measured effect on the outputs warrants.
    """
    from dataclasses import replace

    from onnxcomp.passes.prune.prune import select as select_weights

    if cfg.allocation == "sensitivity":
        cfg = replace(cfg, include_depthwise=True)
    return select_weights(weights, cfg, single_role=False,
                          depthwise_hint="; --include-depthwise clusters it per tensor")


def granularity_of(w: Weight, cfg: ClusterConfig) -> str:
    """Depthwise kernels (a handful of weights per channel): one shared codebook over the
    channel-scaled kernels (float32; channels differ in scale), else one per tensor; ``auto``
    starts from channel (the allocations may switch a layer to shared, see :func:`_candidates`)."""
    if w.is_depthwise:
        return "shared" if w.dtype == np.float32 else "tensor"
    if w.out_axis is None:
        return "tensor"
    return "channel" if cfg.granularity == "auto" else cfg.granularity


def candidates(w: Weight, cfg: ClusterConfig, encoding: str) -> list[str]:
    """The granularities a budget allocation may choose from for ``w`` (the first is the default).

    With ``auto``, float32 per-channel weights may also take one shared codebook: per-channel
    tables cost k+2 bytes per output channel (at 4 bits 18 bytes, against 48 bytes of indices for
    a 1×1 conv with 96 inputs), and on such short rows a shared codebook one bit wider is more
    accurate for the bytes. They, and float32 depthwise kernels, may also take a uniform grid
    stored in the variable-length code (when the encoding allows it), whose stored bits are
    counted from the code itself.
    """
    from onnxcomp.encode.select import allowed_kinds

    first = granularity_of(w, cfg)
    if cfg.granularity != "auto" or w.dtype != np.float32:
        return [first]
    # 'dense' defers the encoding (recipes encode once at the end, in 'auto'); only an explicit
    # choice without the variable-length code rules the grid out
    grid = ["grid"] if encoding == "dense" or "codebook_vlc" in allowed_kinds(encoding) else []
    if first == "channel":
        return [first, "shared"] + grid
    return [first] + grid if w.is_depthwise else [first]


def grid_levels(levels) -> list[float]:
    """A grid's step needs no power-of-two table: its options go in half bits, so the allocation
    can move a large layer (effnet_lite0's classifier: 160 KB per bit) in smaller steps."""
    levels = list(levels)
    return sorted({float(b) for b in levels} | {b + 0.5 for b in levels[:-1]})

VLC_FRAMING_BITS = 8 * 1100  # the variable-length decoder's nodes beyond a fixed-width one's


def fit_bits(w: Weight, f: Fit, bits: int) -> int:
    """Stored bits of ``w`` as fitted: the code's own count for a grid, else :func:`storage_bits`."""
    if f.coded_bits is None:
        return storage_bits(w, f.granularity, bits)
    return f.coded_bits + 16 * (Layout.of(w.shape, w.out_axis).channels + 2 * GRID_Q) + VLC_FRAMING_BITS


def option_bits(w: Weight, f: Fit, bits: int, encoding: str, pruned: bool) -> int:
    """Stored bits of one allocation option: :func:`fit_bits`, or for a ``pruned`` weight
    (:func:`is_pruned`) the bytes of its smallest encoding, since the sparse encodings store
    positions plus indices of a fixed width (2 or 4 bits cost the same in sparse_codebook4) and a
    dense count would misprice every option."""
    if not pruned:
        return fit_bits(w, f, bits)
    from onnxcomp.encode.select import allowed_kinds, best_encoding

    kinds = allowed_kinds("auto" if encoding == "dense" else encoding)
    values = f.values.reshape(-1).astype(w.dtype)
    return 8 * best_encoding(values, kinds, lambda _opset: True, Layout.of(w.shape, w.out_axis))[1]

SPARSE_DENSITY = 0.6  # the sparse encodings apply up to this fraction of nonzeros


def is_pruned(w: Weight) -> bool:
    """Whether ``w`` has few enough nonzeros to be stored by a sparse encoding."""
    return np.count_nonzero(w.values()) <= SPARSE_DENSITY * w.size


def budget_limit(weights: list[Weight], plan, costs: dict, budget: float) -> float:
    """The allocation's budget in stored bits: ``budget`` bits per weight, except that a pruned
    weight brings the bits uniform ``budget`` would store for it (its default granularity, the
    two neighbouring widths interpolated), so the average means the same with and without pruning."""
    total = 0.0
    lo, hi = int(np.floor(budget)), int(np.ceil(budget))
    for w in weights:
        c, g = costs[w.name], plan.granularity[w.name]
        if w.name in plan.pruned and (g, lo) in c and (g, hi) in c:
            t = budget - lo
            total += (1 - t) * c[g, lo] + t * c[g, hi]
        else:
            total += budget * w.size
    return total


def storage_bits(w: Weight, granularity: str, bits: int) -> int:
    """Bits of ``w`` stored as 2^bits-entry codebooks: indices plus the tables (see cluster_fit)."""
    # int(round(2 ** bits)): a grid option at half bits whose values do not fit float16 scales is
    # fitted as channel codebooks (passes/cluster/fit.py) and priced here at its fractional width
    k, channels = int(round(2 ** bits)), Layout.of(w.shape, w.out_axis).channels
    if granularity == "tensor":
        table = 8 * k * w.dtype.itemsize
    elif granularity == "shared":
        table = 16 * (k + channels)
    elif w.dtype == np.float32 and k <= GRID_MAX_K:
        table = 8 * channels * (k + 2)
    else:
        table = 16 * channels * k
    return w.size * bits + table
