"""Tensor bytes in memory or lazy on disk: sizes, lazy external tensors, serialization.

Big models stay on disk: ``load(path, lazy=True)`` validates the external data like a full load
but leaves every large initializer where it is, as a reference to its (checked) file by absolute
path. :func:`tensor_array` reads such a tensor when a pass asks for it; saving, :func:`serialize`
and onnxruntime sessions copy it from its file. A protobuf message never frees the bytes of a
tensor that is replaced until the whole message is freed (upb arenas), so a model whose weights
are rewritten one by one would otherwise hold the old and the new weights together;
:func:`compact` drops the dead bytes.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.errors import ModelLoadError, ModelSaveError
from onnxcomp.io.checks import expected_bytes

PROTOBUF_LIMIT = 2**31 - 1
# leave headroom for the graph itself: above this many tensor bytes we always use external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def stored_size(tensor: onnx.TensorProto) -> int:
    """A tensor's bytes, in memory or lazy on disk."""
    if is_lazy(tensor):
        return _external_info(tensor)[2]
    try:
        return tensor.ByteSize()  # no copy of the data
    except Exception:  # noqa: BLE001 - protobuf refuses to size a single tensor above 2 GB
        return len(tensor.raw_data) + 8 * len(tensor.int64_data) + 4 * len(tensor.float_data)


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's tensors, in memory or lazy on disk (ByteSize where protobuf allows: no copy)."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(stored_size(t) for t in _get_all_tensors(model))


def model_bytes(model: onnx.ModelProto) -> int:
    """The model's size as one protobuf with its tensors inline: a lazy tensor counts the bytes of
    its data on disk, not of its reference to them (the ByteSize of the same file loaded eagerly)."""
    extra = 0
    for t in lazy_tensors(model):
        shell = onnx.TensorProto()
        shell.CopyFrom(t)
        del shell.external_data[:]
        location, offset, n = _external_info(t)
        if (location, offset) in EMBEDDED:  # left in the model file itself: it had no data_location
            shell.ClearField("data_location")
        else:
            shell.data_location = onnx.TensorProto.DEFAULT  # as onnx leaves a tensor it read in
        inline = shell.ByteSize() + 1 + _varint_len(n) + n  # + the raw_data field
        extra += inline + _varint_len(inline) - t.ByteSize() - _varint_len(t.ByteSize())
    if not extra:
        return model.ByteSize()
    graph = model.graph.ByteSize()  # its length prefix in the model may grow too
    return model.ByteSize() + extra + _varint_len(graph + extra) - _varint_len(graph)


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)

LAZY_MIN_BYTES = 1 << 20  # smaller external tensors are read at load time
EMBEDDED: set[tuple[str, int]] = set()  # (file, offset) of lazy tensors left inside a model file


def _external_info(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(location, offset, length) of an external tensor (length from its shape when absent)."""
    fields = {e.key: e.value for e in tensor.external_data}
    length = fields.get("length")
    n = int(length) if length is not None else (expected_bytes(tensor) or 0)
    return fields.get("location", ""), int(fields.get("offset") or 0), n


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    for e in tensor.external_data:
        if e.key == "location":
            e.value = location


def is_lazy(tensor: onnx.TensorProto) -> bool:
    """True for a tensor left on disk by ``load(lazy=True)`` (external, absolute location)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    return any(e.key == "location" and os.path.isabs(e.value) for e in tensor.external_data)


def lazy_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if is_lazy(t)]


def _lost(name: str, location: str, exc: OSError | None = None) -> ModelLoadError:
    """The error for a lazy tensor's file that changed or vanished after it was checked."""
    problem = f"cannot read it: {exc.strerror or exc}" if exc is not None else "the file is shorter now"
    if any(loc == location for loc, _ in EMBEDDED):  # weights left inside the model file itself
        return ModelLoadError(f"the model file {location} changed while onnxcomp ran, before the weights of "
                              f"tensor {name!r} were read ({problem})", "leave the model file alone while onnxcomp runs")
    return ModelLoadError(f"the external data of tensor {name!r} in {location} changed while onnxcomp ran "
                          f"({problem})", "leave the model's .data file alone while onnxcomp runs")


