"""The Python API: load a model, inspect it, compress it, save it.

>>> import onnxcomp as oc
>>> m = oc.load("models/resnet_digits.onnx")
>>> r = oc.inspect(m)
>>> oc.save(m, "/tmp/copy.onnx")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import onnx

from . import io
from .inspection import InspectReport
from .inspection import inspect as _inspect


@dataclass
class Model:
    """An ONNX model plus where it came from (so it is never saved over its source by accident)."""

    proto: onnx.ModelProto
    path: Path | None = None

    @property
    def file_size(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and self.path.exists() else None

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph

    def copy(self) -> "Model":
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        return Model(proto, self.path)


ModelLike = Union[Model, onnx.ModelProto, str, os.PathLike]


def load(path: str | os.PathLike) -> Model:
    """Load an ONNX model (with external data beside it); raises ModelLoadError on bad input."""
    return Model(io.load(path), Path(path))


def as_model(model: ModelLike) -> Model:
    """Accept a Model, a raw ModelProto or a path."""
    if isinstance(model, Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return Model(model)
    return load(model)


def save(model: ModelLike, path: str | os.PathLike, *, force: bool = False, verify: bool = True) -> Path:
    """Save atomically (verified by onnx.checker and an onnxruntime load); never onto the source."""
    m = as_model(model)
    return io.save(m.proto, path, input_path=m.path, force=force, verify=verify)


def inspect(model: ModelLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> InspectReport:
    """Per-layer params, MACs, weight bytes and sparsity, with totals per op type."""
    m = as_model(model)
    return _inspect(m.proto, input_shapes=input_shapes, file_size=m.file_size,
                    name=str(m.path) if m.path else "")


def compare(original: ModelLike, candidate: ModelLike, data=None, *, labels=None, per_layer: bool = False,
            input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 16,
            num_samples: int | None = None, threads: int | None = None):
    """Fidelity of ``candidate`` against ``original`` on the same inputs (see onnxcomp.evaluate).

    ``data``: a path (.npz, .npy, folder), None for random data, or an iterable of batches.
    """
    from .evaluate import compare as _compare

    return _compare(original, candidate, data, labels=labels, per_layer=per_layer, threads=threads,
                    input_shapes=input_shapes, batch_size=batch_size, num_samples=num_samples)


def bench(models, *, threads: int | None = 1, provider: str = "CPUExecutionProvider", runs: int = 50,
          warmup: int = 5, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None,
          ort_format: bool = False, mobile_check: bool = False):
    """Benchmark model files side by side in onnxruntime, one child process each (see onnxcomp.bench)."""
    from .bench import bench as _bench

    return _bench(list(models), threads=threads, provider=provider, runs=runs, warmup=warmup, batch=batch,
                  input_shapes=input_shapes, ort_format=ort_format, mobile_check=mobile_check)
