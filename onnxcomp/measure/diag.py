"""Layer-input statistics from calibration data, streamed through onnxruntime with bounded memory."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx

from onnxcomp.measure.capture import capture
from onnxcomp.graph.weights import Weight
from onnxcomp.data.sampling import limit_samples

CAPTURE_BYTES = 256 * 2**20


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def data_input(weight: Weight) -> tuple[str, int]:
    """(activation tensor multiplied by the weight, its channel axis matching ``in_axis``)."""
    use = weight.uses[0]
    node = use.node
    if weight.role in ("conv", "convtranspose"):
        return node.input[0], 1
    if weight.role == "gemm_b":
        return node.input[0], 0 if _attr(node, "transA") else -1
    if weight.role == "gemm_a":
        return node.input[1], 1 if _attr(node, "transB") else 0
    if weight.role == "matmul_b":
        return node.input[0], -1
    if weight.role == "matmul_a":
        return node.input[1], -2
    raise ValueError(f"{weight.name}: no data input for role {weight.role}")


def input_channel_rms(model: onnx.ModelProto, weights: list[Weight], data: Iterable,
                      max_samples: int = 64, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per weight: the RMS of each input channel of the activation it multiplies.

    For a grouped conv the array has all C_in channels; :func:`onnxcomp.algo.masks.input_scale` maps
    them to groups. Streams batches (split to stay under ~256 MB of captured tensors).
    """
    wanted = {w.name: data_input(w) for w in weights}
    tensors = sorted({t for t, _ in wanted.values()})
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for out in capture(model, tensors, limit_samples(data, max_samples), threads=threads,
                       max_bytes=CAPTURE_BYTES):
        for name, (tensor, axis) in wanted.items():
            x = out[tensor].astype(np.float64, copy=False)
            ax = axis % x.ndim
            other = tuple(i for i in range(x.ndim) if i != ax)
            sq = (x * x).sum(axis=other) if other else x * x
            sums[name] = sums.get(name, 0) + sq
            counts[name] = counts.get(name, 0) + int(np.prod([x.shape[i] for i in other]))
    return {n: np.sqrt(sums[n] / max(counts[n], 1)).astype(np.float32) for n in sums}