def _read_lazy(tensor: onnx.TensorProto) -> bytes:
    location, offset, length = _external_info(tensor)
    try:
        with open(location, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as exc:
        raise _lost(tensor.name, location, exc) from None
    if len(data) != length:
        raise _lost(tensor.name, location)
    return data


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values; a lazy tensor is read from its file (one copy, writable)."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    location, offset, length = _external_info(tensor)
    if dtype.kind not in "biufc" or length != expected_bytes(tensor):  # 4-bit, float8, ...: onnx decodes
        shim = onnx.TensorProto(data_type=tensor.data_type, dims=tensor.dims, raw_data=_read_lazy(tensor))
        return numpy_helper.to_array(shim)
    count = length // dtype.itemsize
    try:
        values = np.fromfile(location, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    except OSError as exc:
        raise _lost(tensor.name, location, exc) from None
    if values.size != count:
        raise _lost(tensor.name, location)
    return values.astype(dtype, copy=False).reshape(tuple(tensor.dims))


def _shell(tensor: onnx.TensorProto, dst: onnx.TensorProto) -> None:
    """Copy everything of ``tensor`` into ``dst`` but its data (no copy of raw_data is made)."""
    for name in ("name", "data_type", "doc_string"):
        if tensor.HasField(name):
            setattr(dst, name, getattr(tensor, name))
    dst.dims.extend(tensor.dims)
    dst.metadata_props.extend(tensor.metadata_props)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        dst.data_location = tensor.data_location
        dst.external_data.extend(tensor.external_data)


def _copy_fields(src, dst, skip: str | tuple[str, ...]) -> None:
    """Copy every set field of ``src`` into ``dst`` but the one(s) named in ``skip``."""
    skip = (skip,) if isinstance(skip, str) else skip
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _header(model: onnx.ModelProto, apart) -> tuple[onnx.ModelProto, list]:
    """A copy of ``model`` in which each top-level initializer for which ``apart(t)`` holds is a
    shell without data; returns it with the (shell, source tensor) pairs. Nothing big is copied."""
    out = onnx.ModelProto()
    _copy_fields(model, out, "graph")
    _copy_fields(model.graph, out.graph, "initializer")
    pairs = []
    for t in model.graph.initializer:
        h = out.graph.initializer.add()
        if apart(t):
            _shell(t, h)
            pairs.append((h, t))
        else:
            h.CopyFrom(t)
    return out, pairs


def _fill(shell: onnx.TensorProto, src: onnx.TensorProto) -> None:
    """Put the source's data into the shell, inline."""
    shell.raw_data = _read_lazy(src) if is_lazy(src) else src.raw_data
    if is_lazy(src) and _external_info(src)[:2] in EMBEDDED:  # as it was inside its model file
        shell.ClearField("data_location")
    else:
        shell.data_location = onnx.TensorProto.DEFAULT
    del shell.external_data[:]


def inline_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when nothing in it is lazy, else a copy with every lazy tensor read in."""
    if not lazy_tensors(model):
        return model
    out, pairs = _header(model, is_lazy)
    for shell, src in pairs:
        _fill(shell, src)
    return out


def serialize(model: onnx.ModelProto) -> bytes:
    """The model as one protobuf (lazy tensors read in); a one-line error above protobuf's limit."""
    if tensor_bytes(model) > PROTOBUF_LIMIT:
        raise ModelSaveError(f"the model has {tensor_bytes(model) / 1e9:.2f} GB of tensors, more than one "
                             "protobuf holds (2 GB)", "save it to a file (onnxcomp.save uses external data)")
    return inline_copy(model).SerializeToString()


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """A fresh copy holding only the model's live bytes; lazy tensors are read in when the whole
    model fits in one protobuf (so results below 2 GB are self-contained), else kept lazy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if lazy_tensors(out) and not needs_external_data(out):
        return inline_copy(out)
    return out


def session_source(model: onnx.ModelProto) -> tuple[bytes, str | None] | None:
    """(model bytes, external-data folder) onnxruntime can load without a copy of the lazy tensors:
    they must all sit under one folder, and everything else fit in one protobuf; None otherwise."""
    lazy = lazy_tensors(model)
    inline = tensor_bytes(model) - sum(_external_info(t)[2] for t in lazy)
    if inline > EXTERNAL_DATA_THRESHOLD:
        return None
    if not lazy:
        return model.SerializeToString(), None
    folder = os.path.commonpath([os.path.dirname(_external_info(t)[0]) for t in lazy])
    header, pairs = _header(model, is_lazy)
    for shell, _ in pairs:
        _set_location(shell, os.path.relpath(_external_info(shell)[0], folder))
    return header.SerializeToString(), folder


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the serialized model would exceed protobuf's 2 GB limit."""
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
