"""What the quantize pass does to each node, decided before any work (no model is changed).

Layers (a weight the pass can quantize): MatMul/Gemm with a constant 2-D weight go to MatMulNBits
(``nbits``) or QDQ int8 (``qdq``), Conv to QDQ int8 when activations are quantized; Gather over a
constant table to GatherBlockQuantized (``gather``); with ``store_int8`` the weights of ops with
no integer kernel (LSTM/GRU/RNN, Einsum, batched MatMul, ConvTranspose) and of float layers are
stored as int8 (``stored``). Every other weight is skipped with a reason.

Quantization points (activations stored as uint8 between integer kernels): the float inputs of
every integer node (a QDQ layer, and the elementwise ops onnxruntime runs on integers between
them: Add, Mul, Concat, pooling, Sigmoid, LeakyRelu, when every input comes from an integer node
or a fixed-range gate and an integer node reads the output) and their outputs; an output read
only by a Relu/Clip is quantized after it instead (onnxruntime then drops the activation into the
kernel). Graph outputs stay float.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.config.quantize import QuantizeConfig
from onnxcomp.graph.edit import get_attr
from onnxcomp.graph.weights import Use, Weight, find_weights
from onnxcomp.passes.base import Change, matches, skip
from onnxcomp.passes.quantize import stored
from onnxcomp.passes.quantize.prep import opset_of

INT8_ELEMENTWISE = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu")
ACTIVATIONS = ("Relu", "Clip")
BOUNDED = ("Sigmoid", "HardSigmoid", "Tanh")  # outputs in a fixed range (see _bounded)
MOVES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "Resize", "Slice", "Split",
         "DepthToSpace", "SpaceToDepth")  # onnxruntime moves uint8 through these between Q/DQ pairs
ISLAND_K = 64  # an integer layer alone among float ops pays two conversions per value: below this
# many products per output value (16 for vit_digits' patch embedding) that is more than it saves
QDQ_OPSET = 13  # per-channel DequantizeLinear (axis)


@dataclass
class Layer:
    """One weight to quantize: how, and the node (by its output name) that uses it."""

    weight: Weight
    kind: str  # "nbits", "qdq", "gather" or "stored" (int8 + DequantizeLinear, :mod:`.stored`)
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
    tables = _gather_tables(model, cfg) if cfg.embeddings else []
    opset = opset_of(model)
    for w in report:
        if w.is_bias:
            continue
        why = matches(w, cfg.include, cfg.exclude)
        if why is None and w.size < cfg.min_params:
            why = f"fewer than {cfg.min_params} parameters"
        if why is None and any(t.name == w.name for _, t in tables):
            continue  # GatherBlockQuantized, below
        selected = why is None
        if why is None and w.shared:
            why = "shared by several nodes"
        if why is None and w.dtype != np.float32:  # e.g. onnxruntime's float16 converter's output
            why = (f"{w.dtype} weights: the integer kernels take float32 layers (quantize the float32 export; "
                   f"cluster and prune keep {w.dtype})")
        elif why is None and w.role in ("gemm_b", "matmul_b") and len(w.shape) == 2:
            why = _gemm_ok(w)
            kind = "nbits" if cfg.nbits else "qdq"
        elif why is None and w.role == "conv" and len(w.shape) in (3, 4, 5):
            kind = "qdq"
            if not act:
                why = "no onnxruntime kernel runs a low-bit Conv with float activations (use --activations int8)"
        elif why is None:
            why = f"{w.role} weights have no integer kernel" + \
                ("" if cfg.store_int8 or w.role not in stored.ROLES else
                 " (--store-int8 stores them as int8: smaller, dequantized at each run)")
        if why is not None and selected and cfg.store_int8 and stored.why_not(w, model, opset) is None:
            why, kind = None, "stored"
        if why is not None:
            out.skipped.append(skip(w, why))
            continue
        out.layers.append(Layer(w, kind, w.uses[0].node.output[0]))
    if cfg.embeddings:
        for node, t in tables:
            tw = Weight(t.name, "initializer", tuple(t.dims), np.dtype(np.float32), "gather", 0, 1,
                        uses=[Use(node, 0, "gather")], holder=t)
            out.layers.append(Layer(tw, "gather", node.output[0]))
    if act:
        for layer in _islands(model, [l for l in out.layers if l.kind == "qdq"]):
            out.layers.remove(layer)
            if cfg.store_int8 and stored.why_not(layer.weight, model, opset) is None:
                out.layers.append(Layer(layer.weight, "stored", layer.output))  # int8 bytes, float compute
                continue
            out.skipped.append(skip(layer.weight, f"an isolated layer with {ISLAND_K} or fewer products per output "
                                                  f"(its neighbours run in float: converting its input and output "
                                                  f"would cost more than its integer kernel saves)"))
        out.points, out.integer = _points(model, {l.output for l in out.layers if l.kind == "qdq"}, cfg)
    return out


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


def _bounded(node: onnx.NodeProto, const: set[str]) -> bool:
    """Whether the node's output lies in a fixed range whatever its input (a gate: Sigmoid,
    HardSigmoid, Tanh, a Clip with both ends), so 8 bits keep it to 1/510 of that range."""
    if node.op_type == "Clip":
        return (len(node.input) > 2 and node.input[1] in const and node.input[2] in const) or \
            (get_attr(node, "min", None) is not None and get_attr(node, "max", None) is not None)
    return node.op_type in BOUNDED


def _points(model: onnx.ModelProto, qdq_outputs: set[str], cfg: QuantizeConfig) -> tuple[list[str], set[str]]:
    """(the activation tensors to quantize in graph order, the outputs of the nodes that run on
    integers, the Relu/Clip folded into them included); see the module doc.

    An elementwise op runs on integers only between integer nodes: each of its inputs comes from
    one (through moves and Relu/Clip) or from a gate with a fixed range (an SE block's HardSigmoid),
    and its output reaches one. Anywhere else it adds a conversion and the rounding error of a
    tensor no kernel reads as integers (a decomposed GELU's x * x * x, a LayerNorm's squares and
    its 1/sqrt(variance): measured on magika's file-type model, top-1 agreement 0.39 -> 0.95)."""
    g = model.graph
    live, const = _float_inputs(model)
    producer = {o: n for n in g.node for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            if x:
                consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    elementwise = INT8_ELEMENTWISE if cfg.residual == "int8" else tuple(o for o in INT8_ELEMENTWISE if o != "Add")
    passes = set(MOVES) | set(ACTIVATIONS)
    integer: set[str] = set(qdq_outputs)  # first outputs of the nodes that run on integers

    def comes_from_integer(t: str) -> bool:
        while t in producer and producer[t].op_type in passes and producer[t].output[0] not in integer:
            if _bounded(producer[t], const):
                return True
            t = producer[t].input[0]
        return t in producer and (producer[t].output[0] in integer or _bounded(producer[t], const))

    ops = []
    for n in g.node:  # forward: every input already integer
        ins = [x for x in n.input if x]
        if n.op_type in elementwise and ins and all(x in live and comes_from_integer(x) for x in ins):
            integer.add(n.output[0])
            ops.append(n)

    def reaches_integer(t: str, depth: int = 0) -> bool:
        for c in consumers.get(t, []):
            if c.output and c.output[0] in integer and (c.output[0] not in qdq_outputs or c.input[0] == t):
                return True
            if c.op_type in passes and c.input[0] == t and depth < 32 and \
                    any(reaches_integer(o, depth + 1) for o in c.output if o):
                return True
        return False

    for n in reversed(ops):  # backward: keep those whose output an integer node reads
        if not reaches_integer(n.output[0]):
            integer.discard(n.output[0])
    points: set[str] = set()
    integer_nodes: set[str] = set()

    def after_activation(t: str) -> str:
        users = consumers.get(t, [])
        while len(users) == 1 and users[0].op_type in ACTIVATIONS and t not in outputs:
            t = users[0].output[0]
            integer_nodes.add(t)
            users = consumers.get(t, [])
        return t

    for n in g.node:
        if not n.output or n.output[0] not in integer:
            continue
        data = n.input[:1] if n.output[0] in qdq_outputs else [x for x in n.input if x]
        points.update(x for x in data if x in live)
        integer_nodes.add(n.output[0])
        points.add(after_activation(n.output[0]))
    order = [i.name for i in g.input] + [o for n in g.node for o in n.output]
    return [t for t in order if t in points and t not in outputs and t in live], integer_nodes
