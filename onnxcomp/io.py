"""Reading and writing model files: the only module that touches the file system for models.

Loading checks everything a user can get wrong (missing file, not ONNX, truncated, missing or
escaping external data, an IR version or opset the installed onnxruntime cannot run) and raises a
one-line :class:`ModelLoadError`. Saving is atomic (temp file in the target folder, verified, then
renamed), never onto the input, with external data when the model exceeds protobuf's 2 GB limit.

Big models stay on disk: ``load(path, lazy=True)`` validates the external data like a full load
but leaves every large initializer where it is, as a reference to its (checked) file by absolute
path. :func:`tensor_array` reads such a tensor when a pass asks for it; :func:`save`,
:func:`serialize` and onnxruntime sessions (:mod:`onnxcomp.runtime`) copy it from its file. A
protobuf message never frees the bytes of a tensor that is replaced until the whole message is
freed (upb arenas), so a model whose weights are rewritten one by one would otherwise hold the old
and the new weights together; :func:`compact` drops the dead bytes.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelLoadError, ModelSaveError
from .modelcheck import _expected_bytes, check_allocation, check_declared_sizes, check_tensor_data

PROTOBUF_LIMIT = 2**31 - 1
# leave headroom for the graph itself: above this many tensor bytes we always use external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
MIN_ORT_OPSET = 7
_ONNX_MAGIC_FIRST_BYTE = 0x08  # field 1 (ir_version), varint: every serialized ModelProto starts so


@functools.lru_cache(maxsize=1)
def ort_limits() -> tuple[int, int]:
    """(max IR version, max default-domain opset) the installed onnxruntime accepts, probed once."""
    ort = quiet_ort()

    def runs(ir: int, opset: int) -> bool:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False

    max_ir = next((ir for ir in range(onnx.IR_VERSION, 3, -1) if runs(ir, 13)), 7)
    max_opset = next((o for o in range(onnx.defs.onnx_opset_version(), 6, -1) if runs(max_ir, o)), 13)
    return max_ir, max_opset


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (1 if it declares none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


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


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(exc).__name__]
    line = lines[0] if not lines[0].endswith(":") or len(lines) == 1 else f"{lines[0]} {lines[1]}"
    return line if len(line) <= limit else line[:limit] + "..."


def check_valid(model: bytes | Path, path: Path) -> None:
    """Run onnx.checker with strict shape inference and turn a failure into one line.

    ``model`` is the file's bytes, or its path when tensors live in external data (the checker
    then resolves their locations against the model's folder). A model that only ONNX's shape
    inference rejects is accepted when onnxruntime loads it (onnxruntime has the last word).
    """
    src = model if isinstance(model, bytes) else str(model)
    try:
        onnx.checker.check_model(src, full_check=True)
        return
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError, ValueError on odd fields
        strict = _first_line(exc)
    try:
        onnx.checker.check_model(src, full_check=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path} is not a valid ONNX model (onnx.checker: {_first_line(exc)})",
                             "re-export the model, or repair it with the onnx tools") from None
    problem = ort_load_error(path)
    if problem is not None:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {problem}",
                             f"re-export the model (onnx shape inference says: {strict})")


def quiet_ort():
    """The onnxruntime module with its global logger silenced (failures surface as exceptions)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    return ort


def ort_load_error(path: Path) -> str | None:
    """None if onnxruntime creates a session from the file, else the first line of its error."""
    ort = quiet_ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check only
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        return _first_line(exc).replace("[ONNXRuntimeError] : ", "")
    return None


def _external_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def check_external_location(base_dir: Path, location: str, model_path: Path) -> Path:
    """Resolve an external-data location, refusing paths that leave the model's folder."""
    if not isinstance(location, str) or "\x00" in location:
        raise ModelLoadError(f"{model_path} refers to external data at an invalid location ({location!r})",
                             "re-export the model")
    if not location or os.path.isabs(location) or Path(location).is_absolute():
        raise ModelLoadError(
            f"{model_path} refers to external data at an absolute path ({location!r})",
            "external data must sit in the model's folder; re-save the model with a relative location")
    target = (base_dir / location)
    resolved = target.resolve()
    if base_dir.resolve() not in resolved.parents and resolved != base_dir.resolve():
        raise ModelLoadError(
            f"{model_path} refers to external data outside its folder ({location!r})",
            "external data must sit in the model's folder; move it there and re-save the model")
    if target.is_symlink():
        raise ModelLoadError(f"{model_path} refers to external data through a symlink ({location!r})",
                             "replace the symlink with the real file")
    if not target.is_file():
        raise ModelLoadError(f"{model_path} needs external data file {location!r}, which is missing "
                             f"from {base_dir}", "copy the .data file next to the model")
    return target


