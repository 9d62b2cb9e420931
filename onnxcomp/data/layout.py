"""Calibration arrays for inputs whose samples are not on axis 0 (:mod:`onnxcomp.graph.layout`).

The user stores each such input as the model takes it: ``state`` as ``[2, N, 128]`` beside
``input[N, 512]``, ``sr`` as one scalar. :func:`samples_first` turns a chunk of them into the
samples-first arrays every other part of onnxcomp stacks and splits on axis 0 (the scalar
repeated once per sample), checked against the model's own layout with a one-line error.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Iterator

import numpy as np

from onnxcomp.data.sources import Batch, InputSpec, expected
from onnxcomp.errors import DataError
from onnxcomp.graph.layout import samples_first as first_dims

Convert = Callable[[dict, str], dict]


def spec_samples_first(spec: InputSpec, axis: int | None) -> InputSpec:
    """The spec of the samples-first array onnxcomp holds for an input with samples on ``axis``."""
    return replace(spec, dims=tuple(first_dims(list(spec.dims), axis)))


def _fits(arr: np.ndarray, dims: tuple) -> bool:
    return arr.ndim == len(dims) and all(not (isinstance(d, int) and d > 0) or d == s
                                         for d, s in zip(dims, arr.shape))


def samples_first(batch: dict, specs: dict[str, InputSpec], layout: dict[str, int | None], origin: str) -> dict:
    """``batch`` (the model's layout) with every input of ``layout`` samples-first; other keys as given."""
    if not isinstance(batch, dict):
        return batch  # (check_batch says what is wrong with it)
    out = dict(batch)
    n = None
    for name, axis in layout.items():
        if name not in batch or axis is None:
            continue
        spec, arr = specs[name], np.asarray(batch[name])
        if arr.ndim == len(spec.dims) - 1:
            arr = np.expand_dims(arr, axis)  # a single sample
        if not _fits(arr, spec.dims):
            shape = "x".join(map(str, arr.shape)) or "scalar"
            raise DataError(f"{origin}: array {name!r} has shape {shape} but the model expects {spec.describe()}, "
                            f"its samples on axis {axis}", f"store it as the model takes it; {expected(specs)}")
        out[name] = np.moveaxis(arr, axis, 0)
        n = out[name].shape[0]
    for name, axis in layout.items():
        if name not in batch or axis is not None:
            continue
        arr = np.asarray(batch[name])
        if arr.size != 1:
            raise DataError(f"{origin}: input {name!r} is a scalar (the model expects {specs[name].describe()}) "
                            f"but the array has shape {'x'.join(map(str, arr.shape))}",
                            "store one value: every sample is run with it")
        if n is None:  # the samples of an input on axis 0 (1 for a single sample without that axis)
            n = next((len(v) if np.ndim(v) == len(specs[k].dims) else 1 for k, v in batch.items()
                      if k in specs and k not in layout and np.ndim(v) > 0), 1)
        out[name] = np.full((n,), arr.reshape(()), arr.dtype)
    return out


def converter(specs: dict[str, InputSpec], layout: dict[str, int | None]) -> Convert | None:
    """``samples_first`` bound to the model's specs and layout (None when every input is samples-first)."""
    if not layout:
        return None
    return lambda batch, origin: samples_first(batch, specs, layout, origin)


def converted(factory: Callable[[], Iterable[Batch]], convert: Convert | None, origin: str
              ) -> Callable[[], Iterable[Batch]]:
    """A batch factory whose batches are made samples-first."""
    if convert is None:
        return factory

    def chunks() -> Iterator[Batch]:
        for chunk in factory():
            yield convert(chunk, origin)
    return chunks
