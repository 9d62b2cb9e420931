"""codebook_vlc: codebook indices in a variable-length code, decoded in-graph (Deep Compression's
Huffman stage inside the .onnx file itself).

The table's entries are reordered most frequent first; the used entries are split into groups of
2^b consecutive symbols (b = 0..8 per group, chosen by dynamic programming on the index
histogram). An index is coded as its group g in unary (g ones, then a zero) plus a b_g-bit field
(its position in the group). Unary parts and fields are two bit streams in element order; both
decode with data-parallel ops that onnxruntime folds at session creation (opset 11):
  unary   bits -> exclusive CumSum of the zeros numbers each bit with its element; each element's
          terminating zero scatters the running count of ones there (ScatterElements), and the
          difference between neighbours is g;
  fields  widths b_g -> exclusive CumSum gives each field's offset; Gather the (at most 8) bits
          at offset + t, weight them by 2^(b-1-t) (zero past the width) and sum (MatMul);
then index = base[g] + field, and the table Gather as for the other codebook encodings. Close to
the index entropy for the peaked histograms a uniform grid produces (and never worse than the
fixed-width packed encodings by more than the decoder's framing, since one group of 2^b is a
fixed-width code plus one flag bit per index).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import onnx

from onnxcomp.encode.base import NODE_OVERHEAD, TENSOR_OVERHEAD, Names, const, node, zeros_like_flat
from onnxcomp.encode.codebook import _BestTable, table_overhead
from onnxcomp.encode.tables import Table

MAX_FIELD_BITS = 8
# folding holds several [n, widest field] temporaries (a 4.2 M-weight tensor added 590 MB to the
# peak while the session loaded): larger tensors keep the fixed-width encodings
MAX_ELEMENTS = 1 << 21
MAX_GROUPS = 12
DECODER_NODES, DECODER_TENSORS = 34, 20  # framing of one decoder beyond the table's (measured)


@dataclass(frozen=True)
class Code:
    """Symbols (table entries, most frequent first) and the field width of each group."""

    order: np.ndarray  # symbol -> table entry
    widths: tuple[int, ...]

    @property
    def bases(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([1 << b for b in self.widths])[:-1]]).astype(np.int64)


def design(counts: np.ndarray) -> tuple[Code, int]:
    """The group code minimising the coded bits for this index histogram: (code, payload bits)."""
    counts = np.asarray(counts, np.int64)
    order = np.argsort(-counts, kind="stable")
    used = int(np.count_nonzero(counts))
    c = counts[order][:max(used, 1)]
    prefix = np.concatenate([[0], np.cumsum(c)])
    best = _plan(tuple(int(x) for x in prefix))
    return Code(order, best[1]), best[0]


@lru_cache(maxsize=256)
def _plan(prefix: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    s = len(prefix) - 1

    @lru_cache(maxsize=None)
    def f(i: int, level: int) -> tuple[int, tuple[int, ...]]:
        best: tuple[int, tuple[int, ...]] | None = None
        for b in range(MAX_FIELD_BITS + 1):
            e = min(i + (1 << b), s)
            n = prefix[e] - prefix[i]
            if e == s:
                cand = (n * (level + 1 + b), (b,))
            elif level + 1 < MAX_GROUPS:
                rest = f(e, level + 1)
                cand = (n * (level + 1 + b) + rest[0], (b,) + rest[1])
            else:
                continue
            if best is None or cand[0] < best[0]:
                best = cand
            if e == s:
                break  # wider fields only cost more
        return best

    return f(0, 0)


def streams(sym: np.ndarray, code: Code) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(unary bits, field bits, their lengths) for the symbols ``sym`` under ``code``."""
    widths = np.asarray(code.widths, np.int64)
    starts = code.bases
    g = np.searchsorted(starts, sym, side="right") - 1
    field = sym - starts[g]
    ulen = g + 1
    unary = np.ones(int(ulen.sum()), np.uint8)
    unary[np.cumsum(ulen) - 1] = 0
    b = widths[g]
    offs = np.concatenate([[0], np.cumsum(b)[:-1]])
    fields = np.zeros(int(b.sum()), np.uint8)
    for t in range(int(widths.max()) if widths.size else 0):
        on = t < b
        fields[offs[on] + t] = (field[on] >> (b[on] - 1 - t)) & 1
    return unary, fields, unary.size, fields.size


