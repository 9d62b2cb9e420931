"""Lossless folds that leave fewer elementwise ops around convs (what onnxruntime does not fold).

Exporters such as PaddlePaddle's write a per-channel (or scalar) scale and shift as separate Mul
and Add nodes next to convs (PP-LCNetV3's learnable affine blocks) and hard-swish as four ops,
``x * Clip(x + 3, 0, 6) / 6``. onnxruntime folds none of them (on PP-OCRv4's text detector 41 %
of the one-thread run time was Add/Mul/Clip/Div), so:

- **into a conv's output**: ``Conv -> Mul(s) / Add(t)`` (constant per output channel; nothing
  else reads the conv) becomes the conv with ``W * s`` and ``b * s`` / ``b + t``;
- **into the convs reading a tensor**: ``Mul(s) / Add(t) -> Conv...`` with a constant per input
  channel scales the readers' weights by ``s`` / adds ``W · t`` to their biases; a shift only
  where every reader has no padding (a padded border would see the shift where it saw zeros);
- **hard-sigmoid chains**: ``Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) becomes
  ``HardSigmoid(x)`` (alpha 1/6, beta 0.5), and ``x * Clip(x + 3, 0, 6) / 6`` becomes
  ``x * HardSigmoid(x)``: onnxruntime runs that as fast as one HardSwish and needs no opset 14.

The outputs move by float rounding only. Only weights stored directly (an initializer or Constant
node, float32/64) change; a shared one is written to a new initializer.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxcomp.graph.edit import ConstEval, NameScope, clear_value_info, get_attr, remove_dead, replace_value
from onnxcomp.graph.nested import subgraph_inputs

SIXTH = 1.0 / 6.0


@dataclass
class Folded:
    """What :func:`fold_affine` did: counts and the conv weights it rewrote."""

    into_outputs: int = 0  # Mul/Add folded into the conv before them
    into_inputs: int = 0  # Mul/Add folded into the convs after them
    hard_sigmoid: int = 0  # Add/Clip/Div chains now HardSigmoid
    weights: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.into_outputs + self.into_inputs + self.hard_sigmoid


class _Graph:
    """The model with its readers, constants and fresh names, kept current while nodes go."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.g = model, model.graph
        self.ev = ConstEval(model)
        self.fresh = NameScope(model)
        self.outputs = {o.name for o in self.g.output}
        self.overridable = {i.name for i in self.g.input}
        self.inits = {t.name: t for t in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for i in set(n.input) | subgraph_inputs(n):
                if i:
                    self.readers[i].append(n)
        self.gone: set[str] = set()  # tensor names no longer produced

    def const(self, name: str) -> np.ndarray | None:
        """A float constant's value (never an overridable initializer)."""
        if not name or name in self.overridable:
            return None
        v = self.ev.value(name)
        return v if v is not None and v.dtype.kind == "f" else None

    def stored(self, name: str) -> np.ndarray | None:
        """A weight stored directly (initializer or Constant node), in float32/64; else None."""
        if name in self.overridable:
            return None
        node = self.producer.get(name)
        if name not in self.inits and (node is None or node.op_type != "Constant"):
            return None
        v = self.ev.value(name)
        return v if v is not None and v.dtype in (np.float32, np.float64) else None

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 and name not in self.outputs else None

    def other(self, node: onnx.NodeProto, x: str) -> str | None:
        """The other input of a two-input node one of whose inputs is ``x``."""
        if len(node.input) != 2 or list(node.input).count(x) != 1:
            return None
        return node.input[1] if node.input[0] == x else node.input[0]

    def write(self, conv: onnx.NodeProto, slot: int, value: np.ndarray, dtype: np.dtype) -> str:
        """Give ``conv`` input ``slot`` the value (in place when only this conv reads the old one)."""
        value = np.ascontiguousarray(value.astype(dtype))
        old = conv.input[slot] if len(conv.input) > slot else ""
        if old and old in self.inits and len(self.readers[old]) == 1:
            replace_value(self.model, old, value)
            self.inits[old] = self.ev.inits[old] = next(t for t in self.g.initializer if t.name == old)
            self.ev.forget(old)
            return old
        name = self.fresh(f"{old}_folded" if old else f"{conv.output[0]}_bias")
        tensor = onnx.numpy_helper.from_array(value, name)
        self.g.initializer.append(tensor)
        self.inits[name] = self.ev.inits[name] = tensor
        while len(conv.input) <= slot:
            conv.input.append("")
        if old:
            self.readers[old].remove(conv)
        conv.input[slot] = name
        self.readers[name].append(conv)
        return name

    def drop(self, node: onnx.NodeProto) -> None:
        for i in {i for i in node.input if i and node in self.readers.get(i, [])}:
            self.readers[i].remove(node)
        self.g.node.remove(node)


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as one number per channel of a [N, C, ...] tensor of ``rank`` dims, or None when
    it broadcasts along any other axis."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return value.reshape(channels).astype(np.float64)


def _conv_parts(gr: _Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None] | None:
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return None
    w = gr.stored(conv.input[1])
    if w is None or w.ndim < 3:
        return None
    b = None
    if len(conv.input) > 2 and conv.input[2]:
        b = gr.stored(conv.input[2])
        if b is None:
            return None
    return w, b


def _into_outputs(gr: _Graph, out: Folded) -> None:
    for conv in list(gr.g.node):
        while (parts := _conv_parts(gr, conv)) is not None:
            w, b = parts
            node = gr.only_reader(conv.output[0])
            if node is None or node.op_type not in ("Mul", "Add") or node.domain not in ("", "ai.onnx"):
                break
            c = gr.other(node, conv.output[0])
            v = None if c is None else gr.const(c)
            v = None if v is None else _per_channel(v, w.shape[0], w.ndim)
            if v is None:
                break
            bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
            if node.op_type == "Mul":
                w2, bias = w.astype(np.float64) * v.reshape(-1, *([1] * (w.ndim - 1))), bias * v
                gr.write(conv, 1, w2, w.dtype)
            else:
                bias = bias + v
            gr.write(conv, 2, bias, w.dtype)
            gr.gone.add(conv.output[0])
            conv.output[0] = node.output[0]
            gr.producer[node.output[0]] = conv
            gr.drop(node)
            out.into_outputs += 1
            out.weights.append(conv.input[1])


def _pads_zero(conv: onnx.NodeProto) -> bool:
    auto = get_attr(conv, "auto_pad", b"NOTSET")  # (bytes from onnx's helper)
    return str(auto, "utf-8") in ("NOTSET", "VALID") and not any(get_attr(conv, "pads", []) or [])


def _into_inputs(gr: _Graph, out: Folded, scale: bool) -> None:
    for node in reversed(list(gr.g.node)):
        ops = ("Mul", "Add") if scale else ("Add",)
        if node.op_type not in ops or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        y = node.output[0]
        readers = gr.readers.get(y, [])
        if not readers or y in gr.outputs or any(r.op_type != "Conv" or r.domain not in ("", "ai.onnx")
                                                 or list(r.input).count(y) != 1 or r.input[0] != y for r in readers):
            continue
        consts = [gr.const(i) for i in node.input]
        if sum(v is not None for v in consts) != 1:
            continue
        k = 0 if consts[0] is not None else 1
        value, x = consts[k], node.input[1 - k]
        plans = []
        for r in readers:
            parts = _conv_parts(gr, r)
            if parts is None:
                break
            w, b = parts
            groups = int(get_attr(r, "group", 1))
            v = _per_channel(value, w.shape[1] * groups, w.ndim)
            if v is None or (node.op_type == "Add" and np.any(v) and not _pads_zero(r)):
                break
            per_out = np.repeat(v.reshape(groups, 1, w.shape[1]), w.shape[0] // groups, axis=1).reshape(
                w.shape[0], w.shape[1], *([1] * (w.ndim - 2)))
            plans.append((r, w, b, per_out))
        else:
            for r, w, b, per_out in plans:
                if node.op_type == "Mul":
                    gr.write(r, 1, w.astype(np.float64) * per_out, w.dtype)
                else:
                    bias = (0.0 if b is None else b.astype(np.float64)) + (w.astype(np.float64) * per_out).sum(
                        axis=tuple(range(1, w.ndim)))
                    gr.write(r, 2, bias, w.dtype)
                gr.readers[y].remove(r)
                r.input[0] = x
                gr.readers[x].append(r)
                out.weights.append(r.input[1])
            gr.gone.add(y)
            gr.drop(node)
            out.into_inputs += 1


def _scalar(gr: _Graph, name: str) -> float | None:
    v = gr.const(name)  # a one-value constant's value
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _clip_0_6(gr: _Graph, node: onnx.NodeProto) -> bool:
    if node.op_type != "Clip":
        return False
    if len(node.input) > 1:  # opset 11+: bounds as inputs
        if len(node.input) < 3 or not node.input[1] or not node.input[2]:
            return False
        return (_scalar(gr, node.input[1]), _scalar(gr, node.input[2])) == (0.0, 6.0)
    return (get_attr(node, "min"), get_attr(node, "max")) == (0.0, 6.0)


def _by_six(gr: _Graph, node: onnx.NodeProto | None, x: str) -> bool:
    """``node`` divides ``x`` by 6 (or multiplies it by 1/6)."""
    if node is None or node.op_type not in ("Div", "Mul") or gr.other(node, x) is None:
        return False
    if node.op_type == "Div":
        return node.input[0] == x and _scalar(gr, node.input[1]) == 6.0
    c = _scalar(gr, gr.other(node, x))
    return c is not None and abs(c - SIXTH) <= 1e-7


def _hard_sigmoid(gr: _Graph, out: Folded) -> None:
    for add in list(gr.g.node):
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        k = next((i for i in (0, 1) if _scalar(gr, add.input[i]) == 3.0), None)
        if k is None or gr.const(add.input[1 - k]) is not None:
            continue
        x = add.input[1 - k]
        clip = gr.only_reader(add.output[0])
        if clip is None or not _clip_0_6(gr, clip) or clip.input[0] != add.output[0]:
            continue
        nxt = gr.only_reader(clip.output[0])
        if _by_six(gr, nxt, clip.output[0]):  # Clip(x + 3, 0, 6) / 6
            chain, result, times_x = [add, clip, nxt], nxt.output[0], False
        elif nxt is not None and nxt.op_type == "Mul" and gr.other(nxt, clip.output[0]) == x and \
                _by_six(gr, last := gr.only_reader(nxt.output[0]), nxt.output[0]):  # x * Clip(x + 3, 0, 6) / 6
            chain, result, times_x = [add, clip, nxt, last], last.output[0], True
        else:
            continue
        hs = gr.fresh(f"{x}_hardsigmoid") if times_x else result
        new = [helper.make_node("HardSigmoid", [x], [hs], name=gr.fresh(f"{add.name or x}_hardsigmoid"),
                                alpha=SIXTH, beta=0.5)]
        if times_x:
            new.append(helper.make_node("Mul", [x, hs], [result], name=gr.fresh(f"{add.name or x}_hardswish")))
        for n in chain[:-1]:
            gr.gone.update(n.output)
            gr.drop(n)
        at = list(gr.g.node).index(chain[-1])  # the new nodes take the last one's place
        gr.drop(chain[-1])
        for i, n in enumerate(new):
            gr.g.node.insert(at + i, n)
            gr.producer[n.output[0]] = n
            for name in set(n.input):
                gr.readers[name].append(n)
        out.hard_sigmoid += 1


def fold_affine(model: onnx.ModelProto, scale_inputs: bool = True) -> Folded:
    """Fold constant scales/shifts into the convs next to them and hard-sigmoid chains into
    HardSigmoid, in place (see the module docstring); what was done. ``scale_inputs=False``
    leaves the scales before convs (scaling a kernel's columns spreads a clustered row's values)."""
    out = Folded()
    gr = _Graph(model)
    _into_outputs(gr, out)
    _hard_sigmoid(gr, out)
    _into_inputs(gr, out, scale_inputs)
    if out.total:
        remove_dead(model)
        clear_value_info(model, gr.gone)
        out.weights = list(dict.fromkeys(w for w in out.weights if w in {t.name for t in model.graph.initializer}))
    return out
