"""Sparse + codebook: the positions of the nonzeros as gaps, their values as codebook indices.

Each stored entry advances the position by its gap field; a field of 0 is a filler that advances
by the maximum F = 2^bits - 1 and stores nothing (decoded as a zero), so any gap fits:
  sparse_codebook4   one byte per entry: 4-bit gap (high nibble) + 4-bit index (<= 16 entries,
                     best around 90 % zeros);
  sparse_codebook8   8-bit gaps + 4-bit indices packed two per byte (or 8-bit indices above 16
                     entries): best at >= 95 % zeros.
Decoder: Cast, Equal/Where for fillers, CumSum - 1 -> positions; Gather from the table (the
channel from the position for per-channel tables); ScatterElements into zeros. Bit-exact.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.encode.base import (NODE_OVERHEAD, TENSOR_OVERHEAD, Encoding, Names, const, node,
    nonzero_positions, reshape_to, zeros_like_flat)
from onnxcomp.encode.codebook import unnamed
from onnxcomp.encode.nibbles import pack_nibbles, unpack_nibbles
from onnxcomp.encode.tables import Layout, Table, build_table, detect

I32 = onnx.TensorProto.INT32
_CACHE: dict = {}


def gap_fields(pos: np.ndarray, fmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap field per entry, index of the nonzero each real entry stores; -1 for fillers)."""
    gaps = np.diff(pos, prepend=-1)
    fill = (gaps - 1) // fmax
    counts = fill + 1
    last = np.cumsum(counts) - 1
    fields = np.zeros(int(counts.sum()), np.uint8)
    fields[last] = (gaps - fmax * fill).astype(np.uint8)
    which = np.full(fields.size, -1, np.int64)
    which[last] = np.arange(pos.size)
    return fields, which


def nonzero_tables(flat: np.ndarray, layout: Layout | None) -> list[Table]:
    """Tables of the nonzero values only (zeros are positions, not table entries); cached."""
    if _CACHE.get("flat") is flat and _CACHE.get("layout") == layout:
        return _CACHE["tables"]
    lay = layout or Layout(1, 1, flat.size)
    rows = lay.rows(flat)
    nz = rows != 0
    first = rows[np.arange(rows.shape[0]), np.argmax(nz, axis=1)]
    filled = lay.unrows(np.where(nz, rows, first[:, None])) if not nz.all() else flat
    tables = detect(filled, layout) if np.any(flat) else []
    _CACHE.update(flat=flat, layout=layout, tables=tables)
    return tables


