"""Index-mapping rules for coupled-channel discovery: ops that move, cut or regroup the channel axis.

Concat / Split / Slice map index offsets, Flatten maps each channel to a run of positions,
Transpose / Squeeze / Unsqueeze / Reduce move the axis, Pad and Resize pass channels when they
leave the channel axis alone, Softmax and LayerNormalization when they normalise another axis
(Reshape and Shape: :mod:`onnxcomp.graph.channels.reshape`). :func:`apply_index_edit` rewrites the attribute or
constant input that counts channels (Split sizes, Slice bounds, Reshape target, Resize sizes,
depthwise ``group``) once the kept channels are known.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.io import default_opset
from onnxcomp.graph.channels.types import IndexEdit
from onnxcomp.graph.edit import ConstEval, get_attr


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
        if lay.axis in axes and (pads[axes.index(lay.axis)] or pads[axes.index(lay.axis) + n]):
            return self.opaque(node, "pads the channel axis")
        self.passthrough(node, lay)

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


def apply_index_edit(model: onnx.ModelProto, e: IndexEdit, masks: list[np.ndarray], ev: ConstEval,
                     scope) -> None:
    """Rewrite the attribute / constant input of ``e.node`` that counts channels (a computed
    Reshape target: in a copy of its Concat, read by that Reshape alone)."""
    from onnxcomp.graph.edit import del_attr, set_attr, set_input

    node, opset = e.node, default_opset(model)
    base = node.name or node.op_type
    if e.kind == "group":
        set_attr(node, "group", int(masks[0].sum()))
    elif e.kind == "split":
        sizes = np.array([int(m.sum()) for m in masks], np.int64)
        if opset >= 13:
            del_attr(node, "num_outputs")
            set_input(model, node, 1, sizes, scope, f"{base}_split")
        else:
            set_attr(node, "split", [int(x) for x in sizes])
    elif e.kind == "slice":
        m, k = masks[0], e.info["k"]
        start = int(m[:e.info["start"]].sum())
        end = start + int(m[e.info["start"]:e.info["end"]].sum())
        if opset < 10:
            for name, v in (("starts", start), ("ends", end)):
                vals = list(get_attr(node, name))
                vals[k] = v
                set_attr(node, name, vals)
        else:
            for slot, v in ((1, start), (2, end)):
                vals = np.array(ev.value(node.input[slot])).reshape(-1).copy()
                vals[k] = v
                set_input(model, node, slot, vals, scope, f"{base}_{'starts' if slot == 1 else 'ends'}")
    elif e.kind == "reshape":
        if opset < 5:
            raise ValueError("Reshape-1 with a channel count in its attribute")
        owner, slot, copies = node, 1, []
        if e.info.get("computed"):  # a computed target: this Reshape reads copies of the nodes from
            producer = {o: n for n in model.graph.node for o in n.output}  # it down to the constant
            for nxt in e.info["path"]:
                copy = onnx.NodeProto()
                copy.CopyFrom(producer[owner.input[slot]])
                copy.name, copy.output[0] = scope(f"{base}_target"), scope(f"{base}_target")
                owner.input[slot] = copy.output[0]
                owner, slot = copy, nxt
                copies.append(copy)
        # a piece read at run time (a frozen tensor's width) becomes the constant [kept count]
        old = np.zeros(1, np.int64) if e.info.get("replace") else np.array(ev.value(owner.input[slot]))
        vals = old.reshape(-1).copy()
        vals[e.info["entry"]] = int(masks[0].sum()) * e.info["factor"]
        set_input(model, owner, slot, vals.reshape(old.shape), scope, f"{base}_shape")
        at = next(k for k, n in enumerate(model.graph.node) if n is node)
        for copy in copies:  # inserted as copies, before their reader (other nodes keep their identity)
            model.graph.node.insert(at, copy)
    elif e.kind == "resize":
        slot = e.info["slot"]
        vals = np.array(ev.value(node.input[slot])).reshape(-1).copy()
        vals[e.info["k"]] = int(masks[0].sum())
        set_input(model, node, slot, vals, scope, f"{base}_sizes")
    else:
        raise ValueError(f"unknown index edit {e.kind}")
