"""Reading and writing model files: the only module that touches the file system for models.

Loading checks everything a user can get wrong (missing file, not ONNX, truncated, missing or
escaping external data, an IR version or opset the installed onnxruntime cannot run) and raises a
one-line :class:`ModelLoadError`. Saving is atomic (temp file in the target folder, verified, then
renamed), never onto the input, with external data when the model exceeds protobuf's 2 GB limit.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from .errors import ModelLoadError, ModelSaveError

PROTOBUF_LIMIT = 2**31 - 1
# leave headroom for the graph itself: above this many tensor bytes we always use external data
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
MIN_ORT_OPSET = 7
_ONNX_MAGIC_FIRST_BYTE = 0x08  # field 1 (ir_version), varint: every serialized ModelProto starts so


@functools.lru_cache(maxsize=1)
def ort_limits() -> tuple[int, int]:
    """(max IR version, max default-domain opset) the installed onnxruntime accepts, probed once."""
    import onnxruntime as ort

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


def _parse(path: Path) -> onnx.ModelProto:
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
    return model


def _external_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def check_external_location(base_dir: Path, location: str, model_path: Path) -> Path:
    """Resolve an external-data location, refusing paths that leave the model's folder."""
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


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import ExternalDataInfo

    tensors = _external_tensors(model)
    if not tensors:
        return
    base = path.parent
    for tensor in tensors:
        info = ExternalDataInfo(tensor)
        file = check_external_location(base, info.location, path)
        size = file.stat().st_size
        offset = info.offset or 0
        n_bytes = _expected_bytes(tensor)
        length = info.length if info.length is not None else n_bytes
        if n_bytes is not None and length is not None and length != n_bytes:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} declares {length} bytes of external "
                                 f"data but its shape needs {n_bytes}", "re-export the model")
        if length is not None and offset + length > size:
            raise ModelLoadError(f"{path}: external data {info.location!r} is truncated (tensor "
                                 f"{tensor.name!r} needs bytes up to {offset + length}, file has {size})",
                                 "copy the complete .data file next to the model")
    onnx.load_external_data_for_model(model, str(base))


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


def load(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, with its external data, or raise a one-line ModelLoadError."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not a model file", "pass the .onnx file inside it")
    model = _parse(path)
    if load_external_data:
        _load_external(model, path)
    check_runnable(model, str(path))
    return model


def _tensor_bytes(model: onnx.ModelProto) -> int:
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) + 4 * len(t.int32_data)
               + 8 * len(t.double_data) for t in _get_all_tensors(model))


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the serialized model would exceed protobuf's 2 GB limit."""
    return _tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD


def compatible_ir(model: onnx.ModelProto) -> None:
    """Lower the IR version in place to what the installed onnxruntime accepts, when above it."""
    max_ir, _ = ort_limits()
    if model.ir_version > max_ir:
        model.ir_version = max_ir


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def save(model: onnx.ModelProto, path: str | os.PathLike, *, input_path: str | os.PathLike | None = None,
         verify: bool = True, force: bool = False) -> Path:
    """Write the model atomically to ``path`` and return the path.

    The model goes to a temporary file in the target folder; when ``verify`` is set it must pass
    ``onnx.checker`` and load in onnxruntime before it is renamed into place. Models above 2 GB
    get their tensors in ``<name>.data`` beside the file. ``path`` may not be ``input_path``
    unless ``force`` is set.
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
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        tmp = tmp_dir / path.name
        if external:
            data_name = path.name + ".data"
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp))
        if verify:
            verify_file(tmp)
        if external:
            os.replace(tmp_dir / data_name, folder / data_name)
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelSaveError(f"cannot write {path}: {exc.strerror or exc}",
                             "check the folder's permissions and free space") from None
    finally:
        for leftover in tmp_dir.glob("*"):
            leftover.unlink()
        tmp_dir.rmdir()
    return path


def verify_file(path: Path) -> None:
    """Run onnx.checker on the file and create an onnxruntime session from it (raise on failure)."""
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def default_output(input_path: str | os.PathLike, command: str, suffix: str = ".onnx") -> Path:
    """``<stem>.<command>.onnx`` beside the input."""
    p = Path(input_path)
    return p.with_name(f"{p.stem}.{command}{suffix}")
