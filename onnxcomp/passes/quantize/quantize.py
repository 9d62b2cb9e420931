"""The quantize pass: weights (and activations) in onnxruntime's own integer kernels.

plan: which weight becomes MatMulNBits, QDQ int8, GatherBlockQuantized or int8 storage, which
activations are quantized, and whether the opset must be raised (:mod:`.plan`); nothing is changed.
apply: exact preparation (:mod:`.prep`), embeddings (round to nearest per block: their rows are
read, not multiplied), one walk of the streaming engine (:mod:`.walk`), the check of the
optimized session with bisection to float for layers it miscomputes (:mod:`.verify`), cleanup.
"""
from __future__ import annotations

import onnx

from onnxcomp.algo import quant
from onnxcomp.config.quantize import QuantizeConfig
from onnxcomp.graph.edit import remove_dead
from onnxcomp.graph.fold import fold_affine
from onnxcomp.io.tensors import tensor_array
from onnxcomp.passes.base import Change, Context, Pass, PassResult
from onnxcomp.passes.quantize import emit, prep, stored, verify
from onnxcomp.passes.quantize.plan import QDQ_OPSET, QuantPlan, plan as make_plan
from onnxcomp.passes.quantize.walk import Solved, Walk


class QuantizePass(Pass):
    """MatMulNBits / QDQ int8 / GatherBlockQuantized with calibration (see the module doc)."""

    name = "quantize"

    def __init__(self, config: QuantizeConfig, correction: str = "auto") -> None:
        super().__init__(config)
        self.correction = correction

    def plan(self, model: onnx.ModelProto, ctx: Context) -> QuantPlan:
        """The plan, on a prepared copy of ``model`` (opset raised, Pads and BatchNorms folded)."""
        work = onnx.ModelProto()
        work.CopyFrom(model)
        notes = []
        if self.config.activations == "int8":
            old = prep.opset_of(work)
            if old < QDQ_OPSET and any(n.op_type in ("Conv", "Gemm", "MatMul") for n in work.graph.node):
                changed = prep.changed_ops(work, QDQ_OPSET)
                work = prep.raise_opset(work, QDQ_OPSET, prep.first_batch(ctx.data), "per-channel QDQ int8")
                notes.append(f"opset {old} -> {QDQ_OPSET} for per-channel QDQ"
                             + (f" (adapted ops: {', '.join(changed)})" if changed else ""))
            folds = (("zero Pad(s)", prep.fold_pads(work)), ("BatchNormalization(s)", prep.fold_batchnorm(work)))
            for what, count in folds:
                if count:
                    notes.append(f"{count} {what} folded into the convs next to them")
            folded = fold_affine(work, scale_inputs=False)  # (a clustered kernel keeps its columns)
            if folded.total:
                notes.append(f"lossless fold: {folded.into_outputs + folded.into_inputs} constant Mul/Add into the "
                             f"convs next to them, {folded.hard_sigmoid} Clip(x+3,0,6)/6 chain(s) as HardSigmoid")
        if self.config.embeddings and (untied := stored.untie_tables(work)):
            notes.append(f"{untied} output layer(s) tied to an embedding table got a weight of their own: the "
                         f"table and the layer are quantized each for its own kernel")
        p = make_plan(work, self.config)
        p.prepared, p.notes = work, notes + p.notes
        return p

    def apply(self, model: onnx.ModelProto, plan: QuantPlan, ctx: Context) -> PassResult:
        cfg: QuantizeConfig = self.config
        result = PassResult(self.name, settings={"weights": cfg.weights, "activations": cfg.activations,
                                                 "block": cfg.block_size,
                                                 "gptq": ctx.has_real_data if cfg.gptq is None else cfg.gptq},
                            notes=list(plan.notes))
        model.CopyFrom(plan.prepared)
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
        mode = "none" if self.correction == "none" or not ctx.has_real_data else \
            ("affine" if self.correction == "auto" else self.correction)
        walk = Walk(model, cfg, mode, ctx.seed, plan.integer)
        for layer in plan.layers:
            if layer.kind == "gather":
                self._gather(model, layer, walk)
            elif layer.kind == "stored":
                err = stored.store(model, layer.weight, walk.scope)
                walk.solved.append(Solved(layer, "quantized", err, detail={"bits": 8, "error": round(err, 6)}))
        layers = {l.output: l for l in plan.layers if l.kind not in ("gather", "stored")}
        points = set(plan.points)
        if (layers or points) and ctx.data is not None and ctx.has_real_data:
            self._walk(model, reference, walk, layers, points, ctx, result.settings)
        elif layers:
            result.notes.append("no calibration data: weights rounded to nearest, activations left float")
            for out in [n.output[0] for n in model.graph.node if n.output and n.output[0] in layers]:
                if layers[out].kind == "nbits":
                    walk.layer(layers[out])
        rewired = emit.float_inputs(model, walk.origin)
        if rewired:
            result.notes.append(f"{rewired} float layer(s) read float inputs (onnxruntime would quantize them "
                                f"itself between Q/DQ)")
        self._verify(model, reference, walk, ctx, result)
        remove_dead(model)
        result.changes = [_change(s) for s in walk.solved] + plan.skipped
        result.notes += walk.notes
        return result

    def _walk(self, model, reference, walk: Walk, layers, points, ctx: Context, settings) -> None:
        from onnxcomp.measure.engine import Engine

        order = [n.output[0] for n in model.graph.node if n.output]
        with Engine(model, reference, ctx.data, threads=ctx.threads,
                    progress=ctx.progress, label="quantize", record=settings) as eng:
            walk.eng = eng
            for t in [i.name for i in model.graph.input if i.name in points]:
                walk.point(t)
            for k, out in enumerate(order):
                node = eng.node_of(out)
                if out in layers:
                    walk.layer(layers[out])
                for o in list(node.output):
                    if o in points:
                        walk.point(o)
                if ctx.progress is not None:
                    ctx.progress("quantize", k + 1, len(order))
            walk.eng = None

    def _gather(self, model: onnx.ModelProto, layer, walk: Walk) -> None:
        cfg: QuantizeConfig = self.config
        node = next(n for n in model.graph.node if layer.output in n.output)
        table = tensor_array(next(t for t in model.graph.initializer if t.name == node.input[0]))
        bits = 4 if cfg.bits == 2 and table.shape[1] % 4 else cfg.bits
        q, grid = quant.rtn(table.astype("float64"), bits, cfg.block_size)
        err = quant.output_error(table.astype("float64"), grid.dequantize(q), _eye(table.shape[1]))
        before = onnx.NodeProto()
        before.CopyFrom(node)
        emit.gather_block(model, node, q, grid, walk.scope, node.input[0])
        walk.solved.append(Solved(layer, "quantized", err, detail={"bits": bits, "error": round(err, 6)},
                                  node=before))

    def _verify(self, model, reference, walk: Walk, ctx: Context, result: PassResult) -> None:
        done = [s for s in walk.solved if s.action == "quantized"]
        if not done or ctx.data is None:
            return
        v = verify.Verifier(reference, ctx.data, ctx.threads)

        def edited(m: onnx.ModelProto, items: list[Solved], edit) -> onnx.ModelProto:
            copy = onnx.ModelProto()
            copy.CopyFrom(m)
            for s in items:
                edit(copy, s, next(n for n in copy.graph.node if s.layer.output in n.output))
            return copy

        def to_float(copy: onnx.ModelProto, s: Solved, node: onnx.NodeProto) -> None:
            if s.layer.kind == "stored":
                return stored.unstore(copy, s.layer.weight.name, reference)
            node.CopyFrom(s.node)
            node.input[0] = walk.origin.get(node.input[0], node.input[0])

        def revert(m: onnx.ModelProto, items: list[Solved]) -> onnx.ModelProto:
            return edited(m, items, to_float) if items else m

        def unsigned(m: onnx.ModelProto, items: list[Solved]) -> onnx.ModelProto:
            return edited(m, items, lambda copy, s, node: emit.unsigned_weights(copy, node))

        # first uint8 weights where the u8 x s8 kernels saturate (emit.unsigned_weights), then float
        moved, check = verify.culprits(model, [s for s in done if s.layer.kind == "qdq"], unsigned, v, cheap=True)
        if moved:
            model.CopyFrom(unsigned(model, moved))
            for s in moved:
                s.detail["weights"] = "uint8"
            result.notes.append(f"onnxruntime's optimized session saturated {len(moved)} layer(s) (its u8 x s8 "
                                f"kernels add products in int16 on CPUs without VNNI): uint8 weights there")
        bad, check = verify.culprits(model, [s for s in done if s not in moved], revert, v) if not check.ok \
            else ([], check)
        result.settings["optimized_check"] = {**check.to_dict(), "sessions": v.sessions}
        if bad:
            model.CopyFrom(revert(model, bad))
            for s in bad:
                s.action, s.reason = "skipped", "onnxruntime's optimized session miscomputes it (put back to float)"
            result.notes.append(f"onnxruntime's optimized session disagreed with the graph; {len(bad)} layer(s) "
                                f"put back to float")
        if not check.ok:
            result.notes.append(f"warning: the optimized session still differs from the graph's meaning "
                                f"(relative gap {check.gap:.3g} vs quantization error {check.error:.3g})")


def _eye(n: int):
    import numpy as np

    return np.eye(n)


def _change(s: Solved) -> Change:
    w = s.layer.weight
    size = w.size
    before = w.nbytes
    if s.action == "skipped":
        return Change(name=w.name, op=w.op_type, action="skipped", params_before=size, params_after=size,
                      bytes_before=before, bytes_after=before, reason=s.reason, detail={"error": s.error})
    bits = s.detail.get("bits", 8)
    return Change(name=w.name, op=w.op_type, action="quantized", params_before=size, params_after=size,
                  bytes_before=before, bytes_after=(size * bits + 7) // 8, detail={"kind": s.layer.kind, **s.detail})
