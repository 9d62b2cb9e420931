"""``--importance auto`` with real data: both channel orders tried whole, the better model kept.

Neither order wins everywhere: the least-squares reconstruction order keeps ocr_det_ppocrv4's
bitmap (IoU 0.93 against 0.78 at 0.3) and loses on effnet_lite0 (KL 0.18 against 0.14), where the
activation-energy order wins. A choice per group on the sensitivity probe was tried and picked
the activation order nearly everywhere: the probe prunes a group alone with its consumers
compensated, not refitted, so it cannot see what the reconstruction order is for. So the whole
pass runs once per order (the reconstruction one on a copy of the model) and the model whose
outputs are closer to the original's on the first calibration samples is kept.
Cost: a second statistics walk, probe and refit (about twice the pass).
"""
from __future__ import annotations

import onnx

ORDERS = ("activation", "reconstruction")
MAX_BYTES = 1 << 30  # larger models take the activation order alone (the copy is not made)


def plan_both(owner, model: onnx.ModelProto, ctx, allocation: str):
    """The activation plan on ``model``, carrying the reconstruction plan on a copy of it."""
    from onnxcomp.io import model_bytes

    first = owner.plan_for(model, ctx, ORDERS[0], allocation)
    if all(gp.reason is not None for gp in first.groups):  # nothing prunable: no order to choose
        return first
    if model_bytes(model) > MAX_BYTES:
        first.notes.append(f"importance {ORDERS[0]}: the model is too big to try both orders")
        return first
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    first.alternatives = [(copy, owner.plan_for(copy, ctx, ORDERS[1], allocation))]
    return first


def apply_best(owner, model: onnx.ModelProto, plan, ctx):
    """Apply every tried plan (each to its own model), keep the model whose outputs moved least."""
    from onnxcomp.measure.sensitivity import CHECK_SAMPLES, output_errors

    tried = [(model, plan)] + list(plan.alternatives)
    plan.alternatives = []
    results = [owner.apply(m, p, ctx) for m, p in tried]
    errors = output_errors(ctx.original, [m for m, _ in tried], ctx.data, threads=ctx.threads)
    best = min(range(len(tried)), key=lambda i: errors[i])
    if best:
        model.CopyFrom(tried[best][0])
    result = results[best]
    names = [p.importance for _, p in tried]
    result.settings["importance"] = f"auto: {names[best]}"
    result.settings["importance_errors"] = dict(zip(names, errors))
    result.notes.append(f"importance {names[best]}: the outputs moved least on {CHECK_SAMPLES} calibration samples ("
                        + ", ".join(f"{n} {e:.3g}" for n, e in zip(names, errors)) + ")")
    return result
