"""Which layer inputs the data-aware rewrites measure, and the walk that measures them.

Shared by ``factorize`` and ``depthwise``: one :class:`onnxcomp.measure.stats.StatsRequest` per
use of every layer (depthwise convs and patches larger than ``MAX_COV_DIM`` are left out: the
first is never rewritten, the second would need too large ``D × D`` statistics), measured in
one walk of the streaming engine (:func:`layer_statistics`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx

from onnxcomp.measure.stats import LayerStats, StatsRequest
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
                # SAME_* pads on an input of unknown size: worked out from each batch's size
                same = "" if lay.shapes_known or lay.geom.auto_pad in ("NOTSET", "", "VALID") else lay.geom.auto_pad
                hw = tuple(lay.lifted(shape)[2:]) if lay.shapes_known else (0, 0)
                pads = lay.geom.explicit_pads(hw) if not same else (0, 0, 0, 0)
                req = StatsRequest(key, node.input[0], "conv", lay.geom.kernel, lay.geom.strides, pads,
                                   lay.geom.dilations, lay.group, auto_pad=same or "NOTSET")
            else:
                dim = lay.kernel.shape[1]
                req = StatsRequest(key, node.input[0], "matrix",
                                   transposed=lay.kind == "gemm" and bool(attr(node, "transA", 0)))
            if dim > MAX_COV_DIM:
                notes.append(f"{lay.name}: input patch size {dim} > {MAX_COV_DIM}, factorized without data")
                continue
            reqs.append(req)
    return reqs


def layer_statistics(model: onnx.ModelProto, layers: list[Layer], ctx, notes: list[str], *,
                     sequential: bool, record: dict | None = None, label: str = "factorize") -> Iterator[tuple[Layer, list[LayerStats] | None, onnx.ModelProto]]:
    """(layer, its input statistics per group or None, the model to rewrite it in) in graph order.

    One walk of the streaming engine. ``sequential``: the statistics come from a working copy in
    which the caller rewrites each layer before the next is measured, with cross moments to the
    untouched ``model`` (each layer is fit on the inputs the rewritten layers before it produce,
    toward the original outputs); otherwise every layer is measured on ``model`` itself. A
    shared weight is measured at its first use.
    """
    from onnxcomp.measure.engine import Engine
    from onnxcomp.measure.stats import accumulate

    reqs = {r.key: r for r in stats_requests(layers, notes)}
    first = {lay.weight.name: reqs.get(f"{lay.weight.name}#0") for lay in layers}
    work = model
    if sequential:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    items = [(lay, lay.nodes[0].output[0], 0 if first[lay.weight.name] is not None else None) for lay in layers]
    with Engine(work, model if sequential else None, ctx.data, threads=ctx.threads, progress=ctx.progress,
                label=label, record=record) as eng:
        for lay, site in eng.each(items):
            req = first[lay.weight.name]
            stats = None if site is None else accumulate(site.x(), site.x_ref(), req, samples=eng.samples,
                                                         seed=ctx.seed, with_ref=True)
            yield lay, stats, work
