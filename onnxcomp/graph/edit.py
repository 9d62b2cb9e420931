"""Small graph-editing helpers: fold constants, set inputs and attributes, fresh names, clean up.

Channel slicing across many tensors at once (structured pruning) is in :mod:`onnxcomp.graph.slicing`.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.io import tensor_array

FOLDABLE = {"Identity", "Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast",
            "Unsqueeze", "Squeeze", "Gather", "Add", "Sub", "Mul", "Div", "Neg", "Range", "Expand",
            "Flatten", "Tile", "Sqrt", "Reciprocal", "Abs", "Min", "Max", "Mod"}


class ConstEval:
    """Values of constant tensors: initializers, Constant nodes, and small constant subgraphs.

    A tensor is constant when no graph input reaches it; subgraphs of :data:`FOLDABLE` ops are
    folded with onnx's reference evaluator at the model's opset (results are cached).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        inputs = {i.name for i in g.input} - set(self.inits)
        self.live: set[str] = set(inputs)
        for node in g.node:  # graph order is topological
            if node.op_type not in FOLDABLE or any(i in self.live for i in node.input if i):
                self.live.update(o for o in node.output if o)
        self._cache: dict[str, np.ndarray | None] = {}

    def is_constant(self, name: str) -> bool:
        return bool(name) and name not in self.live and (name in self.inits or name in self.producer)

    def value(self, name: str) -> np.ndarray | None:
        """The tensor's value, or None when it is not a (foldable) constant."""
        if not self.is_constant(name):
            return None
        if name not in self._cache:
            self._cache[name] = self._fold(name)
        return self._cache[name]

    def forget(self, name: str) -> None:
        """Drop the cached value of ``name`` (its initializer was rewritten)."""
        self._cache.pop(name, None)

    def _fold(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return tensor_array(self.inits[name])
        node = self.producer[name]
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity":
            return self.value(node.input[0])
        try:
            from onnx.reference import ReferenceEvaluator

            feeds = {i: self.value(i) for i in node.input if i}
            if any(v is None for v in feeds.values()):
                return None
            inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                      for i, v in feeds.items()]
            outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
            graph = helper.make_graph([node], "fold", inputs, outputs)
            sub = helper.make_model(graph, opset_imports=list(self.model.opset_import))
            results = ReferenceEvaluator(sub).run(None, feeds)
        except Exception:  # noqa: BLE001 - anything the evaluator cannot do is simply not constant
            return None
        for out, value in zip(node.output, results):
            self._cache[out] = np.asarray(value)
        return self._cache.get(name)