def _load_external(model: onnx.ModelProto, path: Path, lazy: bool = False) -> None:
    """Validate every external tensor, then read it into the model (or, ``lazy``, the large ones
    become references to their checked files by absolute path)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    if not _check_external(model, path):
        return
    if not lazy:
        onnx.load_external_data_for_model(model, str(path.parent))
        return
    for tensor in model.graph.initializer:
        location, _, length = _external_info(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL and length >= LAZY_MIN_BYTES:
            file = check_external_location(path.parent, location, path)
            _set_location(tensor, str(file.resolve()))
    for tensor in _external_tensors(model):
        if not is_lazy(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))


def _check_external(model: onnx.ModelProto, path: Path) -> bool:
    """Check every external tensor's location, bounds and size (and run the checker); False if none."""
    from onnx.external_data_helper import ExternalDataInfo

    tensors = _external_tensors(model)
    if not tensors:
        return False
    base = path.parent
    total = 0
    for tensor in tensors:
        try:
            info = ExternalDataInfo(tensor)
        except (ValueError, TypeError) as exc:  # a negative or non-numeric offset / length
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has bad external-data fields "
                                 f"({_first_line(exc)})", "re-export the model") from None
        file = check_external_location(base, info.location, path)
        size = file.stat().st_size
        offset = info.offset or 0
        n_bytes = _expected_bytes(tensor)
        if offset < 0 or (info.length is not None and info.length < 0):
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has a negative external-data offset or "
                                 "length", "re-export the model")
        # without a length, onnx reads from the offset to the end of the file
        length = info.length if info.length is not None else max(size - offset, 0)
        needed = offset + (info.length if info.length is not None else (n_bytes or 0))
        if needed > size:
            raise ModelLoadError(f"{path}: external data {info.location!r} is truncated (tensor "
                                 f"{tensor.name!r} needs bytes up to {needed}, file has {size})",
                                 "copy the complete .data file next to the model")
        if n_bytes is not None and length != n_bytes:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has {length} bytes of external data but "
                                 f"its shape and type need {n_bytes}", "re-export the model")
        total += length or 0
    check_allocation(total, f"{path}: its external data")
    check_valid(path, path)
    return True


def check_runnable(model: onnx.ModelProto, name: str = "the model") -> None:
    """Raise a one-line error if onnxruntime cannot run this IR version / opset."""
    max_ir, max_opset = ort_limits()
    opset = default_opset(model)
    if model.ir_version > max_ir:
        # save() lowers the IR version when the opset allows it; loading is still fine
        pass
    if opset > max_opset:
        raise ModelLoadError(
            f"{name} uses opset {opset}, newer than the installed onnxruntime supports (max {max_opset})",
            "upgrade onnxruntime or convert with onnx.version_converter.convert_version(model, "
            f"{max_opset})")
    if opset < MIN_ORT_OPSET:
        raise ModelLoadError(
            f"{name} uses opset {opset}; onnxruntime runs opset {MIN_ORT_OPSET} and newer",
            f"convert it with onnx.version_converter.convert_version(model, {MIN_ORT_OPSET + 4})")


def load(path: str | os.PathLike, *, load_external_data: bool = True, lazy: bool = False) -> onnx.ModelProto:
    """Load an ONNX model, with its external data, or raise a one-line ModelLoadError.

    ``lazy``: external initializers of LAZY_MIN_BYTES or more are checked like a full load but
    stay on disk (see the module doc); smaller external tensors are read.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a model file", "pass the .onnx file inside it")
    model, data = _parse(path)
    check_runnable(model, str(path))
    check_tensor_data(model, path)  # external tensors are checked against their files below
    external = bool(_external_tensors(model))
    if not external:
        check_valid(data, path)  # the bytes already read: no second serialization
    del data
    if load_external_data and external:
        _load_external(model, path, lazy)  # runs the checker once the locations are known to be safe
    elif external:
        check_valid(path, path)
    check_declared_sizes(model, path)
    return model


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
        shell.data_location = onnx.TensorProto.DEFAULT  # as onnx leaves a tensor it read in
        n = _external_info(t)[2]
        inline = shell.ByteSize() + 1 + _varint_len(n) + n  # + the raw_data field
        extra += inline + _varint_len(inline) - t.ByteSize() - _varint_len(t.ByteSize())
    if not extra:
        return model.ByteSize()
    graph = model.graph.ByteSize()  # its length prefix in the model may grow too
    return model.ByteSize() + extra + _varint_len(graph + extra) - _varint_len(graph)


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


# --- lazy external data: large initializers left on disk until read -------------------------

LAZY_MIN_BYTES = 1 << 20  # smaller external tensors are read at load time


def _external_info(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(location, offset, length) of an external tensor (length from its shape when absent)."""
    fields = {e.key: e.value for e in tensor.external_data}
    length = fields.get("length")
    n = int(length) if length is not None else (_expected_bytes(tensor) or 0)
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
    if dtype.kind not in "biufc" or length != _expected_bytes(tensor):  # 4-bit, float8, ...: onnx decodes
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


