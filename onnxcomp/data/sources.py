"""Building blocks of calibration sources: input specs, batch validation, re-batching, .npy folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import helper

from onnxcomp.errors import ConfigError, DataError
from onnxcomp.graph.shapes import input_specs

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: dims (int, or str/None when dynamic) and numpy dtype."""

    name: str
    dims: tuple
    dtype: np.dtype
    high: int = 2  # random integers are drawn from [0, high): a valid index wherever the input is used

    def describe(self) -> str:
        """``input[batch,1,16,16] float32``"""
        dims = ",".join("?" if d is None or d == 0 else str(d) for d in self.dims)
        return f"{self.name}[{dims}] {self.dtype}"


def model_inputs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """The model's real inputs, in graph order."""
    out = {}
    for name, (dims, elem) in input_specs(model).items():
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        except Exception:  # noqa: BLE001 - undefined elem type: assume float32
            dtype = np.dtype(np.float32)
        high = _index_range(model, name) if np.issubdtype(dtype, np.integer) else None
        out[name] = InputSpec(name, tuple(dims), dtype, high or 2)
    return out


VALUE_KEEPING = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")


def _index_range(model: onnx.ModelProto, name: str) -> int | None:
    """How many rows every table the input indexes has (token ids into embedding tables: the
    smallest vocabulary), when every use of the input is as Gather indices into a constant
    table (through value-keeping ops); else None (0/1 then: a valid index for any use)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            dims[n.output[0]] = list(n.attribute[0].t.dims)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    sizes, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in readers.get(t, []):
            if n.op_type in ("Shape", "Size"):
                continue  # reads the dims only
            if n.op_type in VALUE_KEEPING and n.input[0] == t:
                todo.extend(n.output)
            elif n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t and n.input[0] != t \
                    and n.input[0] in dims:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                table = dims[n.input[0]]
                if not table or table[axis] <= 0:
                    return None
                sizes.append(table[axis])
            else:
                return None
    return min(sizes) if sizes else None


def fixed_batch(specs: dict[str, InputSpec]) -> int | None:
    """The fixed leading dim when the model's inputs pin the batch size, else None."""
    for spec in specs.values():
        if spec.dims and isinstance(spec.dims[0], int) and spec.dims[0] > 0:
            return spec.dims[0]
    return None


def expected(specs: dict[str, InputSpec]) -> str:
    """``the model expects input[batch,1,16,16] float32``"""
    return "the model expects " + (", ".join(s.describe() for s in specs.values()) or "no inputs")


def _convert(arr: np.ndarray, spec: InputSpec, origin: str, notes: list[str]) -> np.ndarray:
    if arr.dtype == spec.dtype:
        return arr
    note = f"{spec.name}: {arr.dtype} converted to {spec.dtype}"
    both_float = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)
    widen_int = (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer)
                 and np.can_cast(arr.dtype, spec.dtype, "safe"))
    if both_float or widen_int:
        if note not in notes:
            notes.append(note)
        return arr.astype(spec.dtype)
    raise DataError(f"{origin}: array {spec.name!r} is {arr.dtype} but the model expects {spec.describe()}",
                    "convert it (with the training preprocessing) to that dtype")


def _fit_rank(arr: np.ndarray, spec: InputSpec, origin: str) -> np.ndarray:
    dims = spec.dims
    if not dims:
        raise DataError(f"{origin}: input {spec.name!r} is a scalar (the model expects {spec.describe()})",
                        "calibration data needs inputs with samples on axis 0")
    if arr.ndim == len(dims) - 1 and all(not isinstance(d, int) or d <= 0 or d == s
                                         for d, s in zip(dims[1:], arr.shape)):
        arr = arr[None]  # a single sample
    bad = arr.ndim != len(dims) or any(isinstance(d, int) and d > 0 and d != s
                                       for d, s in zip(dims[1:], arr.shape[1:]))
    if bad:
        shape = "x".join(map(str, arr.shape)) or "scalar"
        raise DataError(f"{origin}: array {spec.name!r} has shape {shape} but the model expects "
                        f"{spec.describe()}", "store samples on axis 0 with the other dims as listed")
    return arr