def uses(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Tensor name -> [(consumer node, input slot)]."""
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                out[name].append((node, i))
    return out


def get_attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (``default`` when absent)."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or replace) one attribute of a node."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def del_attr(node: onnx.NodeProto, name: str) -> None:
    """Remove an attribute if present."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            return


def _contiguous(value) -> np.ndarray:
    """``value`` in C order with its shape (np.ascontiguousarray makes a scalar 1-D)."""
    value = np.asarray(value)
    return value if value.flags["C_CONTIGUOUS"] else np.ascontiguousarray(value)


def set_input(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, value: np.ndarray,
              scope: NameScope, base: str) -> str:
    """Feed ``value`` to ``node.input[slot]`` from a fresh initializer; returns its name."""
    name = scope(base)
    model.graph.initializer.append(numpy_helper.from_array(_contiguous(value), name))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name
    return name


def replace_value(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Store ``value`` under ``name`` where it lives now (initializer or Constant node).

    Any other producer (a folded constant subgraph) is replaced by an initializer of that name.
    """
    tensor = numpy_helper.from_array(_contiguous(value), name)
    init = next((t for t in model.graph.initializer if t.name == name), None)
    if init is not None:
        init.CopyFrom(tensor)
        for vi in model.graph.input:  # old IRs list initializers as inputs too: keep the shape true
            if vi.name == name:
                vi.CopyFrom(helper.make_tensor_value_info(name, tensor.data_type, list(value.shape)))
        return
    node = next(n for n in model.graph.node if name in n.output)
    if node.op_type == "Constant":
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", tensor))
        return
    model.graph.node.remove(node)  # anything else becomes an initializer of the same name
    model.graph.initializer.append(tensor)


def remove_dead(model: onnx.ModelProto) -> int:
    """Drop nodes whose outputs nobody reads and initializers nobody uses; returns nodes removed."""
    from onnxcomp.graph.nested import subgraph_inputs

    g = model.graph
    removed = 0

    def reads() -> set[str]:  # what nodes and their If/Loop bodies (outer-scope names) read
        return {o.name for o in g.output} | {i for n in g.node for i in (*n.input, *subgraph_inputs(n)) if i}

    while True:
        needed = reads()
        dead = [n for n in g.node if not any(o in needed for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
        removed += len(dead)
    needed = reads()
    unused = {t.name for t in g.initializer if t.name not in needed}
    for t in [t for t in g.initializer if t.name in unused]:
        g.initializer.remove(t)
    inputs = [i for i in g.input if i.name not in unused]
    if len(inputs) != len(g.input):
        del g.input[:]
        g.input.extend(inputs)
    if model.ir_version < 4:  # IR 3 wants every initializer declared as a graph input too
        listed = {i.name for i in g.input}
        for t in g.initializer:
            if t.name not in listed:
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return removed


def flush_subnormals(model: onnx.ModelProto, keep: set[str]) -> int:
    """Zero the float32 subnormal values (below 1.2e-38) of every initializer in memory and
    Constant node not named in ``keep``; how many were zeroed. x86 CPUs run subnormal arithmetic
    ~100x slower: the SVD factors of a PP-OCRv4 recogniser held ~1,700 of them (its OBS-pruned
    Constant weights ~4,800) and the model ran 1.6-3x slower than the original."""
    from onnxcomp.io.tensors import is_lazy

    tiny, count = np.finfo(np.float32).tiny, 0
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(n.output[0], a.t) for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                if a.name == "value"]
    for name, t in tensors:
        if name in keep or t.data_type != onnx.TensorProto.FLOAT or is_lazy(t):
            continue
        a = numpy_helper.to_array(t)
        flat, found = a.reshape(-1), 0
        for start in range(0, flat.size, 1 << 20):  # a block at a time: no tensor-sized masks
            block = flat[start:start + (1 << 20)]
            bad = (np.abs(block) < tiny) & (block != 0)
            if bad.any():
                if not flat.flags.writeable:
                    flat = flat.copy()
                    block = flat[start:start + (1 << 20)]
                block[bad] = 0
                found += int(bad.sum())
        if found:
            t.CopyFrom(numpy_helper.from_array(flat.reshape(a.shape), t.name))
            count += found
    return count


def clear_value_info(model: onnx.ModelProto, names: set[str] | None = None) -> None:
    """Forget inferred shapes (of ``names``, or all): they are stale after channels were removed."""
    g = model.graph
    keep = [vi for vi in g.value_info if names is not None and vi.name not in names]
    del g.value_info[:]
    g.value_info.extend(keep)


class NameScope:
    """Fresh tensor/node names that collide with nothing in the graph.

    ``short``: ignore the suggested base and hand out the shortest free names (``e0``, ``e1``,
    ... in hex). Decoder tensors are named twice each (producer and consumer); on a 2.8 MB model
    compressed 20x their descriptive names were 6 % of the file.
    """

    short, count = False, 0

    def __init__(self, model: onnx.ModelProto, short: bool = False) -> None:
        self.short, self.count = short, 0
        self.shared: dict = {}  # small constants reused across decoders (see encode.base.const)
        self.used: set[str] = set()
        self._collect(model.graph)  # subgraphs too: a body's names must not be taken either

    def _collect(self, g: onnx.GraphProto) -> None:
        self.used |= {t.name for t in g.initializer} | {i.name for i in g.input} | \
            {o.name for o in g.output} | {n.name for n in g.node}
        for n in g.node:
            self.used.update(n.input)
            self.used.update(n.output)
            for a in n.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                    self._collect(sub)

    def __call__(self, base: str) -> str:
        if self.short:
            name = f"e{self.count:x}"
            while name in self.used:
                self.count += 1
                name = f"e{self.count:x}"
            self.count += 1
            self.used.add(name)
            return name
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name
