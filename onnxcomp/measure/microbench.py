"""Single-layer micro-benchmarks: does the rewritten layer run faster in onnxruntime (1 thread)?

The original node and its replacement each become a tiny model reading ``x`` (the layer's input
shape at batch 1) and writing ``y``, without bias (the same cost on both sides). Both run in this
process, one intra-op thread each, interleaved in rounds (the order alternating), and the ratio of
the means of their fastest quarter of runs decides: on a shared machine other processes only ever
add time, so the fastest runs are the layer's own cost (a median moved by ±20 % between two
identical measurements on a loaded 2-core machine; the fastest quarter by ±3 %). A pair takes
about ``BUDGET_S`` seconds whatever the layer's size (at least ``MIN_RUNS`` runs each).

Results are cached for the process by the caller's key (the layer's geometry, input shape and
the rewrite's shape), so equal layers are measured once.
"""
from __future__ import annotations

import time
from typing import Hashable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.graph.edit import NameScope

MEASURE_MAX_RATIO = 0.95  # a rewrite is kept only if it runs in at most 95 % of the original's time
BUDGET_S = 0.3  # seconds of timed runs per pair (both models together)
MIN_RUNS, MAX_RUNS = 8, 300
_CACHE: dict[Hashable, float] = {}


class LocalNames(NameScope):
    """Fresh names for a throw-away micro-benchmark model (``x``, ``w``, ``y`` are taken)."""

    def __init__(self) -> None:  # no model to scan: only the fixed names are taken
        self.shared = {}
        self.used = {"x", "y", "w"}


def micro_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_shape: tuple,
                dtype: int, opset: int) -> onnx.ModelProto:
    """A model of ``nodes`` reading ``x`` of ``in_shape`` and writing ``y``."""
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


def _fast_mean(times: list[float]) -> float:
    t = np.sort(np.asarray(times))
    return float(t[:max(1, len(t) // 4)].mean())


def time_ratio(original: onnx.ModelProto, rewritten: onnx.ModelProto, in_shape: tuple, dtype: int,
               budget_s: float = BUDGET_S) -> tuple[float, float]:
    """(time of ``rewritten`` / time of ``original``, the original's time in ms): 1 thread,
    interleaved, the fastest quarter of each model's runs."""
    from onnxcomp.io.sessions import session

    sessions = [session(original, threads=1), session(rewritten, threads=1)]
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    feed = {"x": np.random.default_rng(0).standard_normal(in_shape).astype(np_dtype)}
    first = []
    for s in sessions:  # warm-up (the first run allocates), then one timed run to size the rounds
        s.run(None, feed)
        t0 = time.perf_counter()
        s.run(None, feed)
        first.append(time.perf_counter() - t0)
    runs = int(np.clip(budget_s / max(sum(first), 1e-6), MIN_RUNS, MAX_RUNS))
    chunk = max(1, runs // 16)
    times: list[list[float]] = [[], []]
    k = 0
    while len(times[0]) < runs:
        for i in ((0, 1) if k % 2 == 0 else (1, 0)):
            for _ in range(chunk):
                t0 = time.perf_counter()
                sessions[i].run(None, feed)
                times[i].append(time.perf_counter() - t0)
        k += 1
    a, b = _fast_mean(times[0]), _fast_mean(times[1])
    return b / a, a * 1e3


def measure(original: onnx.NodeProto, weight: np.ndarray, rewritten: list[onnx.NodeProto],
            inits: list[onnx.TensorProto], in_shape: tuple, dtype: int, opset: int,
            key: Hashable | None = None) -> float:
    """Time of the rewritten layer / time of the original (see :func:`time_ratio`), cached by ``key``.

    ``original`` must come from :func:`micro_node`; ``rewritten`` reads ``x`` and writes ``y``.
    """
    if key is not None and key in _CACHE:
        return _CACHE[key]
    w = numpy_helper.from_array(weight, "w")
    ratio, _ = time_ratio(micro_model([original], [w], in_shape, dtype, opset),
                          micro_model(rewritten, inits, in_shape, dtype, opset), in_shape, dtype)
    if key is not None:
        _CACHE[key] = ratio
    return ratio


def estimate_seconds(pairs: int, macs_total: int) -> float:
    """A rough cost of measuring ``pairs`` layer pairs of ``macs_total`` MACs in all (1 thread,
    ~2 GMAC/s as a pessimistic rate) for deciding whether measuring by default is cheap."""
    return pairs * (BUDGET_S + 0.05) + 4 * macs_total / 2e9
