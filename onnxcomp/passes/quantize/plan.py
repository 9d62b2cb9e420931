"""What the quantize pass does to each node, decided before any work (no model is changed).

Layers (a weight the pass can quantize): MatMul/Gemm with a constant 2-D weight go to MatMulNBits
(``nbits``) or QDQ int8 (``qdq``), Conv to QDQ int8 when activations are quantized; Gather over a
constant table to GatherBlockQuantized (``gather``). Every other weight is skipped with a reason.

Quantization points (activations stored as uint8 between integer kernels): the float inputs of
every integer node (a QDQ layer, and the elementwise ops onnxruntime runs on integers between
them: Add, Mul, Concat, pooling, Sigmoid, LeakyRelu) and their outputs; an output read only by a
Relu/Clip is quantized after it instead (onnxruntime then drops the activation into the kernel).
Graph outputs stay float.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.config.quantize import QuantizeConfig
from onnxcomp.graph.edit import get_attr
from onnxcomp.graph.weights import Use, Weight, find_weights
from onnxcomp.passes.base import Change, matches, skip

INT8_ELEMENTWISE = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu")
ACTIVATIONS = ("Relu", "Clip")
MOVES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Slice", "Split",
         "DepthToSpace", "SpaceToDepth")  # onnxruntime moves uint8 through these between Q/DQ pairs
ISLAND_K = 64  # an integer layer alone among float ops pays two conversions per value: below this
# many products per output value (16 for vit_digits' patch embedding) that is more than it saves
QDQ_OPSET = 13  # per-channel DequantizeLinear (axis)


@dataclass
class Layer:
    """One weight to quantize: how, and the node (by its output name) that uses it."""

    weight: Weight
    kind: str  # "nbits", "qdq" or "gather"
    output: str


@dataclass
class QuantPlan:
    layers: list[Layer] = field(default_factory=list)
    points: list[str] = field(default_factory=list)  # activation tensors to quantize, graph order
    integer: set[str] = field(default_factory=set)  # first outputs of the nodes that run on integers
    skipped: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prepared: onnx.ModelProto | None = None  # the model the plan is for (prepared copy of the input)


def _float_inputs(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(float activation tensors, constant tensors) as far as the graph says."""
    g = model.graph
    const = {t.name for t in g.initializer}
    live = {i.name for i in g.input} - const
    for node in g.node:
        if any(i in live for i in node.input if i):
            live.update(o for o in node.output if o)
        else:
            const.update(o for o in node.output if o)
    return live, const


def _gemm_ok(w: Weight) -> str | None:
    node = w.uses[0].node
    if node.op_type == "Gemm" and get_attr(node, "transA", 0):
        return "Gemm with transA=1 (no integer kernel takes a transposed input)"
    return None


def _gather_tables(model: onnx.ModelProto, cfg: QuantizeConfig) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(Gather node, table initializer) for Gathers on axis 0 over a constant float 2-D table."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    out = []
    for n in model.graph.node:
        if n.op_type != "Gather" or get_attr(n, "axis", 0) != 0 or n.input[0] not in inits:
            continue
        t = inits[n.input[0]]
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and readers[t.name] == 1 and \
                t.dims[0] * t.dims[1] >= cfg.min_params and t.dims[1] % 2 == 0:
            out.append((n, t))
    return out


def plan(model: onnx.ModelProto, cfg: QuantizeConfig) -> QuantPlan:
    """The layers, quantization points and opset of the pass (see the module doc)."""
    out = QuantPlan()
    act = cfg.activations == "int8"
    report = find_weights(model)
    for w in report:
        if w.is_bias:
            continue
        why = matches(w, cfg.include, cfg.exclude)
        if why is None and w.size < cfg.min_params:
            why = f"fewer than {cfg.min_params} parameters"
        if why is None and w.shared:
            why = "shared by several nodes"
        if why is None and w.role in ("gemm_b", "matmul_b") and len(w.shape) == 2:
            why = _gemm_ok(w)
            kind = "nbits" if cfg.nbits else "qdq"
        elif why is None and w.role == "conv" and len(w.shape) == 4:
            kind = "qdq"
            if not act:
                why = "no onnxruntime kernel runs a low-bit Conv with float activations (use --activations int8)"
        elif why is None:
            why = f"{w.role} weights have no integer kernel"
        if why is not None:
            out.skipped.append(skip(w, why))
            continue
        out.layers.append(Layer(w, kind, w.uses[0].node.output[0]))
    if cfg.embeddings:
        for node, t in _gather_tables(model, cfg):
            tw = Weight(t.name, "initializer", tuple(t.dims), np.dtype(np.float32), "gather", 0, 1,
                        uses=[Use(node, 0, "gather")], holder=t)
            out.layers.append(Layer(tw, "gather", node.output[0]))
    if act:
        for layer in _islands(model, [l for l in out.layers if l.kind == "qdq"]):
            out.layers.remove(layer)
            out.skipped.append(skip(layer.weight, f"an isolated layer with {ISLAND_K} or fewer products per output "
                                                  f"(its neighbours run in float: converting its input and output "
                                                  f"would cost more than its integer kernel saves)"))
        out.points, out.integer = _points(model, {l.output for l in out.layers if l.kind == "qdq"}, cfg)
    return out


