"""Index streams as onnxruntime decodes them: two 4-bit indices per byte unpacked by Bit ops, and
the first bytes of a stream read as int32."""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.encode.base import Names, const, node


def unpack_nibbles(packed: str, n: int, fresh: Names, name: str, inits: list, nodes: list,
                   shape: tuple[int, ...] | None = None) -> str:
    """Decoder nodes turning bytes (first value in the high nibble) into ``n`` int32 values (flat,
    or in ``shape``: reshaped while still bytes)."""
    col = const(fresh, f"{name}_col", np.array([-1, 1], np.int64), inits)
    flat_shape = const(fresh, f"{name}_flatshape", np.array([-1], np.int64), inits)
    p2, seq = fresh(f"{name}_p2"), fresh(f"{name}_nibs")
    nodes.append(node("Reshape", [packed, col], p2))
    both = _high_then_low(p2, 1, fresh, name, inits, nodes)
    nodes.append(node("Reshape", [both, flat_shape], seq))
    return first_as_int32(seq, n, n % 2 != 0, fresh, name, inits, nodes, shape)


def _high_then_low(packed: str, axis: int, fresh: Names, name: str, inits: list, nodes: list) -> str:
    """The bytes' high nibbles, then their low ones, joined on ``axis`` (BitShift, Mod, Concat)."""
    four = const(fresh, f"{name}_four", np.array([4], np.uint8), inits)
    sixteen = const(fresh, f"{name}_sixteen", np.array([16], np.uint8), inits)
    hi, lo, both = (fresh(f"{name}_{s}") for s in ("hi", "lo", "nib2"))
    nodes += [node("BitShift", [packed, four], hi, direction="RIGHT"),
              node("Mod", [packed, sixteen], lo),
              node("Concat", [hi, lo], both, axis=axis)]
    return both


def nibble_indices(idx: np.ndarray, fresh: Names, name: str, inits: list, nodes: list,
                   shape: tuple[int, ...] | None = None) -> str:
    """Store 4-bit indices two per byte and return the decoded int32 indices (in ``shape`` when
    given): as two halves of the weight paired byte by byte when an axis of ``shape`` is even
    (:func:`unpack_halves`), else as one stream, first value in the high nibble."""
    axis = even_axis(shape)
    if axis is not None:
        packed = const(fresh, f"{name}_idx4", pack_halves(idx, shape, axis), inits)
        return unpack_halves(packed, axis, fresh, name, inits, nodes)
    packed = const(fresh, f"{name}_idx4", pack_nibbles(idx), inits)
    return unpack_nibbles(packed, idx.size, fresh, name, inits, nodes, shape)


def even_axis(shape: tuple[int, ...] | None) -> int | None:
    """The first axis of even length, along which :func:`pack_halves` can pair indices (None: none)."""
    return next((i for i, d in enumerate(shape or ()) if d > 0 and d % 2 == 0), None)


def pack_halves(values: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Indices in ``shape`` as bytes in that shape with ``axis`` halved: the first half's value in
    the high nibble, the second half's at the same place in the low nibble."""
    v = np.asarray(values, np.uint8).reshape(shape)
    first, second = np.split(v, 2, axis=axis)
    return (first << 4) | second


def unpack_halves(packed: str, axis: int, fresh: Names, name: str, inits: list, nodes: list) -> str:
    """Decoder nodes turning :func:`pack_halves` bytes into int32 indices in the weight's shape:
    BitShift and Mod give the two halves, a Concat joins them on ``axis``. No Reshape: in
    onnxruntime's constant folding each Reshape copies its input and every temporary is held until
    the pass ends, so :func:`unpack_nibbles` in a shape holds 8.5 bytes per weight while a session
    is made, this 6 (a float32 weight's own 4 bytes come after either)."""
    both = _high_then_low(packed, axis, fresh, name, inits, nodes)
    out = fresh(f"{name}_idx")
    nodes.append(node("Cast", [both], out, to=onnx.TensorProto.INT32))
    return out


def first_as_int32(seq: str, n: int, padded: bool, fresh: Names, name: str, inits: list, nodes: list,
                   shape: tuple[int, ...] | None = None) -> str:
    """Decoder tail: the first ``n`` unpacked values (when the packing ``padded`` them), as int32
    (in ``shape`` when given)."""
    if padded:
        start = const(fresh, f"{name}_start", np.array([0], np.int64), inits)
        end = const(fresh, f"{name}_end", np.array([n], np.int64), inits)
        cut = fresh(f"{name}_cut")
        nodes.append(node("Slice", [seq, start, end], cut))
        seq = cut
    if shape is not None:
        target, shaped = const(fresh, f"{name}_ishape", np.array(shape, np.int64), inits), fresh(f"{name}_u8")
        nodes.append(node("Reshape", [seq, target], shaped))
        seq = shaped
    out = fresh(f"{name}_idx")
    nodes.append(node("Cast", [seq], out, to=onnx.TensorProto.INT32))
    return out


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, the first in the high nibble (odd length padded with 0)."""
    v = np.asarray(values, np.uint8).reshape(-1)
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] << 4) | v[1::2]