def reorder(t: Table, order: np.ndarray) -> Table:
    """The table with its entries in ``order`` (symbol s is old entry order[s]), indices remapped."""
    rank = np.empty(t.width, np.int64)
    rank[order] = np.arange(order.size)
    values = t.values[..., order] if t.values.ndim else t.values
    return replace(t, index=rank[t.idx.astype(np.int64)].astype(np.int16), values=values)


def by_channel_frequency(t: Table, at: np.ndarray | None = None) -> Table:
    """A per-channel table with each row's entries reordered most frequent first (indices
    remapped): a pruned weight's zero, or a grid's 0 step, sits at a different entry in every row
    of a sorted table, which spreads the tensor's index histogram; ranked per row it is one peak.
    ``at``: the flat positions whose indices count (default: all)."""
    lay = t.layout
    flat = np.arange(t.idx.size) if at is None else at
    chan = (flat // lay.inner) % lay.channels
    counts = np.zeros((lay.channels, t.width), np.int64)
    np.add.at(counts, (chan, t.idx[flat].astype(np.int64)), 1)
    rows = lay.rows(t.idx.astype(np.int64))
    order = np.argsort(-counts, axis=1, kind="stable")  # rank -> old entry, per row
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(t.width)[None, :].repeat(len(order), 0), axis=1)
    idx = t.layout.unrows(np.take_along_axis(rank, rows, axis=1)).astype(np.int16)
    return replace(t, index=idx, values=np.take_along_axis(t.values, order, axis=1))


class CodebookVLC(_BestTable):
    """Indices in a per-tensor group code (unary group + fixed field), table entries by frequency
    (per channel for per-channel tables)."""

    kind = "codebook_vlc"
    min_opset = 11

    def _cost(self, flat, t):
        if flat.size > MAX_ELEMENTS or t.width > 1 << MAX_FIELD_BITS:
            return None
        best = None
        for cand in (t, by_channel_frequency(t)) if t.kind == "channel" else (t,):
            code, bits = design(np.bincount(cand.idx.astype(np.int64), minlength=cand.width))
            groups = len(code.widths)
            size = (bits + 7) // 8 + cand.table_bytes() + table_overhead(cand) + (8 + 4 * max(code.widths)) * groups \
                + DECODER_NODES * NODE_OVERHEAD + DECODER_TENSORS * TENSOR_OVERHEAD
            if best is None or size < best[0]:
                best = (size, (code, cand))
        return best

    def _stream(self, t, params, n, fresh, p, inits, nodes):
        code, t = params
        t = reorder(t, code.order)
        return t, decoder(t.idx.astype(np.int64), code, fresh, p, inits, nodes)


