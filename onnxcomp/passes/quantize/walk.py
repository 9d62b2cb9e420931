"""The quantize pass's one walk of the streaming engine, node by node in graph order.

The work model is rewritten as the walk goes, so each stream segment runs the integer graph that
will be deployed (QDQ pairs, int8 weights, MatMulNBits) and every later decision sees the
errors of the earlier ones:

- an activation to quantize gets its uint8 range from its values in the work model (the range of
  least squared error, :func:`onnxcomp.algo.quant.activation_range`) and a Q/DQ pair; a tensor
  that loses more than ``max_layer_error`` of its energy to 8 bits stays float (with a note);
- a layer's integers are chosen by GPTQ on the statistics of its input in the work model, toward
  the weight that maps those inputs to the *original* model's outputs (output matching,
  :func:`onnxcomp.passes.cluster.seq.target`); a QDQ layer whose input stayed float, or whose
  quantized output error is above ``max_layer_error``, stays float;
- then the layer's output channels are refitted to the original's (the per-channel correction:
  the scale goes into the integer scales, the shift into the bias) and the walk moves on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxcomp.algo import quant
from onnxcomp.algo.linalg import blas_threads
from onnxcomp.graph.edit import NameScope, get_attr
from onnxcomp.graph.weights import Weight, find_weights
from onnxcomp.measure.engine import Engine
from onnxcomp.measure.stats import accumulate
from onnxcomp.passes import correction as corr
from onnxcomp.passes.cluster import seq as cluster_seq
from onnxcomp.passes.prune.obs import _rows, _unrows, request
from onnxcomp.passes.quantize import emit
from onnxcomp.passes.quantize.plan import Layer

SAMPLE_VALUES = 1 << 20  # values per activation used to choose its range


@dataclass
class Solved:
    """What happened to one layer."""

    layer: Layer
    action: str  # "quantized" or "skipped"
    error: float = 0.0  # relative output error of its integers on its input statistics
    reason: str | None = None
    detail: dict = field(default_factory=dict)
    node: onnx.NodeProto | None = None  # the node before the rewrite (to revert it)


class Walk:
    """State of one quantize walk (see the module doc)."""

    def __init__(self, model: onnx.ModelProto, cfg: Any, mode: str, seed: int = 0,
                 integer: set[str] = frozenset()) -> None:
        self.model, self.cfg, self.mode, self.seed = model, cfg, mode, seed
        self.integer = set(integer)  # nodes (first outputs) running on integers: they read the Q/DQ copies
        self.scope = NameScope(model)
        self.origin: dict[str, str] = {}  # dequantized name -> the tensor it stands for
        self.params: dict[str, tuple[float, int]] = {}  # quantized tensor -> (scale, zero)
        self.solved: list[Solved] = []
        self.point_errors: dict[str, float] = {}  # quantized activation -> relative squared error
        self.notes: list[str] = []
        self.eng: Engine | None = None
        self._found = None  # find_weights of the work model; None after a layer is rewritten

    def _weights(self):
        """The work model's weights (points add only activation Q/DQ pairs: found again only after
        a layer is rewritten; each search walks the whole graph)."""
        if self._found is None:
            self._found = find_weights(self.model)
        return self._found

    # --- activations --------------------------------------------------------------------------
    def point(self, t: str) -> None:
        values = self.eng.work.get(t)
        if not values or values[0].dtype != np.float32:
            return
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        axis, weights = self._consumer_weights(t, values[0])
        sample = _sample(values, axis, np.random.default_rng(self.seed))
        a, b, err = quant.activation_range(sample, lo, hi, weights)
        self.point_errors[t] = err
        if err > self.cfg.max_layer_error:
            self.notes.append(f"{t}: stays float (8 bits lose {err:.3g} of its energy)")
            return
        scale, zero = emit.uint8_params(a, b)
        producer = next((n for n in self.model.graph.node if t in n.output), None)
        readers = None if producer is None or producer.output[0] in self.integer else self.integer
        dq = emit.insert_qdq(self.model, t, scale, zero, self.scope, readers)
        self.origin[dq] = t
        self.params[t] = (scale, zero)

    def _consumer_weights(self, t: str, value: np.ndarray) -> tuple[int | None, np.ndarray | None]:
        """(channel axis, importance per channel) of ``t`` for the layers reading it: the squared
        weights each input channel meets (the first-order output error of its rounding), averaged
        over the readers; (None, None) when a reader is not a layer or they disagree on the axis."""
        found = self._weights().by_name()
        axes, parts = set(), []
        for node in self.model.graph.node:
            if t not in node.input:
                continue
            w = found.get(node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 \
                and node.input[0] == t else None
            if w is None or w.role not in ("conv", "gemm_b", "matmul_b"):
                return None, None
            v = w.values().astype(np.float64) ** 2
            if w.role == "conv":
                per = v.sum(axis=(0, *range(2, v.ndim))) if w.group == 1 else v.reshape(w.group, -1, *v.shape[1:]).sum(
                    axis=(1, *range(3, v.ndim + 1))).reshape(-1)
                axes.add(1)
            else:
                per = v.sum(axis=w.out_axis)
                axes.add(value.ndim - 1)
            if per.sum() <= 0 or len(per) != value.shape[next(iter(axes))]:
                return None, None
            parts.append(per / per.sum())
        if len(axes) != 1 or not parts:
            return None, None
        return axes.pop(), np.mean(parts, axis=0)

    # --- layers -------------------------------------------------------------------------------
    def layer(self, layer: Layer) -> None:
        node = next(n for n in self.model.graph.node if layer.output in n.output)
        w = (found := self._weights()).by_name()[layer.weight.name]
        x = node.input[0]
        source = self.origin.get(x, x)
        if layer.kind == "qdq" and source not in self.params:
            self.solved.append(Solved(layer, "skipped", reason="its input stays float"))
            return
        bias = _bias(found, node, w)
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and bias is None:
            self.solved.append(Solved(layer, "skipped", reason="Gemm bias C is not one value per output"))
            return
        req = request(w)
        stats = None
        if req is not None and self.cfg.gptq is not False and self.eng is not None:
            xs, refs = self.eng.work.get(x), self.eng.ref_tensor(source)
            with blas_threads(1):  # small matrices on a shared machine: one BLAS thread is fastest
                stats = accumulate(xs, refs, req, samples=self.eng.samples, seed=self.seed)
        with blas_threads(1):
            target = cluster_seq.target(w, stats) if stats is not None and stats[0].cross is not None \
                else w.values()
            target = target * _alpha(node, w)
            q, grids, err = self._integers(w, target, stats, layer.kind, w.values() * _alpha(node, w))
        if layer.kind == "qdq" and err > self.cfg.max_layer_error:
            self.solved.append(Solved(layer, "skipped", err, f"int8 output error {err:.3g} is above "
                                                           f"max_layer_error {self.cfg.max_layer_error:g}"))
            node.input[0] = source  # a float layer reads the float tensor (see emit.float_inputs)
            return
        before = onnx.NodeProto()
        before.CopyFrom(node)
        self._found = None  # this layer's weight becomes integers (a shared one is no float weight after)
        if layer.kind == "nbits":
            grid = grids[0]
            emit.matmul_nbits(self.model, node, x, q, grid, bias, self._accuracy(), self.scope, w.name)
        else:
            scale = np.concatenate([g.scale[:, 0] for g in grids])
            emit.qdq_weight(self.model, node, 1, _unrows(w, q).astype(np.int8), scale, w.out_axis, self.scope,
                            w.name)
            emit.drop_alpha_beta(node)
        info = {"bits": grids[0].bits, "error": round(err, 6), "matched": stats is not None}
        self._correct(node, layer, w, x, q, grids, bias, info)
        self.solved.append(Solved(layer, "quantized", err, detail=info, node=before))

    def _accuracy(self) -> int:
        return 4 if self.cfg.activations == "int8" else 0

    def _integers(self, w: Weight, target: np.ndarray, stats, kind: str, source: np.ndarray):
        """(integers [out, D], grids per group, relative output error) of ``target`` (``source``:
        the weight as it came, whose few values a clustered weight keeps)."""
        rows = _rows(w, target).astype(np.float64)
        groups = stats or [None]
        bits = self.cfg.bits if kind == "nbits" else 8
        parts, grids, num, den = [], [], 0.0, 0.0
        sources = np.split(_rows(w, source).astype(np.float64), len(groups))
        for r, st, src in zip(np.split(rows, len(groups)), groups, sources):
            group = self.cfg.block_size if kind == "nbits" else r.shape[1]
            sym = kind != "nbits"
            kept = quant.on_codes(r, src, None if st is None else st.cov) if kind == "qdq" else None
            if kept is not None:  # a clustered weight keeps its few values (its file stays small)
                q, g = kept
            elif st is not None:  # a pruned weight's zeros stay zero (its file stays sparse)
                q, g = quant.gptq(r, st.cov, bits, group, symmetric=sym, zeros=src == 0)
            else:
                q, g = quant.rtn(r, bits, group, symmetric=sym)
            h = st.cov if st is not None else np.eye(r.shape[1])
            e = g.dequantize(q) - r
            num += float(np.einsum("ij,jk,ik->", e, h, e))
            den += float(np.einsum("ij,jk,ik->", r, h, r))
            parts.append(q)
            grids.append(g)
        return np.concatenate(parts), grids, num / den if den > 0 else 0.0

    def _correct(self, node, layer: Layer, w: Weight, x: str, q, grids, bias, info: dict) -> None:
        """Refit the layer's output channels to the original's (scale into the integer scales)."""
        out = layer.output
        ref = self.eng.ref_tensor(out) if self.eng is not None else None
        if self.mode == "none" or ref is None:
            self._finish_bias(node, layer, w, x, grids, bias)
            return
        self.eng.work.advance([out], keep=[x])
        y = self.eng.work.get(out)
        axis = 1 if layer.kind == "qdq" and w.role == "conv" else -1
        picks = [corr._positions(corr._rows(r, axis % r.ndim).shape[1], seed=1000 * b) for b, r in enumerate(ref)]
        new = np.concatenate([corr._rows(v, axis % v.ndim)[:, i] for v, i in zip(y, picks)], 1)
        old = np.concatenate([corr._rows(r, axis % r.ndim)[:, i] for r, i in zip(ref, picks)], 1)
        mode = self.mode if layer.kind == "nbits" or w.role != "matmul_b" else "none"
        if mode == "none":
            self._finish_bias(node, layer, w, x, grids, bias)
            return
        a, b = corr.fit(new, old, mode)
        for g, part in zip(grids, np.split(a, len(grids))):
            g.scale = g.scale * part[:, None]
        add = emit.bias_add(self.model, node, len(a)) if bias is None and layer.kind == "nbits" else None
        base = bias if bias is not None else np.zeros(len(a))
        bias = a * base + b
        info["scale_mean"], info["shift_abs_mean"] = float(a.mean()), float(np.abs(b).mean())
        if layer.kind == "nbits":
            emit.set_tensor(self.model, node.input[2], np.concatenate([g.scale for g in grids]).astype(np.float32))
            if add is not None:  # the shift joins the bias Add after it: onnxruntime fuses the pair
                emit.set_tensor(self.model, add[0], (add[1] + bias).astype(np.float32).reshape(add[1].shape))
                bias = None
            else:
                emit.set_nbits_bias(self.model, node, bias, self.scope, w.name)
        else:
            dq = next(n for n in self.model.graph.node if node.input[1] in n.output)
            emit.set_tensor(self.model, dq.input[1], np.concatenate([g.scale[:, 0] for g in grids]).astype(np.float32))
        self._finish_bias(node, layer, w, x, grids, bias)
        self.eng.work.recompute([out])

    def _finish_bias(self, node, layer: Layer, w: Weight, x: str, grids, bias) -> None:
        """A QDQ layer's bias as int32 at the input scale times each channel's weight scale."""
        if layer.kind != "qdq" or bias is None or w.role == "matmul_b":
            return
        x_scale = self.params[self.origin.get(x, x)][0]
        scale = np.concatenate([g.scale[:, 0] for g in grids])
        raised = emit.bias_scales(bias, x_scale, scale)
        if np.any(raised > scale):  # a channel's bias would overflow int32: coarser weights there
            dq = next(n for n in self.model.graph.node if node.input[1] in n.output)
            q = emit.numpy_helper.to_array(next(t for t in self.model.graph.initializer if t.name == dq.input[0]))
            shape = [1] * q.ndim
            shape[w.out_axis] = len(scale)
            q = np.clip(np.rint(q * (scale / raised).reshape(shape)), -127, 127).astype(np.int8)
            emit.set_tensor(self.model, dq.input[0], q)
            emit.set_tensor(self.model, dq.input[1], raised.astype(np.float32))
        emit.qdq_bias(self.model, node, bias, x_scale, raised, self.scope, f"{w.name}_bias")


def _sample(values: list[np.ndarray], axis: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most :data:`SAMPLE_VALUES` values of a tensor (per batch), as [channels, values] along
    ``axis`` or flat."""
    if axis is None:
        flat = np.concatenate([v.reshape(-1) for v in values])
        return flat if flat.size <= SAMPLE_VALUES else rng.choice(flat, SAMPLE_VALUES, replace=False)
    rows = [np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1) for v in values]
    per = max(1, SAMPLE_VALUES // (rows[0].shape[0] * len(rows)))
    return np.concatenate([r[:, rng.choice(r.shape[1], per, replace=False)] if r.shape[1] > per else r
                           for r in rows], axis=1)


def _alpha(node: onnx.NodeProto, w: Weight) -> float:
    return float(get_attr(node, "alpha", 1.0)) if node.op_type == "Gemm" and w.role == "gemm_b" else 1.0


def _bias(found, node: onnx.NodeProto, w: Weight) -> np.ndarray | None:
    """The layer's bias per output channel (Conv B, Gemm beta * C) among ``found``, or None."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return None
    # (by its use, not its name: the TorchScript exporter reads a bias equal to another tensor
    # through an Identity of that one, and the weight is named after the stored tensor)
    c = next((b for b in found for u in b.uses if u.node is node and u.index == 2), None)
    if c is None:
        return None
    beta = float(get_attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    n = w.shape[w.out_axis]
    v = c.values().astype(np.float64).reshape(-1) * beta
    return np.broadcast_to(v, (n,)).copy() if v.size in (1, n) else None
