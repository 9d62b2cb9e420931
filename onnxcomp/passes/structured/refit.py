"""Least-squares refit of the consumers of pruned channels, in sequence on the streaming engine.

After channels are removed (and each consumer's kept channels compensated from the original
model's statistics, :mod:`onnxcomp.passes.structured.select`), every consumer that lost input
channels is refit so that, fed with the *pruned* model's activations, it reproduces the
*original* model's output on its kept output channels (output matching; He et al. 2017, ThiNet):

    min_W ||Y_orig - [X_pruned, 1] W||² + lam ||W - W_0||²

a ridge regression pulled towards the current weights W_0 (so little data cannot hurt much),
solved for all output channels at once from accumulated normal equations over rows sampled at
random output positions (:mod:`onnxcomp.passes.structured.rows`). Consumers are refit one after
another in graph order in one walk of the engine: each sees the activations of the model with
every earlier consumer already refit, so upstream errors are corrected as they accumulate.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.algo.linalg import blas_threads
from onnxcomp.graph.channels.types import kept_mask
from onnxcomp.graph.edit import ConstEval, NameScope, remove_dead
from onnxcomp.passes.structured.rows import Fit

RIDGE = 3e-2  # x mean diagonal of the Gram matrix; 1e-3..1e-1 tried on effnet_lite0 and the digit models


def solve(fit: Fit) -> np.ndarray | None:
    """The ridge solution pulled toward the layer's current weights; None when the statistics or
    the solution are not finite (inputs holding NaN/Inf, overflowing squares, a float16 weight)."""
    from scipy.linalg import solve as _solve

    if fit.cross is None or not (np.isfinite(fit.gram).all() and np.isfinite(fit.cross).all()):
        return None
    w0 = fit.matrix()
    lam = RIDGE * max(float(np.trace(fit.gram)) / fit.dim, 1e-12)
    w = _solve(fit.gram + lam * np.eye(fit.dim), fit.cross + lam * w0, assume_a="pos")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(w.astype(fit.w0.dtype)).all()
    return w if finite else None


def _targets(plan, measured: dict) -> tuple[list, list[str]]:
    """Consumers that lost input channels and can be refit exactly, and notes on the others."""
    targets, notes = [], []
    for c in plan.cg.consumers:
        if kept_mask(plan.keep, c.ids).all():
            continue
        m = measured.get(id(c.node))
        if m is None or m.fit is None:
            notes.append(f"not refit: {c.name}: {c.node.op_type} is not fitted (grouped, not 2-D, or too large)")
        elif m.fit.kind == "convt":  # refit toward the original's taps: ocr_det F1 0.985 -> 0.926 at 0.3
            notes.append(f"not refit: {c.name}: ConvTranspose is not refit (compensated only)")
        else:
            targets.append((c, m))
    return targets, notes


def refit_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto, plan, ctx, measured: dict,
                    record: dict | None = None) -> list[str]:
    """Refit every consumer that lost input channels, one after another in graph order; notes.

    One walk of the streaming engine: each consumer is fitted on the pruned model's inputs (every
    consumer before it already refit) toward the original model's outputs on its kept channels.
    """
    from onnxcomp.measure.engine import Engine

    targets, notes = _targets(plan, measured)
    producer = {id(p.node): p for p in plan.cg.producers}
    by_output = {c.node.output[0]: (c, m) for c, m in targets}
    scope = NameScope(pruned)
    rows_fit = 0
    with Engine(pruned, original, ctx.data, threads=ctx.threads, progress=ctx.progress, label="refit",
                record=record) as eng:
        for k, site in enumerate(eng.walk([(out, 0) for out in by_output])):
            (c, m), y_ref = by_output[site.name], site.y_ref()
            if y_ref is None:
                continue
            fit = Fit(pruned, site.node, m.fit.kind, ConstEval(pruned))
            p = producer.get(id(c.node))
            cols = None if p is None else fit.out_columns(kept_mask(plan.keep, p.ids))
            shift = None
            if c.node.op_type == "MatMul" and m.fit.bias_at is not None and fit.bias_at is not None:
                shift = np.asarray(m.fit.b0, np.float64).reshape(-1)  # the original Add's bias joins the target
            rng = np.random.default_rng(ctx.seed + k)
            for x, y in zip(site.x(), y_ref):
                a, t = fit.draw(x, y, rng, max(64, -(-fit.budget * len(x) // max(eng.samples, 1))))
                if shift is not None:
                    t = t + shift
                fit.add(a, t if cols is None else t[:, cols])
            with blas_threads(1):
                w = solve(fit)
            if w is not None:  # else the pruned weights stay as they are
                fit.write(pruned, w, scope)
            rows_fit = max(rows_fit, fit.rows)
    remove_dead(pruned)
    if targets:
        notes.insert(0, f"least-squares refit of {len(targets)} consumer(s) on up to {rows_fit} rows each "
                        "(pruned-model inputs, every consumer before it refit; original outputs)")
    return notes