def _near_layers(g: onnx.GraphProto, qdq_outputs: set[str]) -> set[int]:
    """ids of the nodes reachable from a QDQ layer through ops that run on integers: only there
    do elementwise ops run on integers (elsewhere they would add conversions and error)."""
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    passable = set(INT8_ELEMENTWISE) | set(ACTIVATIONS) | set(MOVES)
    stack = [producer[o] for o in qdq_outputs if o in producer]
    seen = {id(n) for n in stack}
    while stack:
        node = stack.pop()
        for m in [producer[x] for x in node.input if x in producer] + \
                [r for o in node.output for r in readers.get(o, [])]:
            if id(m) not in seen and m.op_type in passable:
                seen.add(id(m))
                stack.append(m)
    return seen


def _islands(model: onnx.ModelProto, layers: list[Layer]) -> list[Layer]:
    """QDQ layers with no other QDQ layer reachable through ops that run on integers between them,
    and a short reduction (at most :data:`ISLAND_K` products per output value)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {l.output for l in layers}
    passable = set(INT8_ELEMENTWISE) | set(ACTIVATIONS) | set(MOVES)

    def reaches(start: onnx.NodeProto) -> bool:
        seen, stack = {id(start)}, [start]
        while stack:
            node = stack.pop()
            near = [producer[x] for x in node.input if x in producer] + \
                [r for o in node.output for r in readers.get(o, [])]
            for m in near:
                if id(m) in seen:
                    continue
                seen.add(id(m))
                if m.output and m.output[0] in outputs:
                    return True
                if m.op_type in passable:
                    stack.append(m)
        return False

    out = []
    for layer in layers:
        w = layer.weight
        k = int(np.prod(w.shape[1:])) if w.role == "conv" else w.shape[w.in_axis]
        if k <= ISLAND_K and not reaches(producer[layer.output]):
            out.append(layer)
    return out


def _points(model: onnx.ModelProto, qdq_outputs: set[str], cfg: QuantizeConfig) -> tuple[list[str], set[str]]:
    """(the activation tensors to quantize in graph order, the outputs of the nodes that run on
    integers, the Relu/Clip folded into them included); see the module doc."""
    g = model.graph
    live, const = _float_inputs(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            if x:
                consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    points: set[str] = set()
    integer_nodes: set[str] = set()
    elementwise = INT8_ELEMENTWISE if cfg.residual == "int8" else tuple(o for o in INT8_ELEMENTWISE if o != "Add")

    def after_activation(t: str) -> str:
        users = consumers.get(t, [])
        while len(users) == 1 and users[0].op_type in ACTIVATIONS and t not in outputs:
            t = users[0].output[0]
            integer_nodes.add(t)
            users = consumers.get(t, [])
        return t

    near = _near_layers(g, qdq_outputs)
    for n in g.node:
        integer = n.output[0] in qdq_outputs if n.output else False
        if n.op_type in elementwise and id(n) in near:
            ins = [x for x in n.input if x]
            integer = bool(ins) and all(x in live for x in ins)  # a constant operand stays float
        if not integer:
            continue
        data = n.input[:1] if n.output[0] in qdq_outputs else [x for x in n.input if x]
        points.update(x for x in data if x in live)
        integer_nodes.add(n.output[0])
        points.add(after_activation(n.output[0]))
    order = [i.name for i in g.input] + [o for n in g.node for o in n.output]
    return [t for t in order if t in points and t not in outputs and t in live], integer_nodes
