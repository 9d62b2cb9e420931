"""The part of a graph needed to compute chosen tensors (for cheap partial runs)."""
from __future__ import annotations

from typing import Sequence

import onnx


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop bodies) read from the outer scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


def truncate(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy computing only ``outputs`` (as its graph outputs) from the inputs they depend on.

    Nodes keep their order; unused initializers and inputs are dropped, so onnxruntime runs
    only the work those tensors need.
    """
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    needed_nodes: set[int] = set()
    stack = list(outputs)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        i = producer.get(name)
        if i is None or i in needed_nodes:
            continue
        needed_nodes.add(i)
        node = g.node[i]
        stack.extend(x for x in node.input if x)
        stack.extend(_subgraph_inputs(node))
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    sub = out.graph
    sub.name = g.name
    sub.node.extend(g.node[i] for i in sorted(needed_nodes))
    sub.initializer.extend(t for t in g.initializer if t.name in seen)
    sub.input.extend(i for i in g.input if i.name in seen)
    typed = {v.name: v for v in list(g.value_info) + list(g.output) + list(g.input)
             if v.type.tensor_type.elem_type}
    for name in outputs:  # untyped ones are typed by onnxcomp.activations.expose when captured
        if name in typed:
            sub.output.append(typed[name])
    return out
