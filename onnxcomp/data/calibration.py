"""Calibration data: every source yields batches ``{input_name: ndarray}`` with samples on axis 0.

Sources (``load_data``): a ``.npz`` (arrays keyed by input name; an optional ``labels`` array), a
``.npy`` file (single-input models), a folder of ``.npy`` files (one sample or batch per file;
multi-input models name them ``<input>.<key>.npy``, e.g. ``ids.0001.npy`` + ``mask.0001.npy``),
an image folder with a preprocessing spec (see :mod:`onnxcomp.data.images`), random data matched to
the input specs (``source=None``; always flagged "no quality guarantee"), or any iterable of
batch dicts (or a callable returning one).

Dtype policy: float data is cast to the input's float type (float64 -> float32 loses nothing
inference can see) and integers widen losslessly; both are noted in ``description``. Anything
else (integers for a float input, floats for an integer input) is a DataError, because it almost
always means the training preprocessing was skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxcomp.data.labels import LABELS_KEY, load_labels
from onnxcomp.data.layout import Convert, converted, converter, spec_samples_first
from onnxcomp.data.sampling import whole
from onnxcomp.data.sources import (InputSpec, check_batch, check_stackable, expected, fixed_batch,
                                   input_shapes_for_random, model_inputs, npy_folder, rebatch)
from onnxcomp.errors import ConfigError, DataError

DEFAULT_BATCH = 16
RANDOM_NOTE = "random data: no quality guarantee"
Batch = dict[str, np.ndarray]

__all__ = ["CalibrationData", "load_data", "load_labels", "InputSpec", "model_inputs", "RANDOM_NOTE"]


class CalibrationData:
    """A re-iterable source of validated batches ``{input_name: ndarray}``.

    Iterating twice gives the same batches. ``random`` marks synthetic data (no quality
    guarantee); ``labels`` holds task labels when the source had them. Every input is held
    samples-first; ``layout`` names those the model itself takes otherwise (``{name: axis}``, None
    for a scalar), for which a model is run through :func:`onnxcomp.graph.layout.adapt`.
    """

    def __init__(self, factory: Callable[[], Iterable[Batch]], specs: dict[str, InputSpec], *,
                 description: str, batch_size: int = DEFAULT_BATCH, num_samples: int | None = None,
                 random: bool = False, labels: np.ndarray | None = None, origin: str = "data",
                 notes: list[str] | None = None, layout: dict[str, int | None] | None = None) -> None:
        self._factory = factory
        self.layout = dict(layout or {})  # inputs the model takes with samples off axis 0 (graph.layout)
        self.specs = specs
        self.origin = origin
        self.random = random
        self.labels = labels
        self.notes = list(notes or [])
        self.unit = fixed_batch(specs) or 1  # the model runs whole batches of this many samples
        if num_samples is not None:
            num_samples = whole(num_samples, self.unit)
        self.num_samples = num_samples
        self.limit = num_samples
        self.batch_size = fixed_batch(specs) or batch_size
        self._description = description

    @property
    def input_names(self) -> list[str]:
        return list(self.specs)

    @property
    def description(self) -> str:
        text = self._description
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return f"{text}; {RANDOM_NOTE}" if self.random else text

    def __iter__(self) -> Iterator[Batch]:
        drop_partial = fixed_batch(self.specs) is not None
        chunks = (check_batch(c, self.specs, self.origin, self.notes) for c in self._factory())
        count = 0
        for batch in rebatch(chunks, self.batch_size, self.limit, drop_partial):
            count += len(next(iter(batch.values())))
            yield batch
        if self.num_samples is None:
            self.num_samples = count

    def __repr__(self) -> str:
        return f"CalibrationData({self.description!r})"


def _model_proto(model: Any) -> onnx.ModelProto:
    from onnxcomp.io.loader import load
    from onnxcomp.io.model import Model

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, Model):
        return model.proto
    return load(model, load_external_data=False)


def load_data(source: Any, model: Any, *, input_shapes: dict[str, tuple[int, ...]] | None = None,
              batch_size: int = DEFAULT_BATCH, num_samples: int | None = None, seed: int = 0,
              preprocess: Any = None) -> CalibrationData:
    """Calibration data for ``model`` from a path, None (random data) or an iterable of batches."""
    if batch_size is None or int(batch_size) < 1:
        raise ConfigError(f"batch size {batch_size} is not positive", "pass --batch-size 1 or more")
    if num_samples is not None and int(num_samples) < 1:
        raise ConfigError(f"number of samples {num_samples} is not positive", "pass --num-samples 1 or more")
    if isinstance(source, CalibrationData):
        return source
    proto = _model_proto(model)
    specs = model_inputs(proto)
    if not specs:
        raise DataError("the model has no graph inputs, so there is no data to run it on (its outputs are "
                        "constants)", "re-export the model with its inputs")
    kw = dict(batch_size=int(batch_size), num_samples=num_samples)
    from onnxcomp.graph.layout import sample_axes, samples_first

    layout = sample_axes(proto)
    if source is None and any(a is None and not np.issubdtype(specs[n].dtype, np.floating) for n, a in layout.items()):
        layout = {}  # an integer scalar (a sample rate, a mode) has no random value the model surely takes
    convert = converter(specs, layout)
    specs = {n: spec_samples_first(s, layout[n]) if n in layout else s for n, s in specs.items()}
    if source is None:
        shapes = {n: tuple(samples_first(list(s), layout[n])) if layout.get(n) is not None else s
                  for n, s in (input_shapes or {}).items()}
        data = _random(specs, shapes, seed=seed, layout=layout, **kw)
    elif isinstance(source, (str, os.PathLike)):
        data = _from_path(Path(source), specs, preprocess, convert=convert, **kw)
    elif isinstance(source, dict):
        data = _from_arrays(dict(source), specs, "data", convert=convert, **kw)
    else:
        data = _from_iterable(source, specs, convert=convert, **kw)
    data.layout = layout
    return data


def _limited(n: int | None, available: int) -> int:
    return available if n is None else min(int(n), available)


def _from_arrays(arrays: dict[str, Any], specs: dict[str, InputSpec], origin: str, *,
                 batch_size: int, num_samples: int | None, convert: Convert | None = None) -> CalibrationData:
    labels = arrays.pop(LABELS_KEY, None)
    if not arrays:
        raise DataError(f"{origin} holds no input arrays", f"store one array per input; {expected(specs)}")
    notes: list[str] = []
    arrays = convert(arrays, origin) if convert is not None else arrays
    arrays = check_batch(arrays, specs, origin, notes)
    n = _whole_batches(len(next(iter(arrays.values()))), specs, origin, notes)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != n:
            raise DataError(f"{origin}: 'labels' has {len(labels)} entries but the inputs have {n} samples",
                            "store one label per sample")
    desc = f"{origin}: {_limited(num_samples, n)} of {n} samples"
    return CalibrationData(lambda: [arrays], specs, description=desc, batch_size=batch_size,
                           num_samples=_limited(num_samples, n), labels=labels, origin=origin, notes=notes)


def _whole_batches(n: int, specs: dict[str, InputSpec], origin: str, notes: list[str]) -> int:
    """The samples usable in whole batches of the model's fixed batch (all of them when dynamic)."""
    unit = fixed_batch(specs)
    if unit is None or n % unit == 0:
        return n
    if n < unit:
        raise DataError(f"{origin} holds {n} sample(s) but the model runs whole batches of {unit} "
                        f"(its inputs fix the batch: {expected(specs)})",
                        f"give at least {unit} samples (a multiple of {unit}), or re-export the model with a "
                        "dynamic batch")
    notes.append(f"the last {n % unit} sample(s) left out: the model runs whole batches of {unit}")
    return n - n % unit


