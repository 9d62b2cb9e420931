"""Which weights act last: their layer's output reaches a graph output with no other weight's
layer in between (a classifier head, a detector's final convs)."""
from __future__ import annotations

from typing import Sequence

import onnx

from onnxcomp.graph.weights import Weight


def output_layers(model: onnx.ModelProto, weights: Sequence[Weight]) -> set[str]:
    """Names of the ``weights`` whose consuming node feeds a graph output through weight-free ops.

    Walks back from every graph output through producers, stopping at the nodes that consume one
    of ``weights`` (those are the last layers). Subgraph outputs are not followed.
    """
    graph = model.graph
    producer = {o: node for node in graph.node for o in node.output if o}

    def key(node: onnx.NodeProto) -> tuple[str, ...]:  # outputs name a node (not id(): wrappers may be new objects)
        return tuple(node.output)

    owner: dict[tuple[str, ...], list[str]] = {}
    for w in weights:
        for use in w.uses:
            owner.setdefault(key(use.node), []).append(w.name)
    found: set[str] = set()
    seen: set[tuple[str, ...]] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or key(node) in seen:
            continue
        seen.add(key(node))
        if key(node) in owner:
            found.update(owner[key(node)])
            continue
        stack.extend(i for i in node.input if i)
    return found
