"""Sparse encodings: uint8 gaps + values (high sparsity), bitmask + values (moderate), all-zeros.

gaps:    the distance from each nonzero to the previous one, one byte each; a gap above 255 is
         bridged by filler entries (gap 255, value 0). Decoded by Cast + CumSum - 1 ->
         ScatterElements into zeros. Costs (1 + itemsize) bytes per stored entry: smallest above
         ~87 % zeros.
bitmask: one bit per weight (np.packbits order) + the nonzero values. Decoded per byte by two
         shared lookup tables (Gather), CumSum of the popcounts, Where and Gather (opset 11).
         Every op is folded by onnxruntime at session creation.
zeros:   an all-zero tensor is a ConstantOfShape.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.encode.base import (NODE_OVERHEAD, TENSOR_OVERHEAD, Encoding, Names, const, node,
    nonzero_positions, reshape_to, short_prefix, zeros_like_flat)

GAP_MAX = 255


def gap_stream(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 gaps, values) with fillers for gaps above 255; positions = cumsum(gaps) - 1."""
    pos = nonzero_positions(flat)
    if pos.size == 0:
        return np.zeros(0, np.uint8), np.zeros(0, flat.dtype)
    gaps = np.diff(pos, prepend=-1)
    counts = (gaps - 1) // GAP_MAX + 1  # entries per nonzero (fillers + the real one)
    last = np.cumsum(counts) - 1
    out_gaps = np.full(int(counts.sum()), GAP_MAX, np.uint8)
    out_gaps[last] = (gaps - GAP_MAX * (counts - 1)).astype(np.uint8)
    out_vals = np.zeros(out_gaps.size, flat.dtype)
    out_vals[last] = flat[pos]
    return out_gaps, out_vals