def _from_path(path: Path, specs: dict[str, InputSpec], preprocess: Any, *, batch_size: int,
               num_samples: int | None, convert: Convert | None = None) -> CalibrationData:
    if not path.exists():
        raise DataError(f"data path {path} does not exist", f"check the path; {expected(specs)}")
    if path.is_dir():
        return _from_folder(path, specs, preprocess, batch_size=batch_size, num_samples=num_samples,
                            convert=convert)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)", f"{expected(specs)}")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise DataError(f"unsupported data file {path.name!r}",
                        "use .npz (arrays keyed by input name), .npy, or a folder of .npy files or images")
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if len(specs) != 1:
                raise DataError(f"{path} holds one array but the model has {len(specs)} inputs",
                                f"use a .npz keyed by input name; {expected(specs)}")
            arrays = {next(iter(specs)): arr}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/pickle/format errors all mean "not readable"
        raise DataError(f"{path} is not a readable {suffix} file ({' '.join(str(exc).split())})",
                        f"save it with numpy.save{'z' if suffix == '.npz' else ''}; {expected(specs)}") from None
    return _from_arrays(arrays, specs, path.name, batch_size=batch_size, num_samples=num_samples, convert=convert)


def _from_folder(folder: Path, specs: dict[str, InputSpec], preprocess: Any, *, batch_size: int,
                 num_samples: int | None, convert: Convert | None = None) -> CalibrationData:
    from onnxcomp.data.images import IMAGE_SUFFIXES, image_folder

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    if npys:
        factory, n, notes = npy_folder(folder, npys, specs, convert)
        desc = f"{folder.name}/: {_limited(num_samples, n)} of {n} samples from {len(npys)} .npy files"
        return CalibrationData(factory, specs, description=desc, batch_size=batch_size,
                               num_samples=_limited(num_samples, n), origin=folder.name, notes=notes)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"{folder} holds no .npy files and no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)",
                        f"point --data at a .npz, .npy files or images; {expected(specs)}")
    factory, desc = image_folder(folder, images, specs, preprocess, batch_size)
    n = len(images)
    return CalibrationData(factory, specs, description=f"{desc}; {_limited(num_samples, n)} images",
                           batch_size=batch_size, num_samples=_limited(num_samples, n), origin=folder.name)


