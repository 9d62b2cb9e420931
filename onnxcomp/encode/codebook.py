"""Codebook encodings: indices into a table of the values a weight actually holds.

codebook8      one uint8 index per weight (<= 256 entries per table row); Cast + Gather (opset 9).
codebook4      two 4-bit indices per byte, first in the high nibble (<= 16 entries); unpacked with
               BitShift + Mod (no BitwiseAnd, so opset 11 suffices), then Cast + Gather.
codebook_uint4 the indices as a UINT4 initializer; Cast + Gather (opset 21).
The table is per tensor, per output channel (GatherElements of the [C, K] table spread along the
weight, see :mod:`.rows`; or one Gather over it flattened, index c*K + idx) or shared with a
float16 scale per channel (see :mod:`.tables`). All decoders are bit-exact.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcomp.encode.base import NODE_OVERHEAD, TENSOR_OVERHEAD, Encoding, Names, const, node, reshape_to
from onnxcomp.encode.nibbles import nibble_indices
from onnxcomp.encode.rows import gather_axis, gather_rows
from onnxcomp.encode.tables import Layout, Table, build_table, detect

_CACHE: dict = {}


def tables_for(flat: np.ndarray, layout: Layout | None) -> list[Table]:
    """``detect`` with a one-entry cache: every encoding asks about the same tensor in turn."""
    if _CACHE.get("flat") is flat and _CACHE.get("layout") == layout:
        return _CACHE["tables"]
    tables = detect(flat, layout)
    _CACHE.update(flat=flat, layout=layout, tables=tables)
    return tables


def pick(flat: np.ndarray, layout: Layout | None, bits: int) -> Table | None:
    """The smallest table whose rows fit ``bits``-bit indices."""
    return next((t for t in tables_for(flat, layout) if t.width <= 1 << bits), None)


def table_overhead(t: Table) -> int:
    """Framing of the table's decoder: tensors and nodes beyond the index stream."""
    if t.kind == "tensor" or t.store == "plain":
        return TENSOR_OVERHEAD + (2 * NODE_OVERHEAD + 2 * TENSOR_OVERHEAD if t.kind == "channel" else 0)
    extra = 4 if t.store == "grid" else 1
    return (extra + 2) * (TENSOR_OVERHEAD + NODE_OVERHEAD)


def gather(t: Table, fresh: Names, name: str, dtype: np.dtype, idx: str, inits: list,
           nodes: list, stored_offsets: bool = False) -> str:
    """Gather the decoded values (flat, in element order) for the int32 flat index ``idx``.

    Per-channel offsets c*K are built in-graph (CumSum, opset 11) or, with ``stored_offsets``,
    stored as an int32 initializer (opset 9).
    """
    table = build_table(t, fresh, name, dtype, inits, nodes)
    if t.kind == "tensor":
        out = fresh(f"{name}_flat")
        nodes.append(node("Gather", [table, idx], out, axis=0))
        return out
    lay = t.layout
    dims = const(fresh, f"{name}_dims3", np.array([lay.outer, lay.channels, lay.inner], np.int64), inits)
    i3, out = fresh(f"{name}_idx3"), fresh(f"{name}_vals3")
    nodes.append(node("Reshape", [idx, dims], i3))
    if t.kind == "channel" and stored_offsets:
        offs = const(fresh, f"{name}_offsets",
                     (np.arange(lay.channels, dtype=np.int32) * t.width).reshape(1, -1, 1), inits)
        i3o = fresh(f"{name}_idx3o")
        nodes += [node("Add", [i3, offs], i3o), node("Gather", [table, i3o], out, axis=0)]
        return out
    if t.kind == "channel":  # offsets c*K built in-graph: K repeated C times, exclusive CumSum
        nch = const(fresh, f"{name}_nch", np.array([lay.channels], np.int64), inits)
        axis = const(fresh, f"{name}_axis0", np.array(0, np.int32), inits)
        col = const(fresh, f"{name}_col3", np.array([1, -1, 1], np.int64), inits)
        ks, offs, offs3, i3o = (fresh(f"{name}_{s}") for s in ("ks", "offs", "offs3", "idx3o"))
        nodes += [helper.make_node("ConstantOfShape", [nch], [ks],
                                   value=helper.make_tensor("v", onnx.TensorProto.INT32, [1], [t.width])),
                  node("CumSum", [ks, axis], offs, exclusive=1), node("Reshape", [offs, col], offs3),
                  node("Add", [i3, offs3], i3o), node("Gather", [table, i3o], out, axis=0)]
        return out
    g = fresh(f"{name}_q3")
    scales = const(fresh, f"{name}_scales", t.scales.reshape(1, -1, 1), inits)
    sf = fresh(f"{name}_scalesf")
    nodes += [node("Gather", [table, i3], g, axis=0),
              node("Cast", [scales], sf, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))),
              node("Mul", [g, sf], out)]
    return out


