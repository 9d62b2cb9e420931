"""Channel rule for Slices whose bounds are computed from the tensor's own channel count.

``x.chunk(n, dim=1)`` through the legacy exporter reads ``C`` with Shape and cuts ``[p*C/n,
(p+1)*C/n)`` with Slice bounds computed at run time (YOLOv8's C2f / C3k2 blocks). After pruning
the bounds follow the new count by themselves, provided every part keeps as many channels: the
parts are tied channel by channel (a unit takes one channel from each part). The bounds are
checked by evaluating their small integer graph at the current count and at other multiples of
``n``; anything else there (another tensor's Shape, an op outside integer arithmetic) freezes.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.types import Layout
from onnxcomp.graph.edit import get_attr

INT_OPS = ("Add", "Sub", "Mul", "Div", "Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Concat", "Gather",
           "Slice", "Shape")


class ChunkRules:
    """Mixin of :class:`onnxcomp.graph.channels.rules.Walker`: Slices with run-time bounds."""

    def slice_chunk(self, node: onnx.NodeProto, lay: Layout, R: int) -> bool:
        """Handle a Slice of ``lay`` whose bounds are computed at run time; False: not an even chunk."""
        axes = self.const(node, 3) if len(node.input) > 3 and node.input[3] else np.arange(R)
        steps = self.const(node, 4) if len(node.input) > 4 and node.input[4] else None
        if axes is None or (len(node.input) > 4 and node.input[4] and steps is None):
            return False
        axes = [int(a) % R for a in np.reshape(axes, -1)]
        if lay.axis not in axes:  # computed bounds on other axes: channels pass
            self.passthrough(node, lay)
            return True
        k, C = axes.index(lay.axis), len(lay.ids)
        if steps is not None and int(np.reshape(steps, -1)[k]) != 1:
            return False
        at = {}
        for c in sorted({C, *(C // m * j for m in range(1, C + 1) if C % m == 0 for j in (1, 2, 3))}):
            bounds = [self._int_eval(node.input[s], (node.input[0], lay.axis, c)) for s in (1, 2)]
            if any(b is None or b.size <= k for b in bounds):
                return False
            at[c] = slice(int(np.reshape(bounds[0], -1)[k]), int(np.reshape(bounds[1], -1)[k])).indices(c)[:2]
        start, end = at[C]
        width = end - start
        if width <= 0 or C % width or start % width:
            return False
        n, part = C // width, start // width
        if any(at[c] != (part * c // n, (part + 1) * c // n) for c in at if c % n == 0):
            return False
        ids = lay.ids.reshape(n, width)
        for q in range(1, n):
            self.cg.tie(ids[0], ids[q], f"{self.label(node)}: cuts the channels into {n} equal parts at run time")
        self.out(node.output[0], lay.axis, ids[part], R)
        return True

    def _int_eval(self, name: str, sub: tuple, depth: int = 0) -> np.ndarray | None:
        """The integer value of ``name`` with dimension ``sub = (tensor, axis, size)`` replaced;
        None when it reads any other tensor's shape or leaves integer arithmetic."""
        value = self.ev.value(name)
        if value is not None:
            return np.asarray(value)
        node = self.ev.producer.get(name)
        if node is None or depth > 16 or node.op_type not in INT_OPS:
            return None
        op = node.op_type
        if op == "Shape":
            dims = self.shape(node.input[0])
            if node.input[0] != sub[0] or dims is None or any(not isinstance(d, int) for d in dims):
                return None
            dims = list(dims)
            dims[sub[1]] = sub[2]
            return np.array(dims[slice(int(get_attr(node, "start", 0)), get_attr(node, "end"))], np.int64)
        args = [self._int_eval(i, sub, depth + 1) if i else None for i in node.input]
        if any(a is None for a, i in zip(args, node.input) if i):
            return None
        a = args[0]
        if op in ("Cast", "Identity"):
            return a
        if op in ("Unsqueeze", "Squeeze", "Reshape"):
            return np.reshape(a, -1) if op != "Squeeze" else np.reshape(a, ())
        if op == "Concat":
            return np.concatenate([np.reshape(x, -1) for x in args])
        if op == "Gather":
            return np.take(a, args[1], axis=int(get_attr(node, "axis", 0))) if a.ndim else None
        if op == "Slice":
            return np.reshape(a, -1)[int(np.reshape(args[1], -1)[0]):int(np.reshape(args[2], -1)[0])]
        b = args[1]
        if op == "Div":
            return None if np.any(b == 0) else np.trunc(np.divide(a, b)).astype(np.int64)
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](a, b)