def decoder(sym: np.ndarray, code: Code, fresh: Names, p: str, inits: list, nodes: list) -> str:
    """Decoder nodes producing the int32 symbols ``sym`` from the coded streams; returns the name."""
    n = sym.size
    unary, fields, ulen, flen = streams(sym, code)
    wmax = max(code.widths)
    i32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    packed = const(fresh, f"{p}_vlc", np.packbits(np.concatenate([unary, fields, np.zeros(wmax, np.uint8)])), inits)
    c = lambda base, a: const(fresh, base, a, inits)  # noqa: E731
    zeros = zeros_like_flat(fresh, f"{p}_", n + 1, np.int32, inits, nodes)
    t = {k: fresh(f"{p}_{k}") for k in ("p2", "sh", "bit", "bits", "u", "ui", "z", "ez", "c1", "zb", "tgt",
                                       "buf", "e", "eprev", "e0", "g", "sym")}
    nodes += [node("Reshape", [packed, c("col", np.array([-1, 1], np.int64))], t["p2"]),
              node("BitShift", [t["p2"], c("shifts", np.arange(7, -1, -1, dtype=np.uint8))], t["sh"],
                   direction="RIGHT"),
              node("Mod", [t["sh"], c("two", np.array([2], np.uint8))], t["bit"]),
              node("Reshape", [t["bit"], c("flat", np.array([-1], np.int64))], t["bits"]),
              node("Slice", [t["bits"], c("start0", np.array([0], np.int64)), c(f"{p}_ulen", np.array([ulen], np.int64))],
                   t["u"]),
              node("Cast", [t["u"]], t["ui"], to=i32),
              node("Sub", [c("one", np.array(1, np.int32)), t["ui"]], t["z"]),
              node("CumSum", [t["z"], c("axis0", np.array(0, np.int32))], t["ez"], exclusive=1),
              node("CumSum", [t["ui"], c("axis0", np.array(0, np.int32))], t["c1"]),
              node("Cast", [t["z"]], t["zb"], to=onnx.TensorProto.BOOL),
              # ones-bits all go to a spare last slot; each element's terminating zero to its own
              node("Where", [t["zb"], t["ez"], c(f"{p}_n", np.array(n, np.int32))], t["tgt"]),
              node("ScatterElements", [zeros, t["tgt"], t["c1"]], t["buf"], axis=0),
              node("Slice", [t["buf"], c("start0", np.array([0], np.int64)), c(f"{p}_nend", np.array([n], np.int64))],
                   t["e"]),
              node("Slice", [t["buf"], c("start0", np.array([0], np.int64)),
                             c(f"{p}_nm1", np.array([n - 1], np.int64))], t["e0"]),
              node("Concat", [c("zero1", np.zeros(1, np.int32)), t["e0"]], t["eprev"], axis=0),
              node("Sub", [t["e"], t["eprev"]], t["g"])]
    bases = c(f"{p}_bases", code.bases.astype(np.int32))
    base = fresh(f"{p}_base")
    nodes.append(node("Gather", [bases, t["g"]], base, axis=0))
    if wmax == 0:
        return base
    widths = np.asarray(code.widths)
    tcols = np.arange(wmax)
    weights = np.where(tcols[None, :] < widths[:, None], 2.0 ** (widths[:, None] - 1 - tcols[None, :]), 0)
    f = {k: fresh(f"{p}_{k}") for k in ("fb", "bw", "off", "off2", "pos", "fbits", "fbf", "wg", "wb", "val2",
                                       "val", "vi")}
    nodes += [node("Slice", [t["bits"], c(f"{p}_ulen", np.array([ulen], np.int64)),
                             c(f"{p}_fend", np.array([ulen + flen + wmax], np.int64))], f["fb"]),
              node("Gather", [c(f"{p}_widths", widths.astype(np.int32)), t["g"]], f["bw"], axis=0),
              node("CumSum", [f["bw"], c("axis0", np.array(0, np.int32))], f["off"], exclusive=1),
              node("Reshape", [f["off"], c("col", np.array([-1, 1], np.int64))], f["off2"]),
              node("Add", [f["off2"], c(f"tcols{wmax}", tcols.astype(np.int32).reshape(1, -1))], f["pos"]),
              node("Gather", [f["fb"], f["pos"]], f["fbits"], axis=0),
              node("Cast", [f["fbits"]], f["fbf"], to=f32),
              node("Gather", [c(f"{p}_fw", weights.astype(np.float32)), t["g"]], f["wg"], axis=0),
              node("Mul", [f["fbf"], f["wg"]], f["wb"]),
              node("MatMul", [f["wb"], c(f"ones{wmax}", np.ones((wmax, 1), np.float32))], f["val2"]),
              node("Reshape", [f["val2"], c("flat", np.array([-1], np.int64))], f["val"]),
              node("Cast", [f["val"]], f["vi"], to=i32),
              node("Add", [base, f["vi"]], t["sym"])]
    return t["sym"]


ENCODINGS = (CodebookVLC(),)
