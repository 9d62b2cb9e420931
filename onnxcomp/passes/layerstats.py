"""Which layer inputs the data-aware rewrites measure, in which waves, merged over shared uses.

Shared by ``factorize`` and ``depthwise``: one :class:`onnxcomp.measure.patchstats.StatsRequest` per
use of every layer (depthwise convs and patches larger than ``MAX_COV_DIM`` are left out: the
first is never rewritten, the second would need too large ``D × D`` statistics), consecutive
waves of layers for sequential fitting, and the average of the statistics over the uses of a
shared weight.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.measure.patchstats import LayerStats, StatsRequest
from onnxcomp.passes.rewrite import Layer, attr

MAX_COV_DIM = 4608  # larger patches: data-free factors for that layer (the D×D statistics get big)


def stats_requests(layers: list[Layer], notes: list[str]) -> list[StatsRequest]:
    """One covariance request per use of every layer whose patch size is small enough."""
    reqs = []
    for lay in layers:
        for i, node in enumerate(lay.nodes):
            key = f"{lay.weight.name}#{i}"
            if lay.kind == "conv":
                if lay.group > 1 and lay.kernel.shape[1] == 1:
                    break  # depthwise: never rewritten, no statistics needed
                dim = int(np.prod(lay.kernel.shape[1:]))
                shape = lay.in_shapes[i]
                if lay.geom.auto_pad not in ("NOTSET", "") and not lay.shapes_known:
                    continue
                pads = lay.geom.explicit_pads(tuple(shape[2:]) if lay.shapes_known else (0, 0))
                req = StatsRequest(key, node.input[0], "conv", lay.geom.kernel, lay.geom.strides, pads,
                                   lay.geom.dilations, lay.group)
            else:
                dim = lay.kernel.shape[1]
                req = StatsRequest(key, node.input[0], "matrix",
                                   transposed=lay.kind == "gemm" and bool(attr(node, "transA", 0)))
            if dim > MAX_COV_DIM:
                notes.append(f"{lay.name}: input patch size {dim} > {MAX_COV_DIM}, factorized without data")
                continue
            reqs.append(req)
    return reqs


def split_waves(layers: list[Layer], waves: int) -> list[list[Layer]]:
    """Consecutive groups of layers (graph order), at most ``waves`` of them."""
    size = max(1, -(-len(layers) // max(1, waves)))
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def merge_stats(stats: dict[str, list[LayerStats]], lay: Layer) -> list[LayerStats] | None:
    """The layer's statistics per group, averaged over the uses of a shared weight (None if missing)."""
    parts = [stats.get(f"{lay.weight.name}#{i}") for i in range(len(lay.nodes))]
    if not parts or any(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]

    def mean(field: str, g: int):
        vals = [getattr(p[g], field) for p in parts]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    return [LayerStats(mean("cov", g), mean("cross", g), mean("ref", g), sum(p[g].n for p in parts))
            for g in range(len(parts[0]))]
