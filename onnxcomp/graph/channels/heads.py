"""Channel rules for attention: channels split into heads by a Reshape, and products of activations.

A transformer's Q/K/V projections write ``[..., C]``; the exporter splits the channel axis into
``[..., heads, C / heads]`` with a Reshape, moves the head axis with Transposes, multiplies Q by
Kᵀ and the softmax by V head by head (MatMuls of two activations whose head axis is a batch
axis), and merges the heads back with a Reshape before the output projection.

- A Reshape that splits the channel axis into ``(groups, inner...)`` ties the ``inner`` channels
  of every group into one unit (a head is removed whole) and tracks the group axis; its literal
  group count is rewritten when heads are removed. Merging the groups back into channels is the
  ordinary Reshape rule (each head maps to its ``inner`` positions).
- A Reshape ``[..., P*C]`` -> ``[..., P, C]`` whose P axis is then picked apart by Gathers (the
  fused Q/K/V projection of nn.MultiheadAttention) ties the P parts channel by channel and tracks
  the C axis instead. A head count multiplied by the batch (``Mul(batch, heads)``) is rewritten too.
- A MatMul of two activations ties channels that meet on a batch axis (Q's heads with K's, the
  softmax's with V's) and passes channels on A's row axis or B's column axis through; channels
  on the contracted axis freeze.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.types import Layout
from onnxcomp.graph.channels.maps import moved_axis
from onnxcomp.graph.channels.reshape import Product
from onnxcomp.graph.edit import get_attr


def _prod(xs) -> int:
    return int(np.prod(list(xs), dtype=np.int64)) if len(xs) else 1


class HeadRules:
    """Mixin of :class:`onnxcomp.graph.channels.rules.Walker`: head split and the MatMul rule."""

    def split_groups(self, node: onnx.NodeProto, lay: Layout, entries: list, s_in: tuple, s_out: tuple,
                     other: set = frozenset()) -> bool:
        """Reshape ``[..., C, ...]`` -> ``[..., G, C/G..., ...]``: track G, tie each group's channels."""
        a, before = lay.axis, _prod(s_in[:lay.axis])
        c = s_in[a]
        for b in range(len(s_out) - 1):
            g = s_out[b]
            if _prod(s_out[:b]) != before or g <= 1 or g >= c or c % g:
                continue
            if not any(_prod(s_out[b:j]) == c for j in range(b + 2, len(s_out) + 1)):
                continue
            entry, ids = entries[b], lay.ids.reshape(g, c // g)
            if s_out[b + 1] == c // g and self._picked_apart(node.output[0], b):
                return self._split_parts(node, entries[b + 1], ids, b, len(s_out), b + 1 in other)
            if isinstance(entry, Product) and entry[1] == g and self._size(entry[0]) == 1:
                entry = g  # batch x heads, the batch 1 in these shapes: the constant counts the heads
            if not isinstance(entry, int) or entry == 0:
                self.opaque(node, "splits channels into groups whose count is computed at run time")
                return True
            for j in range(1, c // g):
                self.cg.tie(ids[:, 0], ids[:, j], f"{self.label(node)}: splits channels into groups")
            if entry > 0 and not self.edit_count(node, self.const(node, 1), b, ids[:, 0], 1):
                return True
            self.out(node.output[0], b, ids[:, 0], len(s_out))
            return True
        return False

    def _split_parts(self, node: onnx.NodeProto, inner, ids: np.ndarray, b: int, rank: int, width: bool) -> bool:
        """``[..., P*C]`` -> ``[..., P, C]`` whose parts are then picked apart (Q, K, V of one fused
        projection): a head goes from every part together; the C axis carries the channels.
        ``width``: C is read at run time from a frozen tensor's width (nn.MultiheadAttention
        through the legacy exporter) and is written as the kept count instead."""
        if not width and (not isinstance(inner, int) or inner == 0):
            self.opaque(node, "splits channels into parts whose size is computed at run time")
            return True
        for j in range(1, ids.shape[0]):
            self.cg.tie(ids[0], ids[j], f"{self.label(node)}: splits a fused projection into parts")
        if (width or inner > 0) and not self.edit_count(node, self.const(node, 1), b + 1, ids[0], 1, replace=width):
            return True
        self.out(node.output[0], b + 1, ids[0], rank)
        return True

    def _size(self, entry) -> int | None:
        """The static size a symbolic shape entry has in these shapes."""
        if isinstance(entry, int):
            return entry
        s = self.shape(entry[0]) if isinstance(entry, tuple) and isinstance(entry[0], str) else None
        return None if s is None or entry[1] >= len(s) else s[entry[1]]

    def _picked_apart(self, name: str, axis: int, depth: int = 0) -> bool:
        """Whether axis ``axis`` of ``name`` only moves (Unsqueeze/Transpose/Squeeze) until Gathers
        with constant scalar indices pick single entries of it."""
        readers, rank = self.readers(name), self.rank(name)
        if not readers or rank is None or depth > 6:
            return False
        for r in readers:
            if r.op_type == "Gather" and r.input[0] == name:
                idx = self.const(r, 1)
                if idx is None or np.ndim(idx) != 0 or int(get_attr(r, "axis", 0)) % rank != axis:
                    return False
                continue
            if r.op_type == "Transpose":
                perm = get_attr(r, "perm") or list(range(rank))[::-1]
                nxt = list(perm).index(axis)
            elif r.op_type in ("Unsqueeze", "Squeeze"):
                axes, _ = self._axes(r, 13)
                nxt = None if axes is None else moved_axis(r.op_type, axis, rank, axes)
                if nxt is None:
                    return False
            else:
                return False
            if not self._picked_apart(r.output[0], nxt, depth + 1):
                return False
        return True

    def r_MatMul(self, node: onnx.NodeProto) -> None:
        """MatMul: a constant 2-D right operand (a Linear layer), or a product of two activations."""
        w = self.weights.get((id(node), 1))
        lay = self.L.get(node.input[0])
        rank = self.rank(node.input[0])
        if w is None and not self.ev.is_constant(node.input[1]) and not self.ev.is_constant(node.input[0]):
            return self.matmul_activations(node)
        if w is None or len(w.shape) != 2 or rank is None:
            self.opaque(node, "MatMul without a constant 2-D right operand")
            return
        if self._read_apart(node, w):
            return
        self._consume(node, w, lay, rank - 1)
        self._produce(node, w, 1, max(rank, 2) - 1, max(rank, 2), None)

    def matmul_activations(self, node: onnx.NodeProto) -> None:
        """MatMul of two activations (attention scores, attention times V)."""
        ranks = [self.rank(i) for i in node.input[:2]]
        if any(r is None for r in ranks) or min(ranks) < 2:
            return self.opaque(node, "MatMul without a constant 2-D right operand")
        R = max(ranks)
        placed = {}
        for k, (name, r) in enumerate(zip(node.input[:2], ranks)):
            lay = self.L.get(name)
            if lay is None:
                continue
            axis = lay.axis + R - r
            contracted = R - 1 if k == 0 else R - 2
            if axis == contracted or (r == 1):
                return self.opaque(node, "multiplies its channels with another activation")
            if axis == (R - 1 if k == 1 else R - 2) or axis < R - 2:
                placed[k] = (axis, lay)
            else:
                return self.opaque(node, "multiplies its channels with another activation")
        axes = {axis for axis, _ in placed.values()}
        if len(axes) != 1:
            return self.opaque(node, "its inputs carry channels on different axes")
        axis = axes.pop()
        (_, first), *rest = placed.values()
        for _, other in rest:
            if len(other.ids) != len(first.ids):
                return self.opaque(node, f"broadcasts {len(other.ids)} channels against {len(first.ids)}")
            self.cg.tie(first.ids, other.ids, f"{self.label(node)}: ties channels to ones that cannot be pruned")
        if axis < R - 2:  # a batch axis: an untracked operand must broadcast along it
            for k, (name, r) in enumerate(zip(node.input[:2], ranks)):
                if k in placed:
                    continue
                s = self.shape(name)
                pos = axis - (R - r)
                if s is None or (pos >= 0 and s[pos] != 1):
                    return self.opaque(node, f"input {name} has channels that no rule tracks")
        self.out(node.output[0], axis, first.ids, R)
