"""Weights inside If/Loop/Scan bodies: which main-graph names the bodies read, which compute nodes
they hold, and moving the constant tensors they store for those nodes to the main graph.

ONNX lets a body read any name of the scopes around it. A weight a body stores itself (silero-vad
keeps every conv kernel as a ``Constant`` node in both branches of an ``If`` on the sample rate)
can therefore live in the main graph instead, with the same meaning: :func:`hoist` moves it there,
so the passes that only change a weight's values (prune, cluster) and the encodings treat it as
any other weight. Passes that rewrite a weight's consumer node leave such weights alone.
"""
from __future__ import annotations

from typing import Callable, Iterator

import onnx

Slots = Callable[[onnx.NodeProto], list]
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs a node holds (If branches, Loop/Scan bodies)."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        out += [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    return out


def defined(g: onnx.GraphProto) -> set[str]:
    """Names a graph defines itself: its inputs, initializers and node outputs."""
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {t.values.name for t in g.sparse_initializer}
    return names | {o for n in g.node for o in n.output if o}


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies, nested ones included) read from the outer
    scope: what their nodes read minus what the subgraphs define themselves (their inputs, such
    as a Loop body's iteration count and condition, initializers and node outputs)."""
    names: set[str] = set()
    for g in bodies(node):
        reads = {i for n in g.node for i in n.input if i}
        for n in g.node:
            reads |= subgraph_inputs(n)
        names |= reads - defined(g)
    return names


def subgraph_reads(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """(names subgraphs read from this graph's scope, constant tensors stored inside subgraphs)."""
    outer: set[str] = set()
    inner: set[str] = set()
    for node in graph.node:
        for g in bodies(node):
            inner |= {t.name for t in g.initializer if _weight_like(t)}
            inner |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output
                      and any(a.name == "value" and _weight_like(a.t) for a in n.attribute)}
            deeper_outer, deeper_inner = subgraph_reads(g)
            inner |= deeper_inner
            reads = {i for n in g.node for i in n.input if i} | deeper_outer
            outer |= reads - defined(g)
    return outer, inner


def _weight_like(t: onnx.TensorProto) -> bool:
    """A float tensor of 2 or more dims (not a shape, index or scalar constant)."""
    return t.data_type in FLOATS and len(t.dims) >= 2


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every body inside it, nested ones too."""
    yield graph
    for node in graph.node:
        for g in bodies(node):
            yield from graphs(g)


def nested_nodes(graph: onnx.GraphProto, local: frozenset = frozenset()) -> Iterator[tuple[onnx.NodeProto, frozenset]]:
    """(node inside a body of ``graph``, the names the bodies around it define), nested bodies too:
    a name outside that set is read from ``graph``'s scope."""
    for node in graph.node:
        for g in bodies(node):
            inner = local | defined(g)
            for n in g.node:
                yield n, inner
            yield from nested_nodes(g, inner)


def hoist(model: onnx.ModelProto, slots: Slots, *, min_dims: int = 2) -> list[str]:
    """Move the float tensors that bodies store (initializers, ``Constant`` nodes) and feed straight
    into a weight slot of their compute nodes (``slots(node)``: input indices) to the main graph's
    initializers, under names free in the whole model; returns the new names."""
    count: dict[str, int] = {}  # how many scopes define each name
    for g in graphs(model.graph):
        for name in defined(g):
            count[name] = count.get(name, 0) + 1
    moved: list[str] = []

    def free(name: str) -> str:
        """``name`` itself when no other scope defines it (nothing to rename), else a fresh one."""
        new, i = name, 0
        while count.get(new, 0) > (1 if new == name else 0):
            i += 1
            new = f"{name}__{i}"
        count[new] = count.get(new, 0) + 1
        return new

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            for body in bodies(node):
                _hoist_from(body)
                visit(body)

    def _hoist_from(g: onnx.GraphProto) -> None:
        stored = {t.name: t for t in g.initializer}
        stored.update({n.output[0]: n for n in g.node if n.op_type == "Constant" and len(n.output) == 1
                       and any(a.name == "value" for a in n.attribute)})
        kept = {o.name for o in g.output} | {i.name for i in g.input}  # (IR 3 lists initializers as inputs)
        wanted = [n.input[i] for n in g.node for i in slots(n) if i < len(n.input) and n.input[i] in stored]
        for name in dict.fromkeys(w for w in wanted if w not in kept):
            holder = stored[name]
            tensor = onnx.TensorProto()
            tensor.CopyFrom(holder if isinstance(holder, onnx.TensorProto)
                            else next(a.t for a in holder.attribute if a.name == "value"))
            if tensor.data_type not in FLOATS or len(tensor.dims) < min_dims:
                continue
            tensor.name = new = free(name)
            model.graph.initializer.append(tensor)
            if model.ir_version < 4:  # IR 3 wants every initializer declared as a graph input too
                model.graph.input.append(onnx.helper.make_tensor_value_info(new, tensor.data_type, list(tensor.dims)))
            (g.initializer if isinstance(holder, onnx.TensorProto) else g.node).remove(holder)
            if new != name:
                rename_reads(g, name, new)
            moved.append(new)

    visit(model.graph)
    return moved


def rename_reads(g: onnx.GraphProto, old: str, new: str) -> None:
    """Every read of ``old`` in ``g`` and the bodies inside it becomes a read of ``new``."""
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for body in bodies(node):
            if old not in defined(body):  # (SSA: a body cannot define it again; checked all the same)
                rename_reads(body, old, new)
