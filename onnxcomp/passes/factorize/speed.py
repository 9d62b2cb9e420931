"""Measured speed of a layer's rewrites: the 1-thread micro-benchmark of :mod:`onnxcomp.measure.microbench`
applied to factorized layers, cached per layer geometry and rewrite shape.

Before ranks are allocated, each (layer, method) is measured at its lowest and highest candidate
rank; the time of a factorized layer grows about linearly with the rank (both factors are
linear in it), so the ranks predicted to run in at most ``MEASURE_MAX_RATIO`` of the original's
time are the ones the allocator may choose. The rank finally chosen is measured again (or found
in the cache) and the layer is left alone if it is not faster.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcomp.io import default_opset
from onnxcomp.measure.microbench import MEASURE_MAX_RATIO, LocalNames, measure, micro_node
from onnxcomp.passes.factorize.nodes import build_nodes, dummy_factors, factor_tensors
from onnxcomp.passes.factorize.plan import Candidate
from onnxcomp.passes.rewrite import Layer, geometry_key


class Speed:
    """Latency ratios (rewritten / original, 1 thread) of a model's layer rewrites."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.opset = default_opset(model)
        self.measured = 0

    def ratio(self, lay: Layer, method: str, ranks: tuple[int, ...]) -> float:
        """The micro-benchmark's latency ratio of ``lay`` rewritten by ``method`` at ``ranks``."""
        node = micro_node(lay.nodes[0])
        scope = LocalNames()
        cand = Candidate(method, tuple(ranks), dummy_factors(lay, method, ranks), None, 0, 1.0)
        names, inits = factor_tensors(lay, cand, scope, self.opset)
        nodes = build_nodes(lay, cand, node, names, scope)
        dtype = helper.np_dtype_to_tensor_dtype(lay.weight.dtype)
        weight = np.asarray(lay.weight.values(), lay.weight.dtype)
        self.measured += 1
        return measure(node, weight, nodes, inits, lay.in_shapes[0], dtype, self.opset,
                       key=(geometry_key(lay), method, tuple(ranks)))

    def fastest_ranks(self, lay: Layer, method: str, options: list[tuple[int, ...]]) -> int:
        """How many of ``options`` (ranks, ascending) are predicted faster: 0 when the lowest is not."""
        if not options:
            return 0
        lo = self.ratio(lay, method, options[0])
        if lo > MEASURE_MAX_RATIO:
            return 0
        if len(options) == 1:
            return 1
        hi = self.ratio(lay, method, options[-1])
        if hi <= MEASURE_MAX_RATIO:
            return len(options)
        r_lo, r_hi = options[0][0], options[-1][0]
        limit = r_lo + (MEASURE_MAX_RATIO - lo) / max(hi - lo, 1e-9) * (r_hi - r_lo)
        return sum(1 for r in options if r[0] <= limit)