def channel_axis(t: Table, shape) -> int | None:
    """The axis of ``shape`` that holds the table's channels (0 for a per-tensor table), or None."""
    if t.kind == "tensor":
        return 0
    lay = t.layout
    for a in range(len(shape)):
        if int(np.prod(shape[:a], dtype=np.int64)) == lay.outer and shape[a] == lay.channels:
            return a
    return None


def gather_shaped(t: Table, fresh: Names, name: str, dtype: np.dtype, idx: str, axis: int, shape: tuple[int, ...],
                  out: str, inits: list, nodes: list, stored_offsets: bool = False) -> None:
    """Gather the decoded weight straight into ``out`` from an int32 index already in its shape:
    per-channel offsets and scales broadcast along ``axis``, or (opset 11) GatherElements of the
    table spread along another axis. onnxruntime folds this at load with one int32 temporary per
    weight (a Reshape would add a copy; the offsets another)."""
    table = build_table(t, fresh, name, dtype, inits, nodes)
    if t.kind == "tensor":
        nodes.append(node("Gather", [table, idx], out, axis=0))
        return
    rank = len(shape)
    bshape = [1] * rank
    bshape[axis] = t.layout.channels
    g = gather_axis(shape, axis, t.width) if not stored_offsets else None
    if g is not None and t.kind == "shared":  # the [C, K] table q[k] * s[c] first: tiny, same products
        cols, sf, ck = (fresh(f"{name}_{x}") for x in ("q1k", "scalesf", "ck"))
        nodes += [node("Reshape", [table, const(fresh, f"{name}_1k", np.array([1, -1], np.int64), inits)], cols),
                  node("Cast", [const(fresh, f"{name}_scales", t.scales.reshape(-1, 1), inits)], sf,
                       to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))),
                  node("Mul", [cols, sf], ck)]
        table = ck
    if g is not None and t.kind in ("channel", "shared"):
        gather_rows(table, t, shape, axis, g, fresh, name, out, idx, inits, nodes)
        return
    if t.kind == "channel":
        if stored_offsets:
            offs = const(fresh, f"{name}_offsets",
                         (np.arange(t.layout.channels, dtype=np.int32) * t.width).reshape(bshape), inits)
        else:  # offsets c*K built in-graph: K repeated C times, exclusive CumSum (opset 11)
            nch = const(fresh, f"{name}_nch", np.array([t.layout.channels], np.int64), inits)
            zero = const(fresh, f"{name}_axis0", np.array(0, np.int32), inits)
            col = const(fresh, f"{name}_bshape", np.array(bshape, np.int64), inits)
            ks, flat_offs, offs = (fresh(f"{name}_{s}") for s in ("ks", "offs", "offsb"))
            nodes += [helper.make_node("ConstantOfShape", [nch], [ks],
                                       value=helper.make_tensor("v", onnx.TensorProto.INT32, [1], [t.width])),
                      node("CumSum", [ks, zero], flat_offs, exclusive=1), node("Reshape", [flat_offs, col], offs)]
        shifted = fresh(f"{name}_idxo")
        nodes += [node("Add", [idx, offs], shifted), node("Gather", [table, shifted], out, axis=0)]
        return
    g, sf = fresh(f"{name}_q"), fresh(f"{name}_scalesf")
    scales = const(fresh, f"{name}_scales", t.scales.reshape(bshape), inits)
    nodes += [node("Gather", [table, idx], g, axis=0),
              node("Cast", [scales], sf, to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))),
              node("Mul", [g, sf], out)]