def _copy_fields(src, dst, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
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


def _goes_apart(tensor: onnx.TensorProto, threshold: int) -> bool:
    """Whether a tensor goes to the external data file (as onnx.save_model's size_threshold)."""
    if is_lazy(tensor):
        return _external_info(tensor)[2] >= threshold
    return tensor.HasField("raw_data") and stored_size(tensor) >= threshold


def write_model(model: onnx.ModelProto, path: Path, *, external: bool, data_name: str | None = None,
                threshold: int = 1024) -> dict[str, tuple[int, int]]:
    """Write ``model`` to ``path`` without modifying it; with ``external``, initializers of
    ``threshold`` bytes or more go, one at a time, to ``data_name`` beside it (lazy ones are copied
    from their files in blocks: memory stays at one tensor). Returns {name: (offset, length)} of
    the initializers in the data file."""
    if not external:
        onnx.save_model(inline_copy(model), str(path))
        return {}
    data_name = data_name or path.name + ".data"
    placed = {}
    header, pairs = _header(model, lambda t: is_lazy(t) or _goes_apart(t, threshold))
    with open(path.parent / data_name, "wb") as f:
        for shell, src in pairs:
            if not _goes_apart(src, threshold):  # a small lazy tensor: inline, as if it had been read
                _fill(shell, src)
                continue
            offset = f.tell()
            if is_lazy(src):
                location, start, length = _external_info(src)
                _copy_range(location, start, length, f, src.name)
            else:
                length = f.write(src.raw_data)
            _point(shell, data_name, offset, length)
            placed[src.name] = (offset, length)
    onnx.save_model(header, str(path))
    return placed


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def _reading(model: onnx.ModelProto, file: Path) -> list[onnx.TensorProto]:
    """The model's lazy tensors whose data is in ``file``."""
    return [t for t in lazy_tensors(model) if _same_file(Path(_external_info(t)[0]), file)]


def shelter(models, files) -> Path | None:
    """Before ``files`` are replaced, keep what they hold readable for the lazy tensors of
    ``models``: each file such tensors read is hard-linked (or copied) into a hidden folder beside
    it and they point there. Returns that folder (remove it when done), None when nothing reads them."""
    hidden = None
    for file in map(Path, files):
        readers = [t for m in models for t in _reading(m, file)]
        if not readers:
            continue
        hidden = hidden or Path(tempfile.mkdtemp(prefix=".onnxcomp-input.", dir=file.parent))
        keep = hidden / file.name
        if not keep.exists():
            try:
                os.link(file, keep)
            except OSError:  # no hard links here: a copy
                shutil.copyfile(file, keep)
        for t in readers:
            _set_location(t, str(keep.resolve()))
    return hidden


def _copy_range(location: str, start: int, length: int, out, name: str, block: int = 64 << 20) -> None:
    try:
        with open(location, "rb") as src:
            src.seek(start)
            left = length
            while left > 0:
                chunk = src.read(min(block, left))
                if not chunk:
                    raise _lost(name, location)
                out.write(chunk)
                left -= len(chunk)
    except OSError as exc:
        raise _lost(name, location, exc) from None


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


def compatible_ir(model: onnx.ModelProto) -> None:
    """Lower the IR version in place to what the installed onnxruntime accepts, when above it."""
    max_ir, _ = ort_limits()
    if model.ir_version > max_ir:
        model.ir_version = max_ir
    if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input as well
        listed = {i.name for i in model.graph.input}
        for t in model.graph.initializer:
            if t.name not in listed:
                model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _own_data(path: Path, data_file: Path) -> Path | None:
    """``data_file`` when the file at ``path`` (about to be replaced by a model with its tensors
    inline) keeps its tensors there and nowhere else: overwriting the input with ``--force``
    must not leave its old ``.data`` behind. A .data file of another name may be shared; kept."""
    if not (path.is_file() and data_file.is_file()):
        return None
    try:
        from onnx.external_data_helper import ExternalDataInfo

        header = onnx.load(str(path), load_external_data=False)
        places = {ExternalDataInfo(t).location for t in _external_tensors(header)}
    except Exception:  # noqa: BLE001 - not a model we can read: leave its neighbours alone
        return None
    return data_file if places == {data_file.name} else None


def _refuse_input_data(data_file: Path, input_path: Path) -> None:
    """The output's ``.data`` file may not be the input model or one of its external data files."""
    if not data_file.exists():
        return
    inputs = [input_path]
    try:
        header = onnx.load(str(input_path), load_external_data=False)
        from onnx.external_data_helper import ExternalDataInfo

        inputs += [input_path.parent / ExternalDataInfo(t).location for t in _external_tensors(header)]
    except Exception:  # noqa: BLE001 - the input was loaded before; be conservative
        pass
    if any(_same_file(data_file, p) for p in inputs):
        raise ModelSaveError(f"the output's external data file {data_file} is the input's external data",
                             "choose another -o name (the input would be overwritten)")


def save(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
         verify: bool = True, force: bool = False) -> Path:
    """Write the model atomically to ``path`` and return the path.

    The model goes to a temporary file in the target folder; when ``verify`` is set it must pass
    ``onnx.checker`` and load in onnxruntime before it is renamed into place. Models above 2 GB
    get their tensors in ``<name>.data`` beside the file, written one tensor at a time (lazy
    tensors are copied from their files); ``model`` keeps its tensors. ``path`` may not be
    ``input_path`` unless ``force`` is set.
    """
    path = Path(path)
    if input_path is not None and not force and (
            path.resolve() == Path(input_path).resolve() or _same_file(path, Path(input_path))):
        raise ModelSaveError(f"output {path} is the input model",
                             "choose another -o path (or pass --force to overwrite the input)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelSaveError(f"output folder {folder} does not exist", "create it or choose another -o")
    if path.is_dir():
        raise ModelSaveError(f"output {path} is a folder", "give a file name ending in .onnx")
    compatible_ir(model)
    external = needs_external_data(model)
    if external and input_path is not None and not force:
        _refuse_input_data(folder / (path.name + ".data"), Path(input_path))
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        tmp = tmp_dir / path.name
        data_name = path.name + ".data"
        placed = write_model(model, tmp, external=external, data_name=data_name)  # ``model`` as it was
        stale = _reading(model, folder / data_name) if external else []  # in the file to be replaced
        if verify:
            try:
                verify_file(tmp)
            except Exception:  # noqa: BLE001 - blame the input when onnxruntime cannot load it either
                problem = ort_load_error(Path(input_path)) if input_path is not None else None
                if problem is not None:
                    raise ModelLoadError(f"onnxruntime cannot load {input_path}: {problem}",
                                         "re-export the model; onnxcomp writes only models onnxruntime "
                                         "loads") from None
                raise
        for t in stale:  # small ones were written inline: read them in now, while the file is there
            if t.name not in placed:
                _fill(t, t)
        if external:
            os.replace(tmp_dir / data_name, folder / data_name)
            for t in stale:  # the same bytes, at their place in the new file
                if t.name in placed:
                    _point(t, str((folder / data_name).resolve()), *placed[t.name])
            try:
                os.replace(tmp, path)
            except BaseException:  # never a .data file without its model
                (folder / data_name).unlink(missing_ok=True)
                raise
        else:
            orphan = _own_data(path, folder / data_name)
            os.replace(tmp, path)
            if orphan is not None:  # the replaced file's .data: nothing refers to it any more
                for t in _reading(model, orphan):
                    _fill(t, t)
                orphan.unlink(missing_ok=True)
    except OSError as exc:
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}",
                             "check the folder's permissions and free space") from None
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()
    return path


def discard(path: Path, keep: Path | None = None) -> None:
    """Remove a written output (and its .data) after the command failed; never the file ``keep``."""
    if keep is not None and _same_file(path, Path(keep)):
        return
    for p in (path, path.with_name(path.name + ".data")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def verify_file(path: Path) -> None:
    """Run onnx.checker on the file and create an onnxruntime session from it (raise on failure)."""
    ort = quiet_ort()

    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    # a load check only: constant-folding big in-graph decoders here would cost ~8x their weights
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def default_output(input_path: str | os.PathLike, command: str, suffix: str = ".onnx") -> Path:
    """``<stem>.<command>.onnx`` beside the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.{command}{suffix}")
