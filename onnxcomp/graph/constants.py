"""Where each constant tensor of a graph lives: initializers, ``Constant`` nodes, ``ConstantOfShape``
fills, seen through ``Identity`` and constant-shape ``Reshape`` chains, without decoding any data."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.io import tensor_array


MOVES = ("Slice", "Concat", "Split", "Transpose", "Unsqueeze", "Squeeze", "Reshape", "Identity")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
    return None  # value_float(s)/value_int(s)/sparse_value: not weight-like


def constant_of_shape_value(node: onnx.NodeProto) -> float:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t).reshape(-1)[0]
    return np.float32(0.0)


class Constants:
    """Where each constant tensor of a graph lives (without decoding any data)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {t.name: t for t in graph.initializer}
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                self.producers[out] = node

    def shape_values(self, name: str) -> tuple[int, ...] | None:
        if name in self.initializers:
            return tuple(int(v) for v in tensor_array(self.initializers[name]).reshape(-1))
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            t = constant_tensor(node)
            if t is not None:
                return tuple(int(v) for v in numpy_helper.to_array(t).reshape(-1))
        return None

    def moved_sources(self, name: str, depth: int = 0) -> list[str] | None:
        """The initializers whose values ``name`` is assembled from by data movement alone (Slice,
        Concat, Split, Transpose, (Un)Squeeze, Reshape with constant indices and shapes: torch's
        dynamo exporter reorders an LSTM's gates so), or None when anything else computes it."""
        node = self.producers.get(name)
        if node is None or node.op_type not in MOVES or depth > 16:
            return None
        out: list[str] = []
        for i, inp in enumerate(node.input):
            if not inp:
                continue
            if inp in self.initializers:
                if i == 0 or node.op_type == "Concat":  # the data (the other inputs: indices, shapes)
                    out.append(inp)
                continue
            if i > 0 and node.op_type != "Concat" and self.shape_values(inp) is not None:
                continue  # a Constant node's indices or shape
            sub = self.moved_sources(inp, depth + 1)
            if sub is None:
                return None
            out += sub
        return list(dict.fromkeys(out))

    def resolve(self, name: str) -> tuple[str, str, object, tuple[int, ...], int, tuple | None] | None:
        """(tensor name, source, holder, stored shape, onnx dtype, view shape) of a constant.

        Follows Identity, and Reshape with a constant target shape (``view shape`` is then the
        shape the consumer sees; None when it sees the stored shape).
        """
        hit = self._resolve(name)
        if hit is None or not self._reshape_chain:
            return None if hit is None else (*hit, None)
        view = hit[3]
        for target in reversed(self._reshape_chain):
            view = reshaped(view, target)
            if view is None:
                return None
        return (*hit, view)

    def _resolve(self, name: str):
        self._reshape_chain: list[tuple[int, ...]] = []
        seen = 0
        while seen < 16:
            seen += 1
            if name in self.initializers:
                t = self.initializers[name]
                return name, "initializer", t, tuple(t.dims), t.data_type
            node = self.producers.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name = node.input[0]
                continue
            if node.op_type == "Reshape" and len(node.input) == 2:
                target = self.shape_values(node.input[1])
                if target is None:
                    return None
                self._reshape_chain.append(target)
                name = node.input[0]
                continue
            if node.op_type == "Constant":
                t = constant_tensor(node)
                if t is None:
                    return None
                return name, "constant", node, tuple(t.dims), t.data_type
            if node.op_type == "ConstantOfShape":
                shape = self.shape_values(node.input[0]) if node.input else ()
                if shape is None:
                    return None
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                dtype = value.data_type if value is not None else onnx.TensorProto.FLOAT
                return name, "constant_of_shape", node, shape, dtype
            return None
        return None


def reshaped(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    """numpy-style Reshape semantics (0 copies the input dim, one -1 is inferred)."""
    out = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(target)]
    total = int(np.prod(shape, dtype=np.int64))
    if out.count(-1) == 1:
        rest = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if rest == 0 or total % rest:
            return None
        out[out.index(-1)] = total // rest
    if any(d < 0 for d in out) or int(np.prod(out, dtype=np.int64)) != total:
        return None
    return tuple(out)


def load_time_constants(graph: onnx.GraphProto) -> set[str]:
    """Tensors onnxruntime can compute when it loads the model: initializers, and the outputs of
    nodes that read nothing else (the encodings' decoders)."""
    known = {t.name for t in graph.initializer}
    for node in graph.node:  # topological order
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if not subgraph and all(i in known for i in node.input if i):
            known.update(o for o in node.output if o)
    return known