def _entries(flat: np.ndarray) -> int:
    pos = nonzero_positions(flat)
    if pos.size == 0:
        return 0
    return int(((np.diff(pos, prepend=-1) - 1) // GAP_MAX + 1).sum())


def _scatter(fresh: Names, name: str, n: int, dtype: np.dtype, idx: str, vals: str,
             inits: list, nodes: list) -> str:
    zeros = zeros_like_flat(fresh, name, n, dtype, inits, nodes)
    out = fresh(f"{name}flat")
    nodes.append(node("ScatterElements", [zeros, idx, vals], out, axis=0))
    return out


class Gaps(Encoding):
    """uint8 gaps between nonzeros + their values; CumSum + ScatterElements."""

    kind = "gaps"
    min_opset = 11

    def size(self, flat: np.ndarray) -> int | None:
        if np.count_nonzero(flat) * (1 + flat.dtype.itemsize) >= flat.nbytes:  # each nonzero is an
            return None  # entry: denser than this the gaps cannot beat dense (and need no positions)
        k = _entries(flat)
        if k == 0:
            return None
        return k * (1 + flat.dtype.itemsize) + 6 * TENSOR_OVERHEAD + 6 * NODE_OVERHEAD

    def build(self, flat, shape, name, fresh):
        gaps, vals = gap_stream(flat)
        inits: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        p = short_prefix(fresh)
        g = const(fresh, f"{p}gaps", gaps, inits)
        v = const(fresh, f"{p}values", vals, inits)
        index_type = np.int32 if flat.size < 2**31 else np.int64
        zero = const(fresh, "axis0", np.array(0, np.int32), inits)
        one = const(fresh, "one", np.array(1, index_type), inits)
        gi, cs, idx = fresh(f"{p}gi"), fresh(f"{p}cs"), fresh(f"{p}idx")
        nodes.append(node("Cast", [g], gi, to=helper.np_dtype_to_tensor_dtype(np.dtype(index_type))))
        nodes.append(node("CumSum", [gi, zero], cs))
        nodes.append(node("Sub", [cs, one], idx))
        out = _scatter(fresh, p, flat.size, flat.dtype, idx, v, inits, nodes)
        reshape_to(fresh, p, out, shape, name, inits, nodes)
        return nodes, inits


# the bits of every byte value in np.packbits order (most significant first): one 2 kB table shared
# by all bitmask decoders, from which each derives its running counts and set flags
BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)


class Bitmask(Encoding):
    """One bit per weight + the nonzero values, decoded per byte through two lookup tables.

    Each stored byte looks up its eight running bit counts and set flags (Gather, in tables built
    from one shared 2 kB table of every byte's bits); the popcounts' exclusive CumSum gives each
    byte's first value; Where sends the zeros to a stored leading zero; one Gather writes the
    weight. onnxruntime keeps every temporary of its constant folding until the pass ends, so the
    decoder works on whole bytes where it can: about 19 bytes of temporaries per weight, against
    26 for bit-by-bit BitShift/Mod/CumSum. (NonZero would be shorter, but onnxruntime does not fold
    it: the decoder would run on every inference.)
    """

    kind = "bitmask"
    min_opset = 11
    shared_bytes = BITS.nbytes + TENSOR_OVERHEAD  # the table, stored once per model

    def size(self, flat: np.ndarray) -> int | None:
        k = int(np.count_nonzero(flat))
        if k == 0:
            return None
        return (flat.size + 7) // 8 + (k + 1) * flat.dtype.itemsize + 12 * TENSOR_OVERHEAD + 12 * NODE_OVERHEAD

    def build(self, flat, shape, name, fresh):
        mask = flat != 0
        inits: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        p = short_prefix(fresh)
        packed = const(fresh, f"{p}mask", np.packbits(mask), inits)
        v = const(fresh, f"{p}values", np.concatenate([np.zeros(1, flat.dtype), flat[mask]]), inits)
        bits = const(fresh, "bits", BITS, inits, share=True)
        last = const(fresh, "seven", np.array([7], np.int64), inits)
        end = const(fresh, "eight", np.array([8], np.int64), inits)
        axis1 = const(fresh, "axes1", np.array([1], np.int64), inits)
        axis0 = const(fresh, "axis0", np.array(0, np.int32), inits)
        zero = const(fresh, "zero_i", np.array(0, np.int32), inits)
        t = {k: fresh(f"{p}{k}") for k in ("bits32", "counts", "is_set", "byte", "count", "pop", "first",
                                              "index", "set", "at")}
        nodes += [node("Cast", [bits], t["bits32"], to=onnx.TensorProto.INT32),  # the tables: 256 x 8
                  node("CumSum", [t["bits32"], const(fresh, "axis1", np.array(1, np.int32), inits)], t["counts"]),
                  node("Cast", [bits], t["is_set"], to=onnx.TensorProto.BOOL),
                  node("Cast", [packed], t["byte"], to=onnx.TensorProto.INT32),
                  node("Gather", [t["counts"], t["byte"]], t["count"], axis=0),  # [bytes, 8]
                  node("Slice", [t["count"], last, end, axis1], t["pop"]),  # [bytes, 1]
                  node("CumSum", [t["pop"], axis0], t["first"], exclusive=1),
                  node("Add", [t["count"], t["first"]], t["index"]),  # 1-based index of each kept value
                  node("Gather", [t["is_set"], t["byte"]], t["set"], axis=0),
                  node("Where", [t["set"], t["index"], zero], t["at"])]  # zeros read the leading 0
        at = t["at"]
        if flat.size % 8:  # drop packbits' padding
            at = fresh(f"{p}atflat")
            nodes.append(node("Reshape", [t["at"], const(fresh, "flat", np.array([-1], np.int64), inits)], at))
            cut = fresh(f"{p}cut")
            nodes.append(node("Slice", [at, const(fresh, "start0", np.array([0], np.int64), inits),
                                        const(fresh, f"{p}end", np.array([flat.size], np.int64), inits)], cut))
            at = cut
        shaped = fresh(f"{p}shaped")
        nodes.append(node("Reshape", [at, const(fresh, f"{p}shape", np.array(shape, np.int64), inits)], shaped))
        nodes.append(node("Gather", [v, shaped], name, axis=0))
        return nodes, inits


class Zeros(Encoding):
    """An all-zero tensor: ConstantOfShape."""

    kind = "zeros"
    min_opset = 9

    def size(self, flat: np.ndarray) -> int | None:
        return None if np.any(flat) else 8 * (flat.ndim + 1) + TENSOR_OVERHEAD + NODE_OVERHEAD

    def build(self, flat, shape, name, fresh):
        inits: list[onnx.TensorProto] = []
        dims = const(fresh, f"{name}_dims", np.array(shape, np.int64), inits)
        nodes = [helper.make_node("ConstantOfShape", [dims], [name], name=f"{name}__zeros",
                                  value=numpy_helper.from_array(np.zeros(1, flat.dtype)))]
        return nodes, inits
