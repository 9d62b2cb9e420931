"""The deployed session checked against the graph's meaning.

onnxruntime rewrites a quantized graph when it loads it (QDQ pairs into QLinearConv/QGemm,
MatMulNBits + Add, layout changes), and such fusions have miscomputed (a reported
DequantizeLinear -> MatMul into MatMulNBits fusion). Here the model runs twice on calibration
batches: with every graph optimization (as deployed) and with none (each node as the ONNX
definition says). Their gap must stay below the quantization error itself (the unoptimized
model against the original); when it does not, the layers behind it are found by bisection and
put back to float, and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxcomp.io.sessions import session_options
from onnxcomp.io.tensors import serialize, session_source

FLOOR = 1e-6  # relative squared gaps below this are rounding, whatever the quantization error
# onnxruntime's integer kernels round differently from the float definition of QDQ (fixed-point
# requantization): on effnet_lite0 the gap was 1.7x the quantization error (KL to the original
# 0.00210 fused vs 0.00211 unfused); a miscomputing fusion there gave 370x (KL 0.36)
GAP_FACTOR = 4.0
MAX_CULPRITS = 4
BATCHES = 4


@dataclass
class Check:
    gap: float  # relative squared difference, optimized vs unoptimized session
    error: float  # relative squared difference, unoptimized session vs the original model

    @property
    def ok(self) -> bool:
        return self.gap <= max(GAP_FACTOR * self.error, FLOOR)

    def to_dict(self) -> dict:
        return {"gap": self.gap, "error": self.error, "ok": self.ok}


def outputs(model: onnx.ModelProto, batches: Sequence[dict], optimized: bool,
            threads: int | None = None) -> list[list[np.ndarray]]:
    """Every output for every batch, from a session with all graph optimizations or none."""
    import onnxruntime as ort

    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized \
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    direct = session_source(model)  # lazy tensors (a model loaded lazily) stay in their files
    blob, folder = direct if direct is not None else (serialize(model), None)
    if folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: b[n] for n in names}) for b in batches]


def _rel(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for xs, ys in zip(a, b) for x, y in zip(xs, ys)
              if np.issubdtype(x.dtype, np.floating))
    den = sum(float(np.sum(y.astype(np.float64) ** 2)) for ys in b for y in ys if np.issubdtype(y.dtype, np.floating))
    return num / den if den > 0 else 0.0


class Verifier:
    """Runs the checks; ``run(model, batches, optimized)`` can be replaced (tests)."""

    def __init__(self, original: onnx.ModelProto, data: Any, threads: int | None = None,
                 run: Callable | None = None) -> None:
        self.batches = [dict(b) for _, b in zip(range(BATCHES), data)]
        self.threads = threads
        self.run = run or (lambda m, bs, opt: outputs(m, bs, opt, threads))
        self.reference = self.run(original, self.batches, False)
        self.sessions = 0

    def check(self, model: onnx.ModelProto) -> Check:
        plain = self.run(model, self.batches, False)
        fused = self.run(model, self.batches, True)
        self.sessions += 2
        return Check(_rel(fused, plain), _rel(plain, self.reference))


def culprits(model: onnx.ModelProto, items: list[Any], revert: Callable[[onnx.ModelProto, list[Any]], onnx.ModelProto],
             verifier: Verifier, *, cheap: bool = False) -> tuple[list[Any], Check]:
    """The items whose reversion makes the optimized session agree (bisection, at most
    :data:`MAX_CULPRITS` of them), and the check of the model with them reverted. ``cheap``: the
    reversion costs little (uint8 weights, the same values), so when more items than that are
    needed, the shortest prefix of the rest (in graph order) that makes it agree is taken whole."""
    found: list[Any] = []
    pool = list(items)
    check = verifier.check(revert(model, found))
    while not check.ok and pool:
        lo, hi = 0, len(pool)  # the shortest prefix of the pool whose reversion fixes the gap
        if not verifier.check(revert(model, found + pool)).ok:
            break  # not caused by these layers
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if verifier.check(revert(model, found + pool[:mid])).ok:
                hi = mid
            else:
                lo = mid
        last = len(found) + 1 >= MAX_CULPRITS
        found += pool[:hi] if last and cheap else [pool[hi - 1]]
        pool = pool[hi:] if last and cheap else pool[:hi - 1] + pool[hi:]
        check = verifier.check(revert(model, found))
        if last:
            break
    return found, check
