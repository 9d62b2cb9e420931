"""The value type every layer passes around: an ONNX model plus where it came from."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import onnx


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


def load_model(path: str | os.PathLike, *, lazy: bool = False) -> Model:
    """Load an ONNX model (with external data beside it); raises ModelLoadError on bad input.

    ``lazy``: big external tensors stay on disk until read (see :func:`onnxcomp.io.load.load`); the
    proto then refers to them by absolute path, so save it with onnxcomp's save, not onnx.save.
    """
    from onnxcomp.io.loader import load

    return Model(load(path, lazy=lazy), Path(path))


def as_model(model: ModelLike) -> Model:
    """Accept a Model, a raw ModelProto or a path (loaded lazily: a big model is not held twice)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return Model(model)
    return load_model(model, lazy=True)


def proto_of(model: ModelLike) -> onnx.ModelProto:
    """The ModelProto of a Model, a proto or a path (loaded lazily)."""
    return model if isinstance(model, onnx.ModelProto) else as_model(model).proto