class _SparseCodebook(Encoding):
    gap_bits = 4
    layout: Layout | None = None

    def with_layout(self, layout: Layout | None) -> "_SparseCodebook":
        bound = type(self)()
        bound.layout = layout
        return bound

    max_width = 256

    def _plan(self, flat: np.ndarray):
        """(positions, table, bytes) with the table storing the fewest bytes, or None."""
        nnz = np.count_nonzero(flat)  # first: a dense weight's positions are 2x its bytes (int64)
        if nnz == 0 or nnz > flat.size * 0.6:
            return None
        pos = nonzero_positions(flat)
        best = None
        for t in nonzero_tables(flat, self.layout):
            if t.width <= self.max_width:
                cost = self._cost(pos, t)
                if cost is not None and (best is None or cost[2] < best[2]):
                    best = cost
        return best

    def _cost(self, pos: np.ndarray, t: Table) -> tuple[np.ndarray, Table, int] | None:
        fmax = (1 << self.gap_bits) - 1
        e = int(((np.diff(pos, prepend=-1) - 1) // fmax + 1).sum())
        payload = e if self.gap_bits == 4 else e + ((e + 1) // 2 if t.width <= 16 else e)
        return pos, t, payload + t.table_bytes() + 12 * TENSOR_OVERHEAD + 20 * NODE_OVERHEAD

    def size(self, flat: np.ndarray) -> int | None:
        plan = self._plan(flat)
        return None if plan is None else plan[2]

    def build(self, flat, shape, name, fresh):
        pos, t, _ = self._plan(flat)
        fmax = (1 << self.gap_bits) - 1
        fields, which = gap_fields(pos, fmax)
        real = which >= 0
        idx = np.zeros(fields.size, np.uint8)
        idx[real] = t.idx[pos[which[real]]]
        inits: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        final, name = name, fresh("scb")  # short prefix for the decoder's own tensors
        gap, ix = self.streams(fields, idx, t.width, fresh, name, inits, nodes)
        posn, filler = positions(gap, fmax, fresh, name, inits, nodes)
        vals = entry_values(t, flat.dtype, ix, posn, filler, fresh, name, inits, nodes)
        zeros = zeros_like_flat(fresh, name, flat.size, flat.dtype, inits, nodes)
        out = fresh(f"{name}_flat")
        nodes.append(node("ScatterElements", [zeros, posn, vals], out, axis=0))
        reshape_to(fresh, name, out, shape, final, inits, nodes)
        return unnamed(nodes), inits


def positions(gap: str, fmax: int, fresh: Names, name: str, inits: list, nodes: list) -> tuple[str, str]:
    """(int32 position per entry, bool filler mask) from int32 gap fields (0 = filler of fmax)."""
    zero = const(fresh, f"{name}_zero_i", np.array(0, np.int32), inits)
    one = const(fresh, f"{name}_one_i", np.array(1, np.int32), inits)
    fm = const(fresh, f"{name}_fmax", np.array(fmax, np.int32), inits)
    filler, fi, extra, adv, cs, posn = (fresh(f"{name}_{s}") for s in
                                        ("filler", "filleri", "extra", "adv", "cumsum", "pos"))
    nodes += [node("Equal", [gap, zero], filler), node("Cast", [filler], fi, to=I32),
              node("Mul", [fi, fm], extra), node("Add", [gap, extra], adv),
              node("CumSum", [adv, zero], cs), node("Sub", [cs, one], posn)]
    return posn, filler


def entry_values(t: Table, dtype: np.dtype, ix: str, posn: str, filler: str, fresh: Names, name: str,
                 inits: list, nodes: list) -> str:
    """The value of every entry: table[idx] (per channel: the channel from the position); 0 for fillers."""
    table = build_table(t, fresh, name, dtype, inits, nodes, zero_entry=True)  # zero at the end
    lay = t.layout
    flat_idx = ix
    if t.kind != "tensor":
        ch = channel_of(posn, lay, fresh, name, inits, nodes)
    if t.kind == "channel":
        k = const(fresh, f"{name}_k", np.array(t.width, np.int32), inits)
        chk, flat_idx = fresh(f"{name}_chk"), fresh(f"{name}_fidx")
        nodes += [node("Mul", [ch, k], chk), node("Add", [chk, ix], flat_idx)]
    z = const(fresh, f"{name}_zeroidx", np.array(t.values.size, np.int32), inits)
    safe, vals = fresh(f"{name}_sidx"), fresh(f"{name}_vals")
    nodes += [node("Where", [filler, z, flat_idx], safe), node("Gather", [table, safe], vals, axis=0)]
    if t.kind != "shared":
        return vals
    scales = const(fresh, f"{name}_scales", t.scales.reshape(-1), inits)
    sf, se, out = fresh(f"{name}_scalesf"), fresh(f"{name}_entryscale"), fresh(f"{name}_vals_s")
    nodes += [node("Cast", [scales], sf, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))),
              node("Gather", [sf, ch], se, axis=0), node("Mul", [vals, se], out)]
    return out


def channel_of(posn: str, lay: Layout, fresh: Names, name: str, inits: list, nodes: list) -> str:
    """int32 output channel of each flat position: (pos // inner) % channels."""
    cur = posn
    if lay.inner > 1:
        inner = const(fresh, f"{name}_inner", np.array(lay.inner, np.int32), inits)
        d = fresh(f"{name}_posdiv")
        nodes.append(node("Div", [cur, inner], d))
        cur = d
    if lay.outer > 1:
        c = const(fresh, f"{name}_nch", np.array(lay.channels, np.int32), inits)
        m = fresh(f"{name}_ch")
        nodes.append(node("Mod", [cur, c], m))
        cur = m
    return cur


class SparseCodebook4(_SparseCodebook):
    """One byte per entry: 4-bit gap + 4-bit codebook index."""

    kind = "sparse_codebook4"
    min_opset = 11
    gap_bits = 4
    max_width = 16

    def streams(self, fields, idx, width, fresh, name, inits, nodes):
        both = const(fresh, f"{name}_gapidx", (fields << 4) | idx, inits)
        seq = unpack_nibbles(both, 2 * fields.size, fresh, name, inits, nodes)
        two = const(fresh, f"{name}_pair", np.array([-1, 2], np.int64), inits)
        start0, start1 = (const(fresh, f"{name}_s{i}", np.array([i], np.int64), inits) for i in (0, 1))
        end = const(fresh, f"{name}_send", np.array([2], np.int64), inits)
        axis = const(fresh, f"{name}_ax1", np.array([1], np.int64), inits)
        flat = const(fresh, f"{name}_fl", np.array([-1], np.int64), inits)
        pairs, g2, i2, g, ix = (fresh(f"{name}_{s}") for s in ("pairs", "g2", "i2", "gap", "cidx"))
        nodes += [node("Reshape", [seq, two], pairs),
                  node("Slice", [pairs, start0, start1, axis], g2),
                  node("Slice", [pairs, start1, end, axis], i2),
                  node("Reshape", [g2, flat], g), node("Reshape", [i2, flat], ix)]
        return g, ix


class SparseCodebook8(_SparseCodebook):
    """8-bit gaps + 4-bit indices two per byte (8-bit indices above 16 entries)."""

    kind = "sparse_codebook8"
    min_opset = 11
    gap_bits = 8

    def streams(self, fields, idx, width, fresh, name, inits, nodes):
        graw = const(fresh, f"{name}_gaps", fields, inits)
        g = fresh(f"{name}_gap")
        nodes.append(node("Cast", [graw], g, to=I32))
        if width <= 16:
            packed = const(fresh, f"{name}_idx4", pack_nibbles(idx), inits)
            return g, unpack_nibbles(packed, idx.size, fresh, f"{name}_i", inits, nodes)
        raw = const(fresh, f"{name}_idx8", idx, inits)
        ix = fresh(f"{name}_cidx")
        nodes.append(node("Cast", [raw], ix, to=I32))
        return g, ix


ENCODINGS = (SparseCodebook4(), SparseCodebook8())
