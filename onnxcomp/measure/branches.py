"""Which branch each main-graph ``If`` takes on the calibration data (see :mod:`onnxcomp.graph.taken`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx


def taken_branches(model: onnx.ModelProto, data: Any, threads: int | None = None) -> dict[str, bool]:
    """``{condition tensor: True (then) / False (else)}`` for the main-graph Ifs whose condition is
    the same on every calibration sample; empty without real data or when nothing can tell. Costs
    one run of the nodes the conditions depend on over the data (silero-vad: one comparison of
    its scalar sample rate)."""
    conds = list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == "If" and n.input))
    if not conds or data is None or getattr(data, "random", True):
        return {}
    from onnxcomp.graph.subgraph import truncate
    from onnxcomp.measure.capture import Capturer

    seen: dict[str, set] = {c: set() for c in conds}
    try:
        cap = Capturer(truncate(model, conds), conds, threads=threads)
        for batch in data:
            for name, value in cap.run(batch).items():
                value = np.asarray(value).reshape(-1)
                seen[name] |= {bool(v) for v in value[:1]} if value.size == 1 else {True, False}
    except Exception:  # noqa: BLE001 - a condition no sub-model computes: none known
        return {}
    return {c: next(iter(v)) for c, v in seen.items() if len(v) == 1}
