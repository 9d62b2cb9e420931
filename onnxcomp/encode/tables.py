"""Detect codebook structure in a weight's final values, and build the decoder for its table.

The cluster pass only writes values; this module finds what they are made of, per tensor:
  tensor   at most 256 distinct values: one table [K] of the weight's dtype;
  channel  at most 256 distinct values per output channel: a [C, K] table addressed as c*K + idx,
           stored in the weight's dtype, as float16 when every entry is float16-exact (Cast back),
           or as int8 x a float16 scale per channel when every entry is q*s exactly (Cast, Mul);
  shared   every channel's values are q[idx] * s[c] with one integer table q (|q| <= 2047) and a
           float16 scale per channel: table [K] int16 + scales [C] float16, decoded by a Mul.
Products of a <= 12-bit integer and a float16 are exact in float32, so every decoder is bit-exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxcomp.encode.base import Names, const, node
from onnxcomp.encode.factor import factor, factor_multiples, lowest_terms  # noqa: F401 - factor: re-exported

GRID8, GRID12 = 127, 2047  # integer ranges whose products with a float16 are exact in float32


@dataclass(frozen=True)
class Layout:
    """The flat tensor viewed as [outer, channels, inner] with the output channel in the middle."""

    outer: int
    channels: int
    inner: int

    @staticmethod
    def of(shape: tuple[int, ...], axis: int | None) -> "Layout":
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if axis is None or not shape:
            return Layout(1, 1, n)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        return Layout(outer, int(shape[axis]), int(np.prod(shape[axis + 1:], dtype=np.int64)))

    def rows(self, flat: np.ndarray) -> np.ndarray:
        """[channels, outer*inner] copy of the flat tensor, one row per output channel."""
        return flat.reshape(self.outer, self.channels, self.inner).transpose(1, 0, 2).reshape(self.channels, -1)

    def view(self, flat: np.ndarray) -> np.ndarray:
        """[channels, outer, inner] view of the flat tensor (no copy): :meth:`rows` a block at a time."""
        return flat.reshape(self.outer, self.channels, self.inner).transpose(1, 0, 2)

    def unrows(self, rows: np.ndarray) -> np.ndarray:
        return rows.reshape(self.channels, self.outer, self.inner).transpose(1, 0, 2).reshape(-1)


@dataclass
class Table:
    """What the values are made of: kind, the per-element index (flat) and the table arrays.

    ``index`` may be a function computing the indices: an encoding's size needs only the table, so
    the ranking of every element (a sort of the whole tensor) waits until a table is written.
    """

    kind: str  # tensor | channel | shared
    index: np.ndarray | Callable[[], np.ndarray]  # uint8 (int16 past 256 entries), flat, into the row's table
    width: int  # K: entries per table row
    values: np.ndarray  # [K] or [C, K] in the weight dtype (shared: the int16 table q)
    scales: np.ndarray | None = None  # channel-grid / shared: float16 per channel
    store: str = "plain"  # plain | half | grid (channel tables)
    layout: Layout | None = None

    @property
    def idx(self) -> np.ndarray:
        if callable(self.index):
            self.index = self.index()
        return self.index

    def table_bytes(self) -> int:
        if self.kind == "shared":
            return self.values.size * 2 + self.scales.size * 2
        if self.store == "grid":
            return self.values.size + self.scales.size * 2
        item = 2 if self.store == "half" else self.values.dtype.itemsize
        return self.values.size * item


def _sorted_rows(rows: np.ndarray, block: int):
    """(start, sorted block, mask of each row's first occurrence of a value) for blocks of about
    ``block`` values of ``rows`` (2-D, or a :meth:`Layout.view`: then each block is copied alone)."""
    n = int(np.prod(rows.shape[1:])) if rows.ndim >= 2 else 0
    step = max(1, block // max(1, n))
    for a in range(0, rows.shape[0], step):
        part = rows[a:a + step].reshape(-1, n)
        srt = np.sort(part, axis=1)
        change = np.ones(srt.shape, bool)
        change[:, 1:] = srt[:, 1:] != srt[:, :-1]
        yield a, part, srt, change


def row_ranks(rows: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """The rank of each element among its row's distinct values [rows, n] (equal values share one).

    int16 when every row has fewer than 32768 distinct values (int32 otherwise): for a big
    embedding table the int64 temporaries were most of the encoder's peak memory; rows are ranked
    a block of about ``block`` values at a time for the same reason.
    """
    n = int(np.prod(rows.shape[1:])) if rows.ndim >= 2 else 0
    ranks = np.empty((rows.shape[0], n), np.int16 if n < 32768 else np.int32)
    most = 0
    for a, part, _, change in _sorted_rows(rows, block):
        order = np.argsort(part, axis=1)  # equal values share a rank: stability is not needed
        most = max(most, int(change.sum(axis=1).max(initial=0)))
        rank_sorted = np.cumsum(change, axis=1, dtype=ranks.dtype)
        rank_sorted -= 1
        np.put_along_axis(ranks[a:a + len(part)], order, rank_sorted, axis=1)
    return ranks.astype(np.int16) if ranks.dtype == np.int32 and most < 32768 else ranks


def row_distinct(rows: np.ndarray, block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(distinct count per row, every row's distinct values in order, one after another), from a
    plain sort (several times faster than the argsort the ranks need), a block at a time."""
    counts = np.empty(rows.shape[0], np.int64)
    values = []
    for a, part, srt, change in _sorted_rows(rows, block):
        counts[a:a + len(part)] = change.sum(axis=1)
        values.append(srt[change])  # row-major: each row's distinct values in order
    return counts, np.concatenate(values) if values else np.zeros(0, rows.dtype)


def _table(counts: np.ndarray, vals: np.ndarray, width: int) -> np.ndarray:
    """[rows, width] from :func:`row_distinct`'s counts and values (padded with the row's last)."""
    vals = vals.astype(np.float64)
    if vals.size == 0:
        return np.zeros((counts.size, width), np.float64)
    start = np.cumsum(counts) - counts
    at = start[:, None] + np.minimum(np.arange(width)[None, :], np.maximum(counts - 1, 0)[:, None])
    return np.where(counts[:, None] > 0, vals[np.minimum(at, vals.size - 1)], 0.0)


def _too_many(flat: np.ndarray, layout: Layout | None, max_width: int) -> bool:
    """True when one output channel (or, without channels, the first 64 K values) already holds
    more than ``max_width`` distinct values: no table fits, so the whole-tensor sorts below (and
    their int64 temporaries, ~10x the tensor's bytes) are skipped."""
    if layout is not None and layout.channels > 1:
        part = flat.reshape(layout.outer, layout.channels, layout.inner)[:, 0, :]
    else:
        part = flat[:1 << 16]
    return np.unique(part).size > max_width


def detect(flat: np.ndarray, layout: Layout | None, max_width: int = 256) -> list[Table]:
    """Every table form these values fit in (at most ``max_width`` entries per row), smallest first."""
    integer = flat.dtype.kind in "iu" and flat.dtype.itemsize == 1  # a QDQ weight: plain tables only
    if not (flat.dtype.kind == "f" or integer) or flat.size == 0 or not np.all(np.isfinite(flat)):
        return []
    if _too_many(flat, layout, max_width):
        return []
    out: list[Table] = []
    small = np.uint8 if max_width <= 256 else np.int16  # the index: a byte per element, not two
    if layout is None or layout.channels <= 1:
        u, inv = np.unique(flat, return_inverse=True)
        if u.size <= max_width:
            out.append(Table("tensor", inv.astype(small), int(u.size), u.astype(flat.dtype)))
        return out
    counts, vals = row_distinct(layout.view(flat))  # rows copied a block at a time: nothing
    width = int(counts.max())
    if width > max_width:
        return out
    table = _table(counts, vals, width)
    u = np.unique(table)
    memo: dict = {}
    grid = None

    def ranks() -> np.ndarray:  # one ranking (a sort) serves the tensor table and the channel ones
        if grid is not None:  # (nothing tensor-sized is held until then); a grid's lookup is cheap:
            return grid_ranks(flat, layout, counts, *grid, dtype=small)  # redone, not held
        if "r" not in memo:
            memo["r"] = row_ranks(layout.view(flat))
        return memo["r"]

    if u.size <= max_width:  # the tensor table: each row's distinct values found in the union
        out.append(Table("tensor", lambda: layout.unrows(np.take_along_axis(
            np.searchsorted(u, table).astype(small), ranks(), axis=1)).astype(small, copy=False),
            int(u.size), u.astype(flat.dtype)))
    if u.size <= 16:
        return out

    def idx() -> np.ndarray:
        if "idx" not in memo and grid is not None:  # in element order directly: no copy to unroll
            memo["idx"] = grid_ranks(flat, layout, counts, *grid, flat_order=True, dtype=small)
        elif "idx" not in memo:  # the ranks are let go once unrolled (another table ranks again)
            memo["idx"] = layout.unrows(ranks()).astype(small, copy=False)
            memo.pop("r", None)
        return memo["idx"]

    out.append(Table("channel", idx, width, table.astype(flat.dtype), layout=layout))
    if flat.dtype == np.float32:
        if np.array_equal(table.astype(np.float16).astype(np.float64), table):
            out.append(Table("channel", idx, width, table.astype(flat.dtype), store="half", layout=layout))
        grid = factor(table, GRID8)
        if grid is not None:
            out.append(Table("channel", idx, width, grid[0], grid[1], store="grid", layout=layout))
        shared = _shared(ranks, table, layout, max_width, grid, small)
        if shared is not None:
            out.append(shared)
    return sorted(out, key=Table.table_bytes)


def grid_ranks(flat: np.ndarray, layout: Layout, counts: np.ndarray, q: np.ndarray, s: np.ndarray,
               block: int = 1 << 20, flat_order: bool = False, dtype: type = np.int16) -> np.ndarray:
    """:func:`row_ranks`' ranks [channels, n] of values that are ``q * s`` per row exactly (the
    int8 grid :func:`factor` found; ``q`` [C, K] sorted, rows padded past ``counts``): each value
    divided by its row's scale is its integer exactly, looked up in a per-row table. No sort.
    ``flat_order``: the ranks in the weight's own element order (``layout.unrows`` of them);
    ``dtype``: the ranks' (uint8 holds up to 256 entries a row)."""
    c, width = q.shape
    lut = np.zeros((c, 2 * GRID8 + 1), dtype)
    rows, cols = np.nonzero(np.arange(width)[None, :] < counts[:, None])
    lut[rows, q[rows, cols].astype(np.int64) + GRID8] = cols
    lut = lut.reshape(-1)
    view = layout.view(flat)
    n = int(np.prod(view.shape[1:]))
    scale = np.asarray(s, np.float32).reshape(-1, 1)
    out = np.empty(flat.size if flat_order else (c, n), dtype)
    dst = layout.view(out) if flat_order else out
    step = max(1, block // max(1, n))
    for a in range(0, c, step):
        part = view[a:a + step].reshape(-1, n)
        at = np.rint(part / scale[a:a + step]).astype(np.int64)
        at += GRID8 + np.arange(a, a + len(part), dtype=np.int64)[:, None] * (2 * GRID8 + 1)
        dst[a:a + step] = lut[at].reshape(dst[a:a + step].shape)
    return out


def _shared(ranks: Callable[[], np.ndarray], table: np.ndarray, layout: Layout, max_width: int,
            grid: tuple[np.ndarray, np.ndarray] | None = None, dtype: type = np.int16) -> Table | None:
    """One integer table for all channels times a float16 scale per channel, when it is exact
    (``grid``: the rows' 8-bit factorisation, which narrows the search)."""
    f = factor(table, GRID12) if grid is None else factor_multiples(table, GRID12, grid[0])
    if f is None:
        return None
    q, s = lowest_terms(*f, table)
    zero = ~np.any(table, axis=1)
    if zero.any() and not zero.all():  # an all-zero channel (e.g. a dead one the output correction
        q, s = q.copy(), s.copy()      # zeroed) takes any code times a zero scale, not a code of 0
        q[zero], s[zero] = q[~zero].max(), 0
    values, inv = np.unique(q, return_inverse=True)
    if values.size > max_width:
        return None
    inv = inv.reshape(q.shape).astype(dtype)  # <= max_width entries: no int64 tensor-sized gather
    return Table("shared", lambda: layout.unrows(np.take_along_axis(inv, ranks(), axis=1)).astype(dtype, copy=False),
                 int(values.size), values.astype(np.int16), s, layout=layout)


def build_table(t: Table, fresh: Names, name: str, dtype: np.dtype, inits: list, nodes: list,
                zero_entry: bool = False) -> str:
    """Decoder nodes producing the flat float table to Gather from (shared: the float q table).

    With ``zero_entry`` a 0 is appended as the last entry (fillers of the sparse encodings).
    """
    from onnx import helper

    to = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    vals = t.values.reshape(-1)
    if zero_entry:
        vals = np.concatenate([vals, np.zeros(1, vals.dtype)])
    if t.store == "grid":  # [C, K] int8 x [C, 1] float16 scale, multiplied in float32
        q = const(fresh, f"{name}_codes", t.values.astype(np.int8), inits)
        sc = const(fresh, f"{name}_scales", t.scales.reshape(-1, 1), inits)
        flat_shape = const(fresh, f"{name}_flat", np.array([-1], np.int64), inits)
        qf, sf, tbl, flat = (fresh(f"{name}_{s}") for s in ("codesf", "scalesf", "table2d", "table"))
        nodes += [node("Cast", [q], qf, to=to), node("Cast", [sc], sf, to=to),
                  node("Mul", [qf, sf], tbl), node("Reshape", [tbl, flat_shape], flat)]
        if not zero_entry:
            return flat
        zero = const(fresh, f"{name}_zero", np.zeros(1, dtype), inits)
        out = fresh(f"{name}_table0")
        nodes.append(node("Concat", [flat, zero], out, axis=0))
        return out
    if t.kind == "shared" or t.store == "half":  # int16 q (shared) or float16 entries, Cast up
        raw = const(fresh, f"{name}_codes", vals.astype(np.int16 if t.kind == "shared" else np.float16), inits)
        out = fresh(f"{name}_table")
        nodes.append(node("Cast", [raw], out, to=to))
        return out
    return const(fresh, f"{name}_table", vals, inits)
