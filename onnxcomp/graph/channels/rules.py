"""Op rules for coupled-channel discovery: how each op moves channel ids from inputs to outputs.

One method per op family. A rule either sets the layout of the node's outputs (pass-through,
index mapping, new ids for a producer) or calls :meth:`Walker.opaque`, which freezes every channel
reaching the node with a one-line reason. Ops without a rule are opaque. Never guess.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.io import default_opset
from onnxcomp.graph.channels.types import FIXED, ChannelGraph, Consumer, IndexEdit, Layout, Param, Producer
from onnxcomp.graph.channels.heads import HeadRules
from onnxcomp.graph.channels.chunks import ChunkRules
from onnxcomp.graph.channels.maps import MapRules
from onnxcomp.graph.channels.reshape import ReshapeRules
from onnxcomp.graph.axes import out_channels
from onnxcomp.graph.edit import ConstEval, get_attr

UNARY = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish",
         "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf",
         "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "CastLike", "Not", "Clip",
         "IsNaN", "IsInf", "QuickGelu"}
CONTRIB = {"Gelu", "QuickGelu", "BiasGelu", "FastGelu", "BiasAdd"}  # onnxruntime's elementwise ops (com.microsoft)
POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
ELTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Greater",
           "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BiasGelu", "FastGelu", "BiasAdd"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
WHY = {"LRN": "normalises across neighbouring channels", "DepthToSpace": "moves channels into space",
       "SpaceToDepth": "moves space into channels", "GroupNormalization": "normalises groups of channels",
       "Gather": "indexes tensors (not supported)", "Einsum": "contracts arbitrary axes (not supported)"}


class Walker(HeadRules, MapRules, ReshapeRules, ChunkRules):
    """Visits the nodes in graph order and fills a :class:`ChannelGraph`."""

    def __init__(self, cg: ChannelGraph, ev: ConstEval, shapes: dict, weights: dict) -> None:
        self.cg, self.ev, self.shapes, self.weights = cg, ev, shapes, weights
        self.L = cg.layouts
        self.opset = default_opset(cg.model)
        self.free_shapes: dict | None = None  # shapes inferred without input sizes (static dims only)
        self.deferred: list = []  # (Shape node, channels, the Reshapes / Slices its count reaches)
        self.uses: dict[str, list] = {}  # tensor -> the nodes that read it
        for n in cg.model.graph.node:
            for i in n.input:
                if i:
                    self.uses.setdefault(i, []).append(n)
        self.used = set(self.uses) | {o.name for o in cg.model.graph.output}

    # ---------------------------------------------------------------- driver and helpers
    def run(self) -> None:
        """Visit every node in order, then freeze what subgraphs and graph outputs see."""
        g = self.cg.model.graph
        inner = set()
        for node in g.node:
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    inner.update(i for n in sub.node for i in n.input)
            self.node = node
            if node.op_type in PRODUCERS or any(i in self.L for i in node.input):
                rule = getattr(self, f"r_{node.op_type}", self.default) if node.domain in ("", "ai.onnx") or \
                    node.op_type in CONTRIB else self.default  # (com.microsoft.nchwc's Conv is not a Conv)
                try:
                    rule(node)
                except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
                    # an unusual form of a known op: freeze what it touches rather than guess
                    for o in node.output:
                        self.L.pop(o, None)
                    self.opaque(node, f"unsupported form ({type(exc).__name__}: {exc})")
        for shape, ids, ends in self.deferred:  # a count read at run time reached a node no rule took in
            if any(e.output[0] not in self.L for e in ends):
                self.cg.freeze(ids, f"{self.label(shape)}: reads the channel count at run time")
        for name in inner & set(self.L):
            self.cg.freeze(self.L[name].ids, f"tensor {name} is read inside a subgraph (If/Loop/Scan)")
        for out in g.output:
            if out.name in self.L:
                self.cg.freeze(self.L[out.name].ids, f"graph output {out.name}")

    def label(self, node: onnx.NodeProto) -> str:
        return f"{node.op_type} {node.name or node.output[0]}"

    def opaque(self, node: onnx.NodeProto, why: str) -> None:
        for i in node.input:
            if i in self.L:
                self.cg.freeze(self.L[i].ids, f"{self.label(node)}: {why}")

    def default(self, node: onnx.NodeProto) -> None:
        self.opaque(node, WHY.get(node.op_type, f"no channel rule for {node.op_type}"))

    def shape(self, name: str) -> tuple | None:
        s = self.shapes.get(name)
        if s is None and self.ev.is_constant(name):
            v = self.ev.value(name)
            s = None if v is None else v.shape
        return None if s is None else tuple(s)

    def rank(self, name: str) -> int | None:
        lay = self.L.get(name)
        if lay is not None and lay.rank is not None:
            return lay.rank
        s = self.shape(name)
        return None if s is None else len(s)

    def const(self, node: onnx.NodeProto, slot: int) -> np.ndarray | None:
        if slot >= len(node.input) or not node.input[slot]:
            return None
        return self.ev.value(node.input[slot])

    def out(self, name: str, axis: int, ids: np.ndarray, rank: int | None) -> None:
        if name:
            self.L[name] = Layout(axis, np.asarray(ids, np.int64), rank)

    def passthrough(self, node: onnx.NodeProto, lay: Layout, axis: int | None = None, rank=None) -> None:
        for o in node.output:
            self.out(o, lay.axis if axis is None else axis, lay.ids, lay.rank if rank is None else rank)

    def fixed(self, name: str, axis: int) -> np.ndarray | None:
        s = self.shape(name)
        if s is None or axis >= len(s) or not isinstance(s[axis], int) or s[axis] <= 0:
            return None
        return np.full(s[axis], FIXED, np.int64)

    # ---------------------------------------------------------------- producers / consumers
    def _weight(self, node: onnx.NodeProto, slot: int):
        w = self.weights.get((id(node), slot))
        if w is None:
            self.opaque(node, "its weight is not a constant float tensor")
        elif self._read_apart(node, w):
            return None
        return w

    def _read_apart(self, node: onnx.NodeProto, w) -> bool:
        """A weight shared by ops that read it on different axes (a MatMul and a transB Gemm):
        its channels cannot follow both; the node is opaque."""
        if len({(u.role, get_attr(u.node, "transB", 0)) for u in w.uses}) > 1:
            self.opaque(node, f"its weight {w.name} is shared with an op that reads it on other axes")
            return True
        return False

    def _consume(self, node, w, lay: Layout | None, want_axis: int) -> None:
        if lay is None:
            return
        if lay.axis != want_axis:
            self.cg.freeze(lay.ids, f"{self.label(node)}: channels arrive on axis {lay.axis}, not {want_axis}")
            return
        self.cg.consumers.append(Consumer(node, w, 1, w.in_axis, node.input[0], lay.ids))

    def _produce(self, node, w, slot: int, axis_out: int, rank: int | None, bias_slot: int | None) -> None:
        ids = self.cg.new_ids(out_channels(w))  # a grouped ConvTranspose: group x the kernel's axis 1
        self.cg.producers.append(Producer(node, w, slot, w.out_axis, ids))
        if bias_slot is not None:
            self._bias(node, bias_slot, ids)
        self.out(node.output[0], axis_out, ids, rank)

    def _bias(self, node, slot: int, ids: np.ndarray) -> None:
        if slot < len(node.input) and node.input[slot]:
            s = self.shape(node.input[slot])
            if s and s[-1] == len(ids):
                self.cg.params.append(Param(node, slot, len(s) - 1, ids))

    def r_Conv(self, node: onnx.NodeProto, transpose: bool = False) -> None:
        w = self._weight(node, 1)
        if w is None:
            return
        lay = self.L.get(node.input[0])
        group = int(get_attr(node, "group", 1))
        rank = len(w.shape)
        c_in = w.shape[0] if transpose else w.shape[1] * group
        if group == 1:
            self._consume(node, w, lay, 1)
            self._produce(node, w, 1, 1, rank, 2)
            return
        per_group_out = w.shape[1] if transpose else w.shape[0] // group
        depthwise = group == c_in and (w.shape[1] == 1 if not transpose else True)
        if depthwise and (lay is None or lay.axis != 1 or len(lay.ids) != c_in):
            if lay is not None:
                self.cg.freeze(lay.ids, f"{self.label(node)}: depthwise conv on an unexpected layout")
            self.out(node.output[0], 1, np.full(per_group_out * group, FIXED, np.int64), rank)
            return
        if not depthwise:
            why = f"{self.label(node)}: grouped conv (group={group}) is not supported"
            if lay is not None:
                self.cg.freeze(lay.ids, why)
            if transpose:  # an output channel reads one column of one group's rows: nothing to score or cut
                self.out(node.output[0], 1, np.full(out_channels(w), FIXED, np.int64), rank)
                return
            self._produce(node, w, 1, 1, rank, 2)
            self.cg.freeze(self.cg.producers[-1].ids, why)
            return
        ids = np.repeat(lay.ids, per_group_out)  # depthwise: channels pass through (times the multiplier)
        self.cg.params.append(Param(node, 1, 0, lay.ids if transpose else ids))
        self._bias(node, 2, ids)
        self.cg.edits.append(IndexEdit(node, "group", [lay.ids]))
        self.out(node.output[0], 1, ids, rank)

    def r_ConvTranspose(self, node: onnx.NodeProto) -> None:
        self.r_Conv(node, transpose=True)

    def r_Gemm(self, node: onnx.NodeProto) -> None:
        w = self._weight(node, 1)
        if w is None:
            return
        lay = self.L.get(node.input[0])
        if get_attr(node, "transA", 0):
            if lay is not None:
                self.cg.freeze(lay.ids, f"{self.label(node)}: Gemm with transA=1 is not supported")
        else:
            self._consume(node, w, lay, 1)
        self._produce(node, w, 1, 1, 2, 2)

    # ---------------------------------------------------------------- channel-wise ops
    def _data(self, node: onnx.NodeProto) -> Layout | None:
        return self.L.get(node.input[0]) if node.input else None

    def r_unary(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        if lay is not None:
            self.passthrough(node, lay)

    def r_pool(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        if lay is None:
            return
        if lay.axis != 1:
            return self.opaque(node, f"pools a tensor whose channels are on axis {lay.axis}")
        if len(node.output) > 1 and node.output[1] in self.used:
            return self.opaque(node, "its indices output counts channels")
        self.out(node.output[0], 1, lay.ids, lay.rank)

    def r_BatchNormalization(self, node: onnx.NodeProto, slots=(1, 2, 3, 4)) -> None:
        lay = self._data(node)
        if lay is None:
            return
        if lay.axis != 1 or any(o in self.used for o in node.output[1:]):
            return self.opaque(node, "not an inference-mode normalisation over axis 1")
        for slot in slots:
            if slot < len(node.input) and node.input[slot]:
                if not self.ev.is_constant(node.input[slot]):
                    return self.opaque(node, f"its input {slot} is not a constant")
                self.cg.params.append(Param(node, slot, 0, lay.ids))
        self.out(node.output[0], 1, lay.ids, lay.rank)

    def r_InstanceNormalization(self, node: onnx.NodeProto) -> None:
        self.r_BatchNormalization(node, slots=(1, 2))

    def r_eltwise(self, node: onnx.NodeProto) -> None:
        ranks = [self.rank(i) for i in node.input if i]
        if any(r is None for r in ranks):
            return self.opaque(node, "an input has an unknown rank")
        R = max(ranks)
        tracked = [(k, i, self.L[i]) for k, i in enumerate(node.input) if i in self.L]
        axes = {lay.axis + R - (lay.rank if lay.rank is not None else self.rank(i)) for _, i, lay in tracked}
        if len(axes) != 1:
            return self.opaque(node, "its inputs carry channels on different axes")
        A = axes.pop()
        C = max(len(lay.ids) for _, _, lay in tracked)
        out = None
        for _, _, lay in tracked:
            if len(lay.ids) == C:
                out = lay.ids if out is None else out
                if lay.ids is not out:
                    self.cg.tie(out, lay.ids, f"{self.label(node)}: ties channels to ones that cannot be pruned")
            elif len(lay.ids) != 1:
                return self.opaque(node, f"broadcasts {len(lay.ids)} channels against {C}")
        for k, name in enumerate(node.input):
            if not name or name in self.L:
                continue
            s = self.shape(name)
            if s is None:
                return self.opaque(node, f"input {name} has an unknown shape")
            pos = A - (R - len(s))
            dim = s[pos] if pos >= 0 else 1
            if dim == 1:
                continue
            if dim != C or not self.ev.is_constant(name):
                return self.opaque(node, f"input {name} has {dim} channels that no rule tracks")
            self.cg.params.append(Param(node, k, pos, out))
        for o in node.output:
            self.out(o, A, out, R)


for _op in UNARY:
    setattr(Walker, f"r_{_op}", Walker.r_unary)
for _op in POOL:
    setattr(Walker, f"r_{_op}", Walker.r_pool)
for _op in ELTWISE:
    setattr(Walker, f"r_{_op}", Walker.r_eltwise)
for _op in REDUCE:
    setattr(Walker, f"r_{_op}", Walker.r_reduce)

