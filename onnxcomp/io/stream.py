"""Write a variant of a model as one protobuf, a tensor at a time, without copying the model.

A variant leaves some initializers (and their graph inputs, and Constant nodes) out, puts extra
nodes before the graph's and extra initializers after its own. The wire format lets the graph's
repeated fields follow its other fields in any order, so the file is the model's header, the
graph's small fields, then each node and initializer serialized on its own (a lazy tensor read in
from its file): memory stays at one tensor, whatever the model's size.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import onnx

from onnxcomp.errors import ModelSaveError
from onnxcomp.io.ort import default_opset, set_default_opset
from onnxcomp.io.tensors import PROTOBUF_LIMIT, _copy_fields, _fill, _shell, is_lazy

_GRAPH, _NODE, _INIT = 7, 1, 5  # ModelProto.graph, GraphProto.node, GraphProto.initializer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _inline(t: onnx.TensorProto) -> onnx.TensorProto:
    """The tensor with its data inline (a lazy one read from its file; others as they are)."""
    if not is_lazy(t):
        return t
    out = onnx.TensorProto()
    _shell(t, out)
    _fill(out, t)
    return out


def write_variant(path: Path, model: onnx.ModelProto, drop: Iterable[str] = (),
                  first_nodes: Iterable[onnx.NodeProto] = (), extra_inits: Iterable[onnx.TensorProto] = (),
                  opset: int = 0) -> None:
    """Write ``model`` without the initializers, graph inputs and Constant nodes named in ``drop``,
    with ``first_nodes`` before its nodes and ``extra_inits`` after its initializers, at default
    opset ``opset`` when that is higher (the caller knows every op means the same there)."""
    drop = set(drop)
    head, graph = onnx.ModelProto(), onnx.GraphProto()
    _copy_fields(model, head, "graph")
    if opset > default_opset(model):
        set_default_opset(head, opset)
    _copy_fields(model.graph, graph, ("node", "initializer", "input"))
    graph.input.extend(i for i in model.graph.input if i.name not in drop)
    nodes = list(first_nodes) + [n for n in model.graph.node
                                 if not (n.op_type == "Constant" and n.output and n.output[0] in drop)]
    inits = [t for t in model.graph.initializer if t.name not in drop] + list(extra_inits)
    with tempfile.TemporaryFile(dir=Path(path).parent) as body:
        body.write(graph.SerializeToString())
        for n in nodes:
            body.write(_field(_NODE, n.SerializeToString()))
        for t in inits:
            body.write(_field(_INIT, _inline(t).SerializeToString()))
        length = body.tell()
        if length > PROTOBUF_LIMIT:
            raise ModelSaveError("the model is larger than one protobuf holds (2 GB)", "store it with external data")
        body.seek(0)
        with open(path, "wb") as f:
            f.write(head.SerializeToString())
            f.write(_varint((_GRAPH << 3) | 2) + _varint(length))
            shutil.copyfileobj(body, f, 1 << 20)