def unnamed(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Drop decoder node names (optional in ONNX; they cost bytes in every small model)."""
    for n in nodes:
        n.name = ""
    return nodes


class _Codebook(Encoding):
    """Shared logic: index stream (per subclass) + table + Gather + Reshape."""

    bits = 8
    layout: Layout | None = None
    opset = 0  # the model's, when known: codebook8 reads per-channel tables with GatherElements from 11

    def with_layout(self, layout: Layout | None) -> "_Codebook":
        bound = type(self)()
        bound.layout, bound.opset = layout, self.opset
        return bound

    def at_opset(self, opset: int) -> "_Codebook":
        bound = self.with_layout(self.layout)
        bound.opset = opset
        return bound

    def index_bytes(self, n: int) -> int:
        return n

    def index_nodes(self) -> int:
        return 1

    def size(self, flat: np.ndarray) -> int | None:
        t = pick(flat, self.layout, self.bits)
        if t is None:
            return None
        return (self.index_bytes(flat.size) + t.table_bytes() + table_overhead(t)
                + (self.index_nodes() + 2) * (NODE_OVERHEAD + TENSOR_OVERHEAD))

    def build(self, flat, shape, name, fresh):
        t = pick(flat, self.layout, self.bits)
        inits: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        p = fresh("cb")  # short prefix: decoder names add up in small models
        axis = channel_axis(t, shape)
        if axis is not None:  # indices in the weight's shape: no Reshape of int32 or float temporaries
            idx = self.indices(t.idx.astype(np.uint8, copy=False), fresh, p, inits, nodes, tuple(shape))
            gather_shaped(t, fresh, p, flat.dtype, idx, axis, tuple(shape), name, inits, nodes,
                          self.min_opset < 11 and self.opset < 11)
            return unnamed(nodes), inits
        idx = self.indices(t.idx.astype(np.uint8, copy=False), fresh, p, inits, nodes)
        out = gather(t, fresh, p, flat.dtype, idx, inits, nodes, self.min_opset < 11)
        reshape_to(fresh, p, out, shape, name, inits, nodes)
        return unnamed(nodes), inits

    def indices(self, idx: np.ndarray, fresh: Names, name: str, inits: list, nodes: list,
                shape: tuple[int, ...] | None = None) -> str:
        """The int32 index (flat, or in ``shape`` when given)."""
        raw = const(fresh, f"{name}_idx8", idx if shape is None else idx.reshape(shape), inits)
        out = fresh(f"{name}_idx")
        nodes.append(node("Cast", [raw], out, to=onnx.TensorProto.INT32))
        return out


class _BestTable(_Codebook):
    """A codebook encoding whose index stream depends on the table: each detected table is priced
    by ``_cost`` (bytes and the stream's parameters, or None), the cheapest one is stored."""

    def _cost(self, flat: np.ndarray, t: Table):
        raise NotImplementedError

    def _stream(self, t: Table, params, n: int, fresh: Names, p: str, inits: list, nodes: list) -> tuple[Table, str]:
        """(the table as stored, the int32 flat index decoded from the stream)."""
        raise NotImplementedError

    def _choose(self, flat: np.ndarray):
        best = None
        for t in tables_for(flat, self.layout):
            priced = self._cost(flat, t)
            if priced is not None and (best is None or priced[0] < best[0]):
                best = (priced[0], t, priced[1])
        return best

    def size(self, flat: np.ndarray) -> int | None:
        best = self._choose(flat)
        return None if best is None else best[0]

    def build(self, flat, shape, name, fresh):
        _, t, params = self._choose(flat)
        inits: list[onnx.TensorProto] = []
        nodes: list[onnx.NodeProto] = []
        p = fresh("cb")
        t, idx = self._stream(t, params, flat.size, fresh, p, inits, nodes)
        out = gather(t, fresh, p, flat.dtype, idx, inits, nodes)
        reshape_to(fresh, p, out, shape, name, inits, nodes)
        return unnamed(nodes), inits


class Codebook8(_Codebook):
    """uint8 indices + table; Cast + Gather."""

    kind = "codebook8"
    min_opset = 9  # per-channel offsets stored (4 bytes per channel), no CumSum

    def size(self, flat: np.ndarray) -> int | None:
        base = super().size(flat)
        t = pick(flat, self.layout, self.bits)
        return None if base is None else base + (4 * t.layout.channels if t.kind == "channel" else 0)


class Codebook4(_Codebook):
    """Two 4-bit indices per byte; BitShift + Mod + Concat unpack, then Gather."""

    kind = "codebook4"
    min_opset = 11
    bits = 4

    def index_bytes(self, n: int) -> int:
        return (n + 1) // 2

    def index_nodes(self) -> int:
        return 7

    def indices(self, idx, fresh, name, inits, nodes, shape=None):
        return nibble_indices(idx, fresh, name, inits, nodes, shape)


class CodebookUint4(_Codebook):
    """UINT4 indices (two per byte, as ONNX packs them); Cast + Gather. Needs opset 21.

    Its size estimate equals codebook4's, so automatic choice keeps the opset-11 decoder (UINT4
    cannot be saved to the .ort format); ask for it with ``encoding="codebook_uint4"``.
    """

    kind = "codebook_uint4"
    min_opset = 21
    bits = 4

    def index_bytes(self, n: int) -> int:
        return (n + 1) // 2

    def index_nodes(self) -> int:
        return Codebook4().index_nodes()

    def indices(self, idx, fresh, name, inits, nodes, shape=None):
        tname = fresh(f"{name}_idxu4")
        v = np.asarray(idx, np.uint8).reshape(-1)
        padded = np.concatenate([v, np.zeros(v.size % 2, np.uint8)])
        raw = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)  # ONNX: first value in the low nibble
        dims = list(shape) if shape is not None else [v.size]
        inits.append(helper.make_tensor(tname, onnx.TensorProto.UINT4, dims, raw.tobytes(), raw=True))
        out = fresh(f"{name}_idx")
        nodes.append(node("Cast", [tname], out, to=onnx.TensorProto.INT32))
        return out


ENCODINGS = (Codebook8(), Codebook4(), CodebookUint4())
