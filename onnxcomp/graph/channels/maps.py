"""Index-mapping rules for coupled-channel discovery: ops that move, cut or regroup the channel axis.

Concat / Split / Slice map index offsets, Flatten maps each channel to a run of positions,
Transpose / Squeeze / Unsqueeze / Reduce move the axis, Pad gives channels it adds ids of their
own, Resize passes channels when it leaves the channel axis alone, Softmax and LayerNormalization
when they normalise another axis (Reshape and Shape: :mod:`onnxcomp.graph.channels.reshape`).
The :class:`IndexEdit` records they leave are applied by :mod:`onnxcomp.graph.channels.edits`.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.types import IndexEdit
from onnxcomp.graph.edit import get_attr


def _prod(xs) -> int:
    return int(np.prod(list(xs), dtype=np.int64)) if len(xs) else 1


def moved_axis(op: str, axis: int, rank: int, axes) -> int | None:
    """Where ``axis`` of a rank-``rank`` tensor goes through Unsqueeze / Squeeze of ``axes``
    (None: Squeeze removes it)."""
    axes = [int(x) for x in np.reshape(axes, -1)]
    if op == "Unsqueeze":
        new = {x % (rank + len(axes)) for x in axes}
        return [k for k in range(rank + len(axes)) if k not in new][axis]
    gone = [x % rank for x in axes]
    return None if axis in gone else axis - sum(g < axis for g in gone)


class MapRules:
    """Mixin of :class:`onnxcomp.graph.channels.rules.Walker`: the index-mapping op rules."""

    def r_Concat(self, node: onnx.NodeProto) -> None:
        R = self.rank(node.output[0]) or self.rank(node.input[0])
        axis = int(get_attr(node, "axis", 0)) % R
        tracked = [self.L[i] for i in node.input if i in self.L]
        if any(lay.axis != tracked[0].axis for lay in tracked):
            return self.opaque(node, "its inputs carry channels on different axes")
        if axis != tracked[0].axis:
            return self.r_eltwise(node)  # concatenating along another axis: channels must line up
        parts = []
        for i in node.input:
            ids = self.L[i].ids if i in self.L else self.fixed(i, axis)
            if ids is None:
                return self.opaque(node, f"input {i} has an unknown channel count")
            parts.append(ids)
        self.out(node.output[0], axis, np.concatenate(parts), R)

    def r_Split(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        axis = int(get_attr(node, "axis", 0)) % R
        if axis != lay.axis:
            return self.passthrough(node, lay)
        sizes = get_attr(node, "split") if self.opset < 13 else self.const(node, 1)
        if sizes is None and len(node.input) > 1 and node.input[1]:
            return self.opaque(node, "split sizes computed at run time")
        n = len(node.output)
        C = len(lay.ids)
        if sizes is None:
            if C % n:
                return self.opaque(node, f"splits {C} channels into {n} unequal parts")
            sizes = [C // n] * n
        pieces = np.split(lay.ids, np.cumsum([int(x) for x in sizes])[:-1])
        self.cg.edits.append(IndexEdit(node, "split", pieces))
        for o, ids in zip(node.output, pieces):
            self.out(o, axis, ids, R)

    def r_Slice(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        if self.opset < 10:
            starts, ends = get_attr(node, "starts"), get_attr(node, "ends")
            axes, steps = get_attr(node, "axes"), None
        else:
            starts, ends, axes, steps = (self.const(node, k) for k in (1, 2, 3, 4))
            if axes is None and len(node.input) > 3 and node.input[3]:
                return self.opaque(node, "slice axes computed at run time")
        if starts is None or ends is None:
            if self.opset < 10 or not self.slice_chunk(node, lay, R):
                self.opaque(node, "slice bounds computed at run time")
            return None
        starts, ends = [int(x) for x in np.reshape(starts, -1)], [int(x) for x in np.reshape(ends, -1)]
        axes = [int(a) % R for a in np.reshape(axes, -1)] if axes is not None else list(range(len(starts)))
        steps = [int(x) for x in np.reshape(steps, -1)] if steps is not None else [1] * len(starts)
        if lay.axis not in axes:
            return self.passthrough(node, lay)
        k = axes.index(lay.axis)
        if steps[k] != 1:
            return self.opaque(node, "strided slice on the channel axis")
        start, end, _ = slice(starts[k], ends[k]).indices(len(lay.ids))
        self.cg.edits.append(IndexEdit(node, "slice", [lay.ids], {"k": k, "start": start, "end": max(start, end)}))
        self.out(node.output[0], lay.axis, lay.ids[start:max(start, end)], R)

    def r_Pad(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        pads = get_attr(node, "pads") if self.opset < 11 else self.const(node, 1)
        if pads is None:
            return self.opaque(node, "pad amounts computed at run time")
        axes = self.const(node, 3) if self.opset >= 18 and len(node.input) > 3 and node.input[3] else None
        if axes is None and len(node.input) > 3 and node.input[3]:
            return self.opaque(node, "pad axes computed at run time")
        axes = [int(a) % R for a in np.reshape(axes, -1)] if axes is not None else list(range(R))
        pads = [int(p) for p in np.reshape(pads, -1)]
        n = len(axes)
        k = axes.index(lay.axis) if lay.axis in axes else None
        if k is None or not (pads[k] or pads[k + n]):
            return self.passthrough(node, lay)
        mode = get_attr(node, "mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or min(pads[k], pads[k + n]) < 0:
            return self.opaque(node, "pads the channel axis with copies of channels or crops it")
        # channel padding (TFLite / BlazeFace residuals widen the skip with zero channels): the new
        # channels get ids of their own, removed with the channels they are added to
        new = [self.cg.new_ids(pads[k]), self.cg.new_ids(pads[k + n])]
        self.cg.edits.append(IndexEdit(node, "pad", new, {"k": k, "n": n}))
        self.out(node.output[0], lay.axis, np.concatenate([new[0], lay.ids, new[1]]), R)

    def r_Resize(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        if node.op_type == "Upsample" and self.opset < 9:
            scales, sizes, sizes_slot = get_attr(node, "scales"), None, None
        elif node.op_type == "Upsample" or self.opset < 11:
            scales, sizes, sizes_slot = self.const(node, 1), None, None
        else:
            scales, sizes, sizes_slot = self.const(node, 2), self.const(node, 3), 3
        given = [k for k in ((1,) if node.op_type == "Upsample" or self.opset < 11 else (2, 3))
                 if k < len(node.input) and node.input[k]]
        if any(self.const(node, k) is None for k in given):
            return self.opaque(node, "output size computed at run time")
        axes = get_attr(node, "axes")
        axes = [int(a) % R for a in axes] if axes is not None else list(range(R))
        if lay.axis not in axes:
            return self.passthrough(node, lay)
        k = axes.index(lay.axis)
        if sizes is not None and np.size(sizes):
            if int(np.reshape(sizes, -1)[k]) != len(lay.ids):
                return self.opaque(node, "resizes the channel axis")
            self.cg.edits.append(IndexEdit(node, "resize", [lay.ids], {"slot": sizes_slot, "k": k}))
        elif scales is not None and np.size(scales) and float(np.reshape(scales, -1)[k]) != 1.0:
            return self.opaque(node, "resizes the channel axis")
        self.passthrough(node, lay)

    r_Upsample = r_Resize

    def r_Gather(self, node: onnx.NodeProto) -> None:
        """Constant indices along another axis than the channels' (one part of a fused Q/K/V)."""
        lay, idx = self.L.get(node.input[0]), self.const(node, 1)
        R = None if lay is None else (lay.rank or self.rank(node.input[0]))
        if idx is None or R is None or node.input[1] in self.L:
            return self.opaque(node, "indexes tensors (not supported)")
        axis = int(get_attr(node, "axis", 0)) % R
        if axis == lay.axis:
            return self.opaque(node, "indexes the channel axis")
        k = np.ndim(idx)
        self.passthrough(node, lay, axis=lay.axis if lay.axis < axis else lay.axis - 1 + k, rank=R - 1 + k)

    def r_Softmax(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        axis = int(get_attr(node, "axis", 1 if self.opset < 13 else -1)) % R
        if (lay.axis >= axis) if self.opset < 13 else (lay.axis == axis):
            return self.opaque(node, "normalises across channels")
        self.passthrough(node, lay)

    r_LogSoftmax = r_Hardmax = r_Softmax

    def r_LayerNormalization(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        if lay.axis >= int(get_attr(node, "axis", -1)) % R:
            return self.opaque(node, "normalises across channels")
        self.passthrough(node, lay)

    def r_Transpose(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        perm = get_attr(node, "perm") or list(range(R))[::-1]
        self.passthrough(node, lay, axis=list(perm).index(lay.axis))

    def r_Flatten(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        s = self.shape(node.input[0])
        if s is None:
            return self.opaque(node, "input rank unknown")
        f = int(get_attr(node, "axis", 1)) % max(len(s), 1)
        a = lay.axis
        if a < f:
            if _prod(s[:f]) != s[a] or any(d is None for d in s[:f]):
                return self.opaque(node, "flattens the channel axis into the leading dimension")
            return self.passthrough(node, lay, axis=0, rank=2)  # e.g. [1, C] -> [C, 1] batch-one
        inner, outer = s[a + 1:], s[f:a]
        if any(not isinstance(d, int) or d <= 0 for d in (*inner, *outer)):
            return self.opaque(node, "needs static spatial sizes (pass --input-shape)")
        self.out(node.output[0], 1, np.tile(np.repeat(lay.ids, _prod(inner)), _prod(outer)), 2)

    def _axes(self, node: onnx.NodeProto, since: int):
        if self.opset >= since:
            return self.const(node, 1), len(node.input) > 1 and bool(node.input[1])
        return get_attr(node, "axes"), False

    def r_Unsqueeze(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        axes, given = self._axes(node, 13)
        R = lay.rank or self.rank(node.input[0])
        if axes is None or R is None:
            return self.opaque(node, "axes computed at run time")
        self.passthrough(node, lay, axis=moved_axis("Unsqueeze", lay.axis, R, axes), rank=R + np.size(axes))

    def r_Squeeze(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        axes, given = self._axes(node, 13)
        s = self.shape(node.input[0])
        R = lay.rank or (len(s) if s else None)
        if R is None or (axes is None and (given or s is None or None in s)):
            return self.opaque(node, "axes computed at run time")
        gone = np.reshape(axes, -1) if axes is not None else [k for k in range(R) if s[k] == 1]
        axis = moved_axis("Squeeze", lay.axis, R, gone)
        if axis is None:
            return self.opaque(node, "squeezes the channel axis")
        self.passthrough(node, lay, axis=axis, rank=R - len(gone))

    def r_reduce(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        axes, given = self._axes(node, 13 if node.op_type == "ReduceSum" else 18)
        if axes is None or not np.size(axes) or R is None:
            return self.opaque(node, "reduces over the channel axis (or over all axes)")
        axes = [int(x) % R for x in np.reshape(axes, -1)]
        if lay.axis in axes:
            return self.opaque(node, "reduces over the channel axis")
        if int(get_attr(node, "keepdims", 1)):
            return self.passthrough(node, lay)
        self.passthrough(node, lay, axis=lay.axis - sum(x < lay.axis for x in axes), rank=R - len(axes))
