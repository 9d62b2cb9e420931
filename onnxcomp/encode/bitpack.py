"""codebook_packed: codebook indices of any width 1..7 bits, packed eight indices to b bytes.

Eight b-bit indices form one big-endian 8b-bit word stored as b bytes. The decoder rebuilds the
word in int64 (Cast, Reshape [G, b], MatMul by the column 256^(b-1..0)) and cuts the fields out
with Div by 2^(b*(7..0)) and Mod 2^b; then Cast + Gather as for the other codebook encodings.
Useful at 3, 5, 6 and 7 bits, where 4-bit or 8-bit indices waste space. Every op means the same
from opset 11 to 21, so it works on opset-11/12 models too (an int64 MatMul is exact in
onnxruntime up to 56-bit words; its int64 ReduceSum was not). Integer arithmetic only.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.encode.base import NODE_OVERHEAD, TENSOR_OVERHEAD, Names, const, node
from onnxcomp.encode.codebook import _BestTable, table_overhead
from onnxcomp.encode.nibbles import first_as_int32

GROUP = 8
MAX_BITS = 7  # 8 x 7 = 56-bit words, exact in an int64 MatMul


def width_bits(width: int) -> int:
    """Index bits for a table of ``width`` entries (at least 1)."""
    return max(1, int(np.ceil(np.log2(max(width, 2)))))


def pack_bits(idx: np.ndarray, bits: int) -> np.ndarray:
    """Eight ``bits``-bit values per ``bits`` bytes, big-endian words (padded with zeros)."""
    v = np.asarray(idx, np.uint64).reshape(-1)
    groups = -(-v.size // GROUP)
    v = np.concatenate([v, np.zeros(groups * GROUP - v.size, np.uint64)]).reshape(groups, GROUP)
    shifts = np.arange(GROUP - 1, -1, -1, dtype=np.uint64) * np.uint64(bits)
    word = (v << shifts).sum(axis=1, dtype=np.uint64)
    out = [(word >> np.uint64(8 * (bits - 1 - j))) & np.uint64(255) for j in range(bits)]
    return np.stack(out, axis=1).astype(np.uint8).reshape(-1)


def unpack_bits(packed: str, n: int, bits: int, fresh: Names, name: str, inits: list, nodes: list) -> str:
    """Decoder nodes turning ``pack_bits`` bytes back into ``n`` int32 indices."""
    i64 = onnx.TensorProto.INT64
    shape = const(fresh, f"{name}_grp", np.array([-1, bits], np.int64), inits)
    weights = const(fresh, f"{name}_byteval", (256 ** np.arange(bits - 1, -1, -1, dtype=np.int64))[:, None], inits)
    div = const(fresh, f"{name}_fielddiv", 2 ** (bits * np.arange(GROUP - 1, -1, -1, dtype=np.int64)), inits)
    mod = const(fresh, f"{name}_fieldmod", np.array([1 << bits], np.int64), inits)
    flat = const(fresh, f"{name}_flat1", np.array([-1], np.int64), inits)
    b64, grp, word, fields, low, seq = (fresh(f"{name}_{s}") for s in ("b64", "grp", "word", "fields", "low", "seq"))
    nodes += [node("Cast", [packed], b64, to=i64), node("Reshape", [b64, shape], grp),
              node("MatMul", [grp, weights], word), node("Div", [word, div], fields), node("Mod", [fields, mod], low),
              node("Reshape", [low, flat], seq)]
    return first_as_int32(seq, n, n % GROUP != 0, fresh, name, inits, nodes)


class CodebookPacked(_BestTable):
    """Indices packed at exactly the bits their table needs (1..6), eight per b bytes."""

    kind = "codebook_packed"
    min_opset = 11

    def _cost(self, flat, t):
        b = width_bits(t.width)
        if b > MAX_BITS:
            return None
        return (-(-flat.size // GROUP)) * b + t.table_bytes() + table_overhead(t) \
            + 12 * (NODE_OVERHEAD + TENSOR_OVERHEAD), b

    def _stream(self, t, b, n, fresh, p, inits, nodes):
        packed = const(fresh, f"{p}_idx{b}b", pack_bits(t.idx, b), inits)
        return t, unpack_bits(packed, n, b, fresh, p, inits, nodes)


ENCODINGS = (CodebookPacked(),)