def _from_iterable(source: Any, specs: dict[str, InputSpec], *, batch_size: int,
                   num_samples: int | None, convert: Convert | None = None) -> CalibrationData:
    if callable(source):
        factory = source
    else:
        try:
            it = iter(source)
        except TypeError:
            raise ConfigError(f"calibration data of type {type(source).__name__} is not supported",
                              "pass a path, None (random data) or an iterable of {input_name: array} dicts") from None
        if it is source:  # a one-shot iterator: allow exactly one pass
            used = []

            def factory() -> Iterable[Batch]:
                if used:
                    raise ConfigError("the calibration iterator was already consumed",
                                      "pass a list of batches or a callable returning an iterator")
                used.append(True)
                return it
        else:
            factory = lambda: source  # noqa: E731 - re-iterable container
    return CalibrationData(converted(factory, convert, "data"), specs, description="in-memory batches",
                           batch_size=batch_size, num_samples=num_samples, origin="data")


def random_feed(specs: dict[str, InputSpec], shapes: dict[str, tuple[int, ...]],
                rng: np.random.Generator) -> Batch:
    """One random input per model input at ``shapes``: standard normal floats; integers uniform
    over every valid row of the tables they index (token ids over the vocabulary), else 0/1."""
    out = {}
    for name, shape in shapes.items():
        dt = specs[name].dtype
        if np.issubdtype(dt, np.floating):
            out[name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[name] = rng.integers(0, min(specs[name].high, int(np.iinfo(dt).max) + 1), shape).astype(dt)
    return out


def _random(specs: dict[str, InputSpec], input_shapes: dict[str, tuple[int, ...]], *, seed: int,
            batch_size: int, num_samples: int | None, layout: dict | None = None) -> CalibrationData:
    shapes = input_shapes_for_random(specs, input_shapes, batch_size)
    check_stackable(specs, shapes)
    batch = next(iter(shapes.values()))[0] if shapes and next(iter(shapes.values())) else 1
    # batch_size samples by default, in whole batches of the shape's (a model that fixes its batch at
    # 1, or an --input-shape of 1 sample, is still checked on batch_size samples, one at a time)
    total = whole(num_samples, fixed_batch(specs) or 1) if num_samples is not None else whole(batch_size, batch)

    def factory() -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        for _ in range(0, total, batch):
            yield random_feed(specs, shapes, rng)

    def shown(name: str, shape: tuple) -> str:  # in the model's layout
        axis = (layout or {}).get(name, 0)
        return "scalar" if axis is None else "x".join(map(str, [*shape[1:axis + 1], shape[0], *shape[axis + 1:]]))

    desc = f"random data (seed {seed}): {total} samples, " + ", ".join(f"{k}[{shown(k, s)}]" for k, s in shapes.items())
    return CalibrationData(factory, specs, description=desc, batch_size=batch, num_samples=total,
                           random=True, origin="random data")
