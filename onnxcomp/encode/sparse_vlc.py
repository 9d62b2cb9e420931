"""sparse_codebook_vlc: a pruned and clustered weight with its gaps and indices in variable-length codes.

Deep Compression's last stage for sparse weights, inside the .onnx file: the positions of the
nonzeros are stored as gaps (8-bit fields, 0 = a filler of 255, as ``sparse_codebook8``) and
their values as codebook indices, but both streams are coded with the group code of
:mod:`.vlc` (unary group + fixed field, designed on each stream's histogram). At 90-97 % zeros
the gaps of a pruned layer cost about their entropy (5-7 bits instead of 8) and the indices of
small per-channel tables, ranked by frequency per channel, 1-2 bits instead of 4 or 8. Decoded
by the two group-code decoders, then the positions/values/ScatterElements of the sparse codebook
encodings; onnxruntime folds all of it at session creation.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.encode.base import NODE_OVERHEAD, TENSOR_OVERHEAD, const, node
from onnxcomp.encode.codebook import table_overhead
from onnxcomp.encode.combined import _SparseCodebook, gap_fields
from onnxcomp.encode.tables import Table
from onnxcomp.encode.vlc import (DECODER_NODES, DECODER_TENSORS, MAX_ELEMENTS, Code, by_channel_frequency,
    decoder, design, reorder)

FILLER_SPAN = 255


def ranked(t: Table, pos: np.ndarray) -> Table:
    """``t`` with its entries most frequent first among the nonzeros at ``pos`` (per channel for
    per-channel tables), so the index stream's histogram is one peak at 0."""
    if t.kind == "channel":
        return by_channel_frequency(t, pos)
    return reorder(t, np.argsort(-np.bincount(t.idx[pos].astype(np.int64), minlength=t.width), kind="stable"))


def _coded(symbols: np.ndarray, width: int) -> tuple[Code, int, np.ndarray | None]:
    """(code, payload bits, the symbol -> value map to store, or None when it is the identity)."""
    counts = np.bincount(symbols.astype(np.int64), minlength=width)
    code, bits = design(counts)
    used = code.order[:int(np.count_nonzero(counts))]
    return code, bits, None if np.array_equal(used, np.arange(used.size)) else used


class SparseCodebookVLC(_SparseCodebook):
    """Gaps and codebook indices of the nonzeros, each stream in a variable-length group code."""

    kind = "sparse_codebook_vlc"
    min_opset = 11
    gap_bits = 8

    def _cost(self, pos, t):
        fields, which = gap_fields(pos, FILLER_SPAN)
        if fields.size > MAX_ELEMENTS:
            return None
        t = ranked(t, pos)
        real = which >= 0
        idx = np.zeros(fields.size, np.int64)
        idx[real] = t.idx[pos[which[real]]]
        total = 0
        for symbols, width in ((fields, FILLER_SPAN + 1), (idx, t.width)):
            code, bits, mapping = _coded(symbols, width)
            total += (bits + 7) // 8 + (8 + 4 * max(code.widths)) * len(code.widths) \
                + DECODER_NODES * NODE_OVERHEAD + DECODER_TENSORS * TENSOR_OVERHEAD \
                + (0 if mapping is None else mapping.size + TENSOR_OVERHEAD + 2 * NODE_OVERHEAD)
        return pos, t, total + t.table_bytes() + table_overhead(t) + 12 * TENSOR_OVERHEAD + 20 * NODE_OVERHEAD

    def streams(self, fields, idx, width, fresh, name, inits, nodes):
        out = []
        for tag, symbols, w in (("g", fields, FILLER_SPAN + 1), ("i", idx, width)):
            code, _, mapping = _coded(symbols, w)
            rank = np.empty(code.order.size, np.int64)
            rank[code.order] = np.arange(code.order.size)
            sym = decoder(rank[symbols.astype(np.int64)], code, fresh, f"{name}{tag}", inits, nodes)
            if mapping is not None:  # symbol -> value
                table = const(fresh, f"{name}{tag}_map", mapping.astype(np.uint8), inits)
                raw, mapped = fresh(f"{name}{tag}_mapped8"), fresh(f"{name}{tag}_mapped")
                nodes += [node("Gather", [table, sym], raw, axis=0),
                          node("Cast", [raw], mapped, to=onnx.TensorProto.INT32)]
                sym = mapped
            out.append(sym)
        return out[0], out[1]


ENCODINGS = (SparseCodebookVLC(),)
