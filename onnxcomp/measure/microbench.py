"""Single-layer micro-benchmarks for ``--measure``: is the rewritten layer faster in onnxruntime?

The original node and its replacement each become a tiny model reading ``x`` (the layer's input
shape at batch 1) and writing ``y``, without bias (the same cost on both sides). Both run side by
side in :func:`onnxcomp.measure.bench.bench` (one process each, interleaved rounds, 1 thread);
the ratio of their median latencies decides.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.graph.edit import NameScope


class LocalNames(NameScope):
    """Fresh names for a throw-away micro-benchmark model (``x``, ``w``, ``y`` are taken)."""

    def __init__(self) -> None:  # no model to scan: only the fixed names are taken
        self.shared = {}
        self.used = {"x", "y", "w"}


MEASURE_MAX_RATIO = 0.95  # --measure keeps a rewrite only if it runs in at most 95 % of the time


def _micro_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_shape: tuple,
                 dtype: int, opset: int) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", dtype, [f"d{i}" for i in range(len(in_shape))])
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", dtype, list(in_shape))],
                              [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    return model


def micro_node(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of a compute node reading ``x`` and weight ``w``, writing ``y``, without bias/C."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(["x", "w"])
    del copy.output[:]
    copy.output.append("y")
    return copy


def measure(original: onnx.NodeProto, weight: np.ndarray, rewritten: list[onnx.NodeProto],
            inits: list[onnx.TensorProto], in_shape: tuple, dtype: int, opset: int,
            macs: int | None = None) -> float:
    """Time of the rewritten layer / time of the original, onnxruntime, 1 thread, interleaved.

    ``original`` must come from :func:`micro_node`; ``rewritten`` reads ``x`` and writes ``y``.
    Both run side by side in :func:`onnxcomp.measure.bench.bench` (median of interleaved runs).
    """
    import tempfile

    from onnxcomp.io.writer import temp_prefix
    from pathlib import Path

    from onnxcomp.measure.bench import bench

    runs = int(np.clip(2e9 / max(macs or 1, 1), 30, 200))
    with tempfile.TemporaryDirectory(prefix=temp_prefix("onnxcomp-measure")) as tmp:
        a, b = Path(tmp) / "original.onnx", Path(tmp) / "rewritten.onnx"
        w = numpy_helper.from_array(weight, "w")
        onnx.save_model(_micro_model([original], [w], in_shape, dtype, opset), str(a))
        onnx.save_model(_micro_model(rewritten, inits, in_shape, dtype, opset), str(b))
        report = bench([a, b], threads=1, runs=runs, warmup=max(3, runs // 10))
    return float(report.entries[1].p50_ms / report.entries[0].p50_ms)