def check_batch(batch: dict, specs: dict[str, InputSpec], origin: str, notes: list[str]) -> Batch:
    """Validate one chunk against the inputs: names, rank, static dims, dtype, equal lengths."""
    if not isinstance(batch, dict):
        raise DataError(f"{origin}: a batch is a {type(batch).__name__}, not a dict",
                        f"yield {{input_name: array}} dicts; {expected(specs)}")
    for key in batch:
        if key not in specs:
            raise DataError(f"{origin}: array {key!r} does not match any model input", expected(specs))
    out: Batch = {}
    for name, spec in specs.items():
        if name not in batch:
            raise DataError(f"{origin}: no array for model input {name!r}", expected(specs))
        arr = np.asarray(batch[name])
        if arr.dtype.kind in "OUSV":
            raise DataError(f"{origin}: array {name!r} holds {arr.dtype} values", expected(specs))
        arr = _fit_rank(arr, spec, origin)
        if arr.shape[0] == 0:
            raise DataError(f"{origin}: array {name!r} has no samples", expected(specs))
        out[name] = _convert(arr, spec, origin, notes)
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{origin}: inputs have different numbers of samples ({lengths})",
                        "give every input the same number of samples on axis 0")
    return out


def _cat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def rebatch(chunks: Iterable[Batch], size: int, limit: int | None, drop_partial: bool) -> Iterator[Batch]:
    """Re-cut chunks of any length into batches of ``size`` samples, stopping after ``limit``."""
    buf: list[Batch] = []
    n_buf = emitted = 0
    for chunk in chunks:
        n = len(next(iter(chunk.values()))) if chunk else 0
        start = 0
        while start < n:
            room = size - n_buf if limit is None else min(size - n_buf, limit - emitted - n_buf)
            if room <= 0:
                break
            take = min(room, n - start)
            buf.append({k: v[start:start + take] for k, v in chunk.items()})
            n_buf, start = n_buf + take, start + take
            if n_buf == size:
                yield _cat(buf)
                emitted, buf, n_buf = emitted + size, [], 0
        if limit is not None and emitted + n_buf >= limit:
            break
    if buf and not drop_partial:
        yield _cat(buf)


def npy_folder(folder: Path, files: list[Path], specs: dict[str, InputSpec],
               convert: Callable[[dict, str], dict] | None = None
               ) -> tuple[Callable[[], Iterator[Batch]], int, list[str]]:
    """Group ``.npy`` files into batches (one input: any names; several: ``<input>.<key>.npy``);
    ``convert`` makes each batch samples-first (``data.layout``)."""
    convert = convert or (lambda batch, origin: batch)
    groups: dict[str, dict[str, Path]] = {}
    if len(specs) == 1:
        name = next(iter(specs))
        for f in files:
            groups[f.name] = {name: f}
    else:
        for f in files:
            name = next((n for n in sorted(specs, key=len, reverse=True) if f.name.startswith(n + ".")), None)
            if name is None:
                raise DataError(f"{folder}: file {f.name!r} does not match any model input",
                                f"name files <input>.<key>.npy; {expected(specs)}")
            groups.setdefault(f.name[len(name) + 1:], {})[name] = f
        for key, group in groups.items():
            missing = [n for n in specs if n not in group]
            if missing:
                raise DataError(f"{folder}: sample {key!r} has no file for input {missing[0]!r}",
                                f"add {missing[0]}.{key}; {expected(specs)}")
    notes: list[str] = []
    total = 0
    for group in groups.values():  # headers only (memory-mapped): validates shapes and counts samples
        chunk = check_batch(convert({k: _read(p, mmap=True) for k, p in group.items()}, folder.name), specs,
                            folder.name, notes)
        total += len(next(iter(chunk.values())))

    def factory() -> Iterator[Batch]:
        for group in groups.values():
            yield convert({k: _read(p) for k, p in group.items()}, folder.name)

    return factory, total, notes


