"""Sanity checks on a parsed model, before anything decodes or allocates its tensors.

A model file may be damaged or hostile: names that are not text, tensors whose data does not
match their dims, ConstantOfShape nodes or external data asking for terabytes. These checks look
at the protobuf only (no file access, no decoding of large data) and raise a one-line
:class:`ModelLoadError`; :func:`onnxcomp.io.load.load` runs them on every load. The
external-data checks (locations, bounds) and the checker run here too.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from onnxcomp.errors import ModelLoadError, first_line
from onnxcomp.io.ort import ort_load_error


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
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


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model (subgraphs included) whose data lives in an external file."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


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
    raw = len(t.raw_data)  # reading a bytes field copies it: once (big ones are left on disk by then)
    if raw:
        itemsize_bytes = expected_bytes(t)
        if itemsize_bytes is None:
            return None
        n = 1
        for d in t.dims:
            n *= d
        return n if raw == itemsize_bytes else -1
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
        for node in graph.node:  # onnxruntime refuses such graphs, except among Constant nodes
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):  # (unique_node_names)
                continue
            if node.name and node.name in seen:
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
                need = expected_bytes(t) if t.raw_data else n
                raise ModelLoadError(f"{path}: tensor {t.name!r} holds {got} but its shape {list(t.dims)} "
                                     f"needs {need}", "re-export or re-download the model")


def unique_node_names(model: onnx.ModelProto) -> int:
    """Rename nodes named like an earlier node of their graph (Constant nodes all named ``F0::anon``,
    which onnxruntime folds and accepts), so passes can address nodes by name; returns the count."""
    renamed = 0
    for graph in _all_graphs(model.graph):
        taken = {n.name for n in graph.node}
        seen: set[str] = set()
        for node in graph.node:
            if node.name and node.name in seen:
                k = 1
                while f"{node.name}_{k}" in taken:
                    k += 1
                node.name = f"{node.name}_{k}"
                taken.add(node.name)
                renamed += 1
            seen.add(node.name)
    return renamed


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


def check_valid(model: bytes | Path | onnx.ModelProto, path: Path) -> None:
    """Run onnx.checker with strict shape inference and turn a failure into one line.

    ``model`` is the file's path (the checker then resolves external data against its folder),
    its bytes, or the model in memory (sorted by :mod:`onnxcomp.io.order`). A model that only ONNX's shape
    inference rejects is accepted when onnxruntime loads it (onnxruntime has the last word).
    """
    src = model if isinstance(model, (bytes, onnx.ModelProto)) else str(model)
    try:
        onnx.checker.check_model(src, full_check=True)
        return
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError, ValueError on odd fields
        strict = first_line(exc)
    try:
        onnx.checker.check_model(src, full_check=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path} is not a valid ONNX model (onnx.checker: {first_line(exc)})",
                             "re-export the model, or repair it with the onnx tools") from None
    problem = ort_load_error(path)
    if problem is not None:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {problem}",
                             f"re-export the model (onnx shape inference says: {strict})")


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


def check_external(model: onnx.ModelProto, path: Path, checked: Path | onnx.ModelProto | None = None) -> bool:
    """Check every external tensor's location, bounds, size; run the checker (on ``checked``, else the file)."""
    from onnx.external_data_helper import ExternalDataInfo

    tensors = external_tensors(model)
    if not tensors:
        return False
    base = path.parent
    total = 0
    for tensor in tensors:
        try:
            info = ExternalDataInfo(tensor)
        except (ValueError, TypeError) as exc:  # a negative or non-numeric offset / length
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} has bad external-data fields "
                                 f"({first_line(exc)})", "re-export the model") from None
        file = check_external_location(base, info.location, path)
        size = file.stat().st_size
        offset = info.offset or 0
        n_bytes = expected_bytes(tensor)
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
    check_valid(path if checked is None else checked, path)
    return True
