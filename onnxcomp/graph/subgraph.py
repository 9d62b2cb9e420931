"""Sub-models: the part of a graph needed to compute chosen tensors (cheap partial runs), and a
copy with intermediate tensors exposed as outputs (how activations are captured)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import shape_inference

from onnxcomp.errors import ConfigError
from onnxcomp.graph.nested import subgraph_inputs

_SKELETON_MIN = 64


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
        stack.extend(subgraph_inputs(node))
    out = _shell(model)
    sub = out.graph
    sub.name = g.name
    sub.node.extend(g.node[i] for i in sorted(needed_nodes))
    sub.initializer.extend(t for t in g.initializer if t.name in seen)
    sub.input.extend(i for i in g.input if i.name in seen)
    sub.value_info.extend(v for v in g.value_info if v.name in seen)
    typed = {v.name: v for v in list(g.value_info) + list(g.output) + list(g.input)
             if v.type.tensor_type.elem_type}
    for name in outputs:  # untyped ones are typed by expose when captured
        if name in typed:
            sub.output.append(typed[name])
    return out


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """An empty model with what every sub-model must keep to mean the same: the IR version, the
    opset imports and the local functions (FunctionProto) its nodes may call."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    return out


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX elem type from shape inference on a weight-free skeleton."""
    skel = _shell(model)
    g = skel.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for t in model.graph.initializer:
        c = g.initializer.add()
        if int(np.prod(t.dims)) >= _SKELETON_MIN and t.data_type in (onnx.TensorProto.FLOAT,
                                                                     onnx.TensorProto.FLOAT16):
            c.name, c.data_type = t.name, t.data_type
            c.dims.extend(t.dims)
        else:
            c.CopyFrom(t)
    try:
        g = shape_inference.infer_shapes(skel).graph
    except Exception:  # noqa: BLE001 - fall back to whatever the model declares
        g = model.graph
    types = {}
    for vi in list(g.value_info) + list(g.output) + list(model.graph.value_info):
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def graph_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Node outputs that depend on a graph input (not constant folding fodder), in graph order."""
    live = set(graph_inputs(model))
    order = []
    for node in model.graph.node:
        if any(i in live for i in node.input if i):
            for o in node.output:
                if o and o not in live:
                    live.add(o)
                    order.append(o)
    return order


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (the original is not modified)."""
    produced = {o for n in model.graph.node for o in n.output if o}
    inputs = set(graph_inputs(model))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in produced and name not in inputs:
            raise ConfigError(f"tensor {name!r} is not produced by any node of the model",
                              "pick tensor names from the graph (see `onnxcomp inspect`)")
    new = [n for n in dict.fromkeys(names) if n not in existing]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = elem_types(model) if new else {}
    for name in new:
        vi = copy.graph.output.add()
        vi.name = name
        if name in types:
            vi.type.tensor_type.elem_type = types[name]
    return copy