def _read(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is not a readable .npy file ({' '.join(str(exc).split())})",
                        "save each sample with numpy.save") from None


class DynamicDimsError(DataError):
    """Random inputs cannot be made: an input has dynamic dims and no --input-shape gave them.
    ``example`` is an --input-shape value that fits (commands without --data say only that)."""

    def __init__(self, problem: str, fix: str, example: str) -> None:
        super().__init__(problem, fix)
        self.example = example


def input_shapes_for_random(specs: dict[str, InputSpec], input_shapes: dict[str, tuple[int, ...]],
                            batch_size: int) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for random data: user shapes, else the dims with a dynamic batch = batch_size."""
    unknown = [n for n in input_shapes if n not in specs]
    if unknown:
        raise ConfigError(f"--input-shape names {unknown[0]!r}, which is not a model input", expected(specs))
    shapes = {}
    for name, spec in specs.items():
        if name in input_shapes:
            shape = tuple(input_shapes[name])
            if len(shape) != len(spec.dims) or any(isinstance(d, int) and d > 0 and d != s
                                                   for d, s in zip(spec.dims, shape)):
                raise ConfigError(f"--input-shape {name}={'x'.join(map(str, shape))} does not fit "
                                  f"{spec.describe()}", "keep the static dims and give one size per dim")
        else:
            dims = list(spec.dims)
            if dims and not (isinstance(dims[0], int) and dims[0] > 0):
                dims[0] = batch_size
            if any(not (isinstance(d, int) and d > 0) for d in dims):
                example = ",".join(f"{n}={_example(specs[n].dims)}" for n in specs if n not in input_shapes and
                                   not all(isinstance(d, int) and d > 0 for d in specs[n].dims[1:]))
                raise DynamicDimsError(f"random inputs for {name!r} need sizes for its dynamic dims "
                                       f"(the model takes {spec.describe()})",
                                       f"pass --data with real inputs, or --input-shape {example} with the "
                                       "sizes your model takes (every input that needs them)", example)
            shape = tuple(dims)
        shapes[name] = shape
    _check_random_size(specs, shapes)
    return shapes


def _example(dims) -> str:
    """An --input-shape value for ``dims``: a fixed dim as it is, a dynamic batch 1, others 64."""
    return "x".join(str(d) if isinstance(d, int) and d > 0 else ("1" if i == 0 else "64") for i, d in enumerate(dims))


def check_stackable(specs: dict[str, InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse random samples whose inputs disagree on the size of axis 0, where samples are
    stacked (e.g. an RNN's ``state[layers, batch, hidden]`` beside ``x[batch, n]``)."""
    firsts = {n: s[0] if s else None for n, s in shapes.items()}
    if len(set(firsts.values())) < 2:
        return
    listed = ", ".join(f"{n}[{'x'.join(map(str, s))}]" for n, s in shapes.items())
    fixed = {d[0] for d in (specs[n].dims for n in shapes) if d and isinstance(d[0], int) and d[0] > 0}
    fix = "compare the outputs in your own pipeline (samples are stacked on axis 0 of every input)"
    if len(fixed) == 1:
        size = next(iter(fixed))
        fix = f"pass --input-shape with {size} on axis 0 of every input, or {fix}"
    raise DataError(f"random samples cannot be stacked on axis 0: the inputs disagree on its size ({listed})", fix)


def _check_random_size(specs: dict[str, InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, before allocating, a random batch larger than half the available memory."""
    from onnxcomp.io.checks import available_memory

    for name, shape in shapes.items():
        n_bytes = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(specs[name].dtype).itemsize
        if n_bytes > available_memory() // 2:
            raise DataError(f"random data for input {name!r} of shape {'x'.join(map(str, shape))} would need "
                            f"{n_bytes / 1e9:.3g} GB", f"pass --input-shape {name}=... with real sizes, or "
                            "real data with --data")
