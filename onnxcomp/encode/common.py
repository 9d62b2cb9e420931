"""Installing a decoder subgraph in place of a weight's storage, and raising the opset safely.

An encoded weight is a few small initializers plus standard ONNX ops that rebuild the exact
tensor under the weight's original name. onnxruntime folds such constant subgraphs at session
creation, so the decoded weight costs load time only and is bit-exact.
"""
from __future__ import annotations

from typing import Iterable

import onnx
from onnx import defs

from onnxcomp.graph.weights import Weight, remove_storage
from onnxcomp.io import default_opset, ort_limits
from onnxcomp.io.ort import set_default_opset


def _schema_version(op: str, opset: int, domain: str = "") -> int | None:
    try:
        return defs.get_schema(op, opset, domain).since_version
    except Exception:  # noqa: BLE001 - unknown op / not defined at this opset
        return None


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def can_raise_opset(model: onnx.ModelProto, target: int) -> bool:
    """True when every default-domain op means the same at ``target`` as at the current opset."""
    current = default_opset(model)
    if target <= current:
        return True
    if target > ort_limits()[1]:
        return False
    for op in {n.op_type for n in _all_nodes(model.graph) if n.domain in ("", "ai.onnx")}:
        if _schema_version(op, current) != _schema_version(op, target):
            return False
    return True


def raise_opset(model: onnx.ModelProto, target: int) -> bool:
    """Raise the default-domain opset to ``target`` when it is safe; return whether it is now met."""
    if default_opset(model) >= target:
        return True
    if not can_raise_opset(model, target):
        return False
    set_default_opset(model, target)
    return True


def install_decoder(model: onnx.ModelProto, weight: Weight, nodes: Iterable[onnx.NodeProto],
                    initializers: Iterable[onnx.TensorProto]) -> None:
    """Replace the weight's storage by ``nodes`` (whose last output must be ``weight.name``).

    The decoder nodes go first in the graph (they read only their own initializers), so every
    consumer, shared or not, sees the decoded tensor under the original name. They go unnamed:
    node names are optional, and one named after the weight can clash with a node of the model
    named like its weight (onnxruntime refuses two nodes of one name).
    """
    nodes, initializers = list(nodes), list(initializers)
    if not nodes or nodes[-1].output[0] != weight.name:
        raise ValueError(f"decoder for {weight.name} must end with a node producing it")
    remove_storage(model, weight)
    g = model.graph
    g.initializer.extend(initializers)
    for i, node in enumerate(nodes):
        node.name = ""
        g.node.insert(i, node)
    weight.source, weight.holder = "encoded", None
