"""Loading a model file: every check a user can get wrong, each a one-line ModelLoadError.

Missing file, not ONNX, truncated, missing or escaping external data, an IR version or opset the
installed onnxruntime cannot run. ``lazy=True`` leaves big external tensors on disk
(:mod:`onnxcomp.io.tensors`).
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxcomp.errors import ModelLoadError
from onnxcomp.io import tensors
from onnxcomp.io.checks import (check_declared_sizes, check_external, check_external_location, check_tensor_data,
                                check_valid, unique_node_names)
from onnxcomp.io.ort import check_runnable
from onnxcomp.io.checks import external_tensors
from onnxcomp.io.memory import release
from onnxcomp.io.order import sort_nodes
from onnxcomp.io.tensors import _external_info, _set_location, is_lazy

_ONNX_MAGIC_FIRST_BYTE = 0x08  # field 1 (ir_version), varint: every serialized ModelProto starts so


def _parse(path: Path) -> tuple[onnx.ModelProto, bytes]:
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path} is empty (0 bytes)", "re-export the model or check the copy")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf DecodeError and friends
        if data[0] == _ONNX_MAGIC_FIRST_BYTE:
            raise ModelLoadError(
                f"{path} is truncated or corrupted ({len(data)} bytes, protobuf says: {exc})",
                "re-export or re-download the model") from None
        raise ModelLoadError(f"{path} is not an ONNX model (protobuf cannot parse it)",
                             "pass the .onnx file exported by your framework") from None
    if model.ir_version == 0 or not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{path} is not an ONNX model (no IR version or no graph nodes)",
                             "pass the .onnx file exported by your framework")
    if not model.graph.output:
        raise ModelLoadError(f"{path} has no graph outputs, so there is nothing to compute or compare",
                             "re-export the model with its outputs")
    return model, data


def _load_external(model: onnx.ModelProto, path: Path, lazy: bool = False,
                   checked: Path | onnx.ModelProto | None = None) -> None:
    """Validate every external tensor, then read it into the model (or, ``lazy``, the large ones
    become references to their checked files by absolute path); ``checked``: what the checker
    reads (the file when None)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    if not check_external(model, path, checked):
        return
    if not lazy:
        onnx.load_external_data_for_model(model, str(path.parent))
        return
    for tensor in model.graph.initializer:
        location, _, length = _external_info(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL and length >= tensors.LAZY_MIN_BYTES:
            file = check_external_location(path.parent, location, path)
            _set_location(tensor, str(file.resolve()))
    for tensor in external_tensors(model):
        if not is_lazy(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))


def _leave_on_disk(model: onnx.ModelProto, data: bytes, path: Path) -> onnx.ModelProto:
    """``model`` with its embedded initializers of LAZY_MIN_BYTES or more left in the file it was
    read from (lazy references to their raw data's offsets there), so the parsed copy is freed:
    a big model is then held neither twice (input and work copy) nor at all until a pass reads a
    weight. ``model`` itself when nothing is big or the file's layout is unusual."""
    from onnxcomp.io.checks import expected_bytes
    from onnxcomp.io.protowire import initializer_payloads

    inits = model.graph.initializer
    spans = initializer_payloads(data)  # not ByteSize: protobuf serializes a message to size it
    if spans is None or len(spans) != len(inits) or not any(s and s[1] >= tensors.LAZY_MIN_BYTES for s in spans):
        return model
    out = onnx.ModelProto()
    tensors._copy_fields(model, out, "graph")
    tensors._copy_fields(model.graph, out.graph, "initializer")
    where = str(path.resolve())
    for t, span in zip(inits, spans):
        h = out.graph.initializer.add()
        if span is None or span[1] < tensors.LAZY_MIN_BYTES or span[1] != expected_bytes(t):
            h.CopyFrom(t)
            continue
        tensors._shell(t, h)
        h.data_location = onnx.TensorProto.EXTERNAL
        tensors.EMBEDDED.add((where, span[0]))
        for key, value in (("location", where), ("offset", str(span[0])), ("length", str(span[1]))):
            h.external_data.add(key=key, value=value)
    return out


def _inline(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnx.inliner import inline_local_functions

        return inline_local_functions(model)
    except Exception:  # noqa: BLE001 - an older onnx, or a function it cannot inline: left as it is
        return model


def load(path: str | os.PathLike, *, load_external_data: bool = True, lazy: bool = False) -> onnx.ModelProto:
    """Load an ONNX model, with its external data, or raise a one-line ModelLoadError.

    ``lazy``: initializers of LAZY_MIN_BYTES or more are checked like a full load but stay on disk
    (see the module doc), external ones in their files, embedded ones in the model file itself;
    smaller external tensors are read.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a model file", "pass the .onnx file inside it")
    model, data = _parse(path)
    check_runnable(model, str(path))
    external = bool(external_tensors(model))
    checked: Path | onnx.ModelProto = path  # what the checker reads: the file, or the model sorted here
    if sort_nodes(model):
        checked = model  # nodes out of order (onnxruntime's float16 converter): sorted in memory
    if not external and lazy:  # the parsed weights are freed before the checker parses the file again
        model = _leave_on_disk(model, data, path)  # (each big one's length checked against its shape)
    del data
    check_tensor_data(model, path)  # external tensors are checked against their files below
    if not external:  # from the path, not the bytes read: handing bytes to the checker copies them
        check_valid(checked, path)  # (a second file-sized buffer) before its own parse (a third)
    if load_external_data and external:
        _load_external(model, path, lazy, checked)  # runs the checker once the locations are known to be safe
    elif external:
        check_valid(checked, path)
    check_declared_sizes(model, path)
    if model.functions:  # model-local functions (torch's export_modules_as_functions): their layers are
        model = _inline(model)  # layers like any other once inlined, exactly, as onnxruntime does at load
    unique_node_names(model)
    release()  # what the parses and the checker freed
    return model
