"""``fold``: constant scale/shift ops into the convs next to them, hard-sigmoid chains into
HardSigmoid (lossless; see :mod:`onnxcomp.graph.fold`). The speed rewrites end with it."""
from __future__ import annotations

import onnx

from onnxcomp.config import FoldConfig
from onnxcomp.graph.fold import fold_affine
from onnxcomp.graph.weights import find_weights
from onnxcomp.passes.base import Change, Context, Pass, PassResult


class FoldPass(Pass):
    name = "fold"
    idle_unreported = True  # the runner keeps no report of a fold that found nothing

    def __init__(self, config: FoldConfig | None = None) -> None:
        super().__init__(config or FoldConfig())

    def plan(self, model: onnx.ModelProto, ctx: Context) -> None:
        return None  # nothing to decide: every fold is lossless and found while it is made

    def apply(self, model: onnx.ModelProto, plan: None, ctx: Context) -> PassResult:
        done = fold_affine(model)
        result = PassResult(self.name, settings={"fold": True})
        if not done.total:
            return result
        found = find_weights(model).by_name()
        for name in done.weights:
            w = found.get(name)
            if w is not None:
                result.changes.append(Change(name=name, op=w.op_type, action="folded", params_before=w.size,
                                             params_after=w.size, bytes_before=w.nbytes, bytes_after=w.nbytes))
        parts = [f"{done.into_outputs} into the convs before them" if done.into_outputs else "",
                 f"{done.into_inputs} into the convs after them" if done.into_inputs else ""]
        moved = " and ".join(p for p in parts if p)
        said = [f"{done.into_outputs + done.into_inputs} constant Mul/Add folded ({moved})" if moved else "",
                f"{done.hard_sigmoid} Clip(x+3,0,6)/6 chains now HardSigmoid" if done.hard_sigmoid else ""]
        result.notes.append("lossless fold: " + "; ".join(s for s in said if s) + " (--no-fold keeps them)")
        return result
