"""Weights read by ops outside the ONNX standard (another domain), named so the user knows why.

A graph onnxruntime optimized offline and saved (``SessionOptions.optimized_model_filepath``, or
an optimizer's "O2" export) computes layers with onnxruntime's own ops. FusedConv and FusedGemm
are written out as the standard ops they fuse before the passes (:func:`onnxcomp.graph.normalize.unfuse`);
the others (FusedMatMul, Attention, ...) have onnxruntime's semantics, so no pass rewrites them,
and their weights are named here instead of being left out without a word.
"""
from __future__ import annotations

import onnx

from onnxcomp.graph.constants import FLOAT_TYPES

WHY = "is read by an op outside the ONNX standard; left alone"
QUANTIZED_WHY = "already quantized ({}); left alone"  # integer kernels' weights, of any domain
HINT = ("; compress the model as it was exported, before onnxruntime's offline optimizations "
        "(they run again when onnxruntime loads the compressed model)")


def hint(ops: list[str]) -> str:
    """The way out for weights of these ``domain:op`` readers: onnxruntime's own ops come from its
    offline optimizations; any other domain is a custom op whose computation no pass knows."""
    if ops and all(o.startswith("com.microsoft") for o in ops):
        return HINT
    return "; no pass knows what those ops compute (write them as standard ONNX ops to compress those weights)"


def note_weights(graph: onnx.GraphProto, consts, found: dict, skipped: dict[str, str]) -> None:
    """A skip reason for each float constant (2+ dims) a node of another domain reads; when the
    node also reads integer tensors (an already quantized op: MatMulNBits, GatherBlockQuantized),
    for those instead."""
    for node in graph.node:
        if node.domain in ("", "ai.onnx"):
            continue
        hits = [h for name in node.input if name and (h := consts.resolve(name)) is not None]
        integers = [h for h in hits if h[4] not in FLOAT_TYPES and len(h[3]) >= 2]  # an integer layer's weights
        for h in integers:
            skipped.setdefault(h[0], QUANTIZED_WHY.format(f"{node.domain}:{node.op_type}"))
        if integers:
            continue
        for h in hits:
            if h[0] not in found and len(h[3]) >= 2 and h[4] in FLOAT_TYPES:
                skipped.setdefault(h[0], f"{node.domain}:{node.op_type} {WHY}")
