"""The encoding interface: how big a tensor would be in an encoding, and the decoder that rebuilds it.

Every encoding is standard ONNX that onnxruntime folds at session creation, bit-exact against the
values it was given. ``size`` is the payload estimate used to choose between encodings;
``build`` returns the decoder nodes (the last one produces ``name``) and their initializers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

# protobuf framing of a small initializer plus one node: what each extra tensor/node costs on disk
TENSOR_OVERHEAD = 24
NODE_OVERHEAD = 40

Names = Callable[[str], str]


class Encoding(ABC):
    """One storage encoding."""

    kind: ClassVar[str] = ""
    min_opset: ClassVar[int] = 1

    @abstractmethod
    def size(self, flat: np.ndarray) -> int | None:
        """Bytes on disk for this flat tensor, or None when the encoding does not apply."""

    @abstractmethod
    def build(self, flat: np.ndarray, shape: tuple[int, ...], name: str,
              fresh: Names) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Decoder nodes (the last one outputs ``name`` with ``shape``) and their initializers."""


SHARED_MAX_ELEMENTS = 16
_POSITIONS: dict = {}


def nonzero_positions(flat: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(flat)``, cached for the last array asked about: every sparse encoding asks
    about the same weight in turn (read-only: callers must not modify it)."""
    if _POSITIONS.get("flat") is not flat:
        _POSITIONS.update(flat=flat, pos=np.flatnonzero(flat))
    return _POSITIONS["pos"]


def const(fresh: Names, base: str, array: np.ndarray, inits: list[onnx.TensorProto], share: bool = False) -> str:
    """Add an initializer with a fresh name; return the name.

    Small constants (axes, shapes, scalars), and lookup tables passed with ``share``, are shared
    between decoders when ``fresh`` keeps a ``shared`` cache (NameScope does): one initializer per
    distinct value in the whole graph.
    """
    array = np.ascontiguousarray(array)
    cache = getattr(fresh, "shared", None)
    key = (array.dtype.str, array.shape, array.tobytes()) if share or array.size <= SHARED_MAX_ELEMENTS else None
    if cache is not None and key is not None and key in cache:
        return cache[key]
    name = fresh(base)
    inits.append(numpy_helper.from_array(array, name))
    if cache is not None and key is not None:
        cache[key] = name
    return name


def short_prefix(fresh: Names) -> str:
    """A short unique prefix for one decoder's internal tensor names (they are stored twice each)."""
    return fresh("~d") + "."


def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    """A decoder node, named after its (unique) output."""
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def zeros_like_flat(fresh: Names, base: str, n: int, dtype: np.dtype, inits: list,
                    nodes: list) -> str:
    """A ConstantOfShape producing ``n`` zeros of ``dtype``; returns its output name."""
    shape = const(fresh, f"{base}n", np.array([n], np.int64), inits)
    out = fresh(f"{base}zeros")
    nodes.append(helper.make_node("ConstantOfShape", [shape], [out], name=out,
                                  value=numpy_helper.from_array(np.zeros(1, dtype))))
    return out


def reshape_to(fresh: Names, base: str, flat_name: str, shape: tuple[int, ...], name: str,
               inits: list, nodes: list) -> None:
    """Reshape the flat decoded tensor to the weight's stored shape under its original name."""
    target = const(fresh, f"{base}shape", np.array(shape, np.int64), inits)
    nodes.append(node("Reshape", [flat_name, target], name))
