"""Node order: ONNX requires each graph's nodes in topological order; some tools do not keep it.

onnxruntime's own float16 converter (``onnxruntime.transformers.float16``, the same code as
onnxconverter-common's) appends the Casts it puts after the graph inputs at the end of the node
list. onnxruntime sorts a graph itself when it loads one, so such files run everywhere, but
onnx.checker refuses them. The loader sorts them in memory (stable: nodes already in order stay
in order) before the checker sees them; the input file is never touched.
"""
from __future__ import annotations

import onnx


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from the scopes around it: read by its nodes (or theirs, nested)
    and defined nowhere inside it."""
    inside = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    inside |= {t.name for t in graph.sparse_initializer}
    inside |= {o for n in graph.node for o in n.output}
    read = set()
    for n in graph.node:
        read.update(x for x in n.input if x)
        for g in _subgraphs(n):
            read |= _outer_names(g)
    return read - inside


def _reads(node: onnx.NodeProto) -> list[str]:
    """Everything a node needs computed before it: its inputs and what its subgraphs read from outside."""
    names = [x for x in node.input if x]
    for g in _subgraphs(node):
        names += sorted(_outer_names(g))
    return names


def _order(graph: onnx.GraphProto) -> list[int] | None:
    """A stable topological order of the graph's nodes (indices), or None when they form a cycle."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = [[producer[x] for x in _reads(n) if x in producer] for n in graph.node]
    state = [0] * len(deps)  # 0 new, 1 on the stack, 2 placed
    order: list[int] = []
    for root in range(len(deps)):
        if state[root]:
            continue
        stack = [(root, iter(deps[root]))]
        state[root] = 1
        while stack:
            i, it = stack[-1]
            nxt = next((d for d in it if state[d] != 2), None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif state[nxt] == 1:
                return None  # a cycle: leave the graph to the checker's error
            else:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))
    return order


def is_sorted(model: onnx.ModelProto) -> bool:
    """Whether every graph's nodes read only what earlier nodes (or the graph's inputs,
    initializers and outer scopes) define."""
    return all(_order(g) == list(range(len(g.node))) for g in _graphs(model.graph))


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for g in _subgraphs(node):
            yield from _graphs(g)


def sort_nodes(model: onnx.ModelProto) -> int:
    """Put every graph's nodes in a stable topological order, in place; returns the number of
    graphs reordered (0 when all were in order or a cycle leaves nothing to sort)."""
    changed = 0
    for graph in list(_graphs(model.graph)):
        order = _order(graph)
        if order is None or order == list(range(len(graph.node))):
            continue
        nodes = [graph.node[i] for i in order]
        copies = [onnx.NodeProto() for _ in nodes]
        for c, n in zip(copies, nodes):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
        changed += 1
    return changed
