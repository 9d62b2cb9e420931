"""Sanity checks on a parsed model, before anything decodes or allocates its tensors.

A model file may be damaged or hostile: names that are not text, tensors whose data does not
match their dims, ConstantOfShape nodes or external data asking for terabytes. These checks look
at the protobuf only (no file access, no decoding of large data) and raise a one-line
:class:`ModelLoadError`; :mod:`onnxcomp.io` runs them on every load.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from .errors import ModelLoadError


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # noqa: BLE001 - exotic dtypes (4-bit, strings): skip the check
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or itemsize == 0:
        return None
    n = 1
    for d in tensor.dims:
        n *= d
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (n + 1) // 2
    return n * itemsize


def available_memory() -> int:
    """Bytes of memory this process can still allocate (MemAvailable; a huge number if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_allocation(n_bytes: int, what: str) -> None:
    """Refuse, before allocating, a tensor (or set of tensors) larger than the available memory."""
    avail = available_memory()
    if n_bytes > avail:
        raise ModelLoadError(f"{what} needs {_gb(n_bytes)} of memory, more than the {_gb(avail)} available",
                             "the file declares an absurd size; check where it came from")


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_graphs(g)


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Values of the small int64 constants (initializers and Constant nodes) of one graph."""
    from onnx import numpy_helper

    out: dict[str, list[int]] = {}
    tensors = [(t.name, t) for t in graph.initializer]
    tensors += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.output
                for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    for name, t in tensors:
        if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1 and 0 < t.dims[0] <= 16:
            try:
                out[name] = [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
            except Exception:  # noqa: BLE001 - onnx.checker reports broken tensors
                continue
    return out


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _stored_elements(t: onnx.TensorProto) -> int | None:
    """Elements the tensor really holds (None: external or not checkable)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if t.raw_data:
        itemsize_bytes = _expected_bytes(t)
        if itemsize_bytes is None:
            return None
        n = 1
        for d in t.dims:
            n *= d
        return n if len(t.raw_data) == itemsize_bytes else -1
    count = sum(len(getattr(t, f)) for f in _TYPED_FIELDS)
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        count //= 2
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        return None  # packed two per int32 entry
    return count


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _names(graph: onnx.GraphProto):
    for node in graph.node:
        yield node.name
        yield node.op_type
        yield node.domain
        yield from node.input
        yield from node.output
        for a in node.attribute:
            yield a.name
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        yield vi.name
    for t in graph.initializer:
        yield t.name


def check_tensor_data(model: onnx.ModelProto, path: Path | str) -> None:
    """Names are text; every stored tensor holds as many values as its dims say (before decoding)."""
    for graph in _all_graphs(model.graph):
        bad = next((n for n in _names(graph) if not isinstance(n, str)), None)
        if bad is not None:
            raise ModelLoadError(f"{path} is corrupted: the name {bad[:40]!r} is not valid UTF-8 text",
                                 "re-export or re-download the model")
        seen: set[str] = set()
        for node in graph.node:
            if node.name and node.name in seen:  # onnxruntime refuses such graphs
                raise ModelLoadError(f"{path}: two nodes are named {node.name!r}",
                                     "re-export the model (node names must be unique)")
            seen.add(node.name)
        for t in _graph_tensors(graph):
            if any(d < 0 for d in t.dims):
                raise ModelLoadError(f"{path}: tensor {t.name!r} has a negative dimension {list(t.dims)}",
                                     "re-export the model")
            stored = _stored_elements(t)
            if stored is None:
                continue
            n = 1
            for d in t.dims:
                n *= d
            if stored != n:
                got = f"{len(t.raw_data)} bytes" if t.raw_data else f"{stored} values"
                need = _expected_bytes(t) if t.raw_data else n
                raise ModelLoadError(f"{path}: tensor {t.name!r} holds {got} but its shape {list(t.dims)} "
                                     f"needs {need}", "re-export or re-download the model")


def check_declared_sizes(model: onnx.ModelProto, path: Path | str) -> None:
    """Refuse ConstantOfShape nodes with negative or absurd constant shapes before anything fills them."""
    for graph in _all_graphs(model.graph):
        shapes = None
        for node in graph.node:
            if node.op_type != "ConstantOfShape" or not node.input:
                continue
            shapes = _constant_shapes(graph) if shapes is None else shapes
            dims = shapes.get(node.input[0])
            if dims is None:
                continue
            label = node.name or node.output[0]
            if any(d < 0 for d in dims):
                raise ModelLoadError(f"{path}: ConstantOfShape {label!r} has a negative dimension {dims}",
                                     "re-export the model")
            n = 1
            for d in dims:
                n *= d
            check_allocation(n * 8, f"{path}: ConstantOfShape {label!r} of shape {dims}")
