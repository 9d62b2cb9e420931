"""Layer-input covariances captured from a whole model in one pass (plan-time statistics);
the accumulation itself is :mod:`onnxcomp.measure.stats`."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from onnxcomp.data.sampling import limit_samples
from onnxcomp.measure.capture import capture
from onnxcomp.measure.stats import LayerStats, StatsRequest, _draw, _finish, _grams

CAPTURE_BYTES = 256 << 20


def collect_covariances(model: Any, requests: list[StatsRequest], data: Iterable[dict[str, np.ndarray]],
                        *, max_samples: int = 64, max_patches: int = 16384, seed: int = 0,
                        threads: int | None = None, reference: Any = None) -> dict[str, list[LayerStats]]:
    """``key -> [LayerStats per group]`` for every request (see :class:`LayerStats`).

    With ``reference`` (the original model) the same batches also run through it and the same
    patches are drawn from both, giving the cross moments sequential fitting needs.
    """
    if not requests:
        return {}
    rng = np.random.default_rng(seed)
    per_sample = max(1, math.ceil(max_patches / max_samples))
    sums: dict[str, dict[str, list[np.ndarray]]] = {r.key: {} for r in requests}
    counts = {r.key: 0 for r in requests}
    tensors = list(dict.fromkeys(r.tensor for r in requests))
    batches = list(limit_samples(data, max_samples)) if reference is not None else limit_samples(data, max_samples)
    outs = capture(model, tensors, batches, threads=threads, max_bytes=CAPTURE_BYTES)
    refs = (capture(reference, tensors, batches, threads=threads, max_bytes=CAPTURE_BYTES)
            if reference is not None else None)
    for out in outs:
        ref_out = next(refs) if refs is not None else None
        for req in requests:
            state = rng.bit_generator.state
            p = _draw(np.asarray(out[req.tensor], np.float32), req, per_sample, rng)
            parts = {"cov": _grams(p, p, req.group)}
            if ref_out is not None:
                rng.bit_generator.state = state  # the same samples and positions in the original
                q = _draw(np.asarray(ref_out[req.tensor], np.float32), req, per_sample, rng)
                parts.update(cross=_grams(q, p, req.group), ref=_grams(q, q, req.group))
            acc = sums[req.key]
            for name, grams in parts.items():
                acc[name] = grams if name not in acc else [a + g for a, g in zip(acc[name], grams)]
            counts[req.key] += len(p)
    done = {k: _finish(v, counts[k]) for k, v in sums.items() if v}
    return {k: v for k, v in done.items() if v is not None}  # not finite: no statistics for it
