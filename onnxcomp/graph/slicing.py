"""Channel slicing planned across a graph and applied once.

Structured pruning removes channels from many constant tensors at once (weights, biases,
BatchNorm statistics, broadcast constants, Split/Slice/Reshape parameters). :class:`SliceEdits`
collects every request first and then rewrites each stored tensor once: in place (same name, same
storage) when all its uses ask for the same slice, otherwise as a fresh initializer for each use;
uniform fills (ConstantOfShape) are resized, not materialised.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.graph.edit import ConstEval, NameScope, replace_value, set_input, uses


class SliceEdits:
    """Requests to keep a subset of a constant input along one or more axes, applied once."""

    def __init__(self) -> None:
        self._req: dict[tuple[int, int], tuple[onnx.NodeProto, dict[int, np.ndarray]]] = {}
        self.rewritten: set[str] = set()  # tensors whose shape changed under their own name

    def keep(self, node: onnx.NodeProto, slot: int, axis: int, mask: np.ndarray) -> None:
        """Keep ``mask`` (bool, one per index along ``axis``) of ``node.input[slot]``."""
        mask = np.asarray(mask, bool)
        if mask.all():
            return  # nothing removed along this axis: leave the tensor alone
        entry = self._req.setdefault((id(node), slot), (node, {}))[1]
        if axis in entry and not np.array_equal(entry[axis], mask):
            raise ValueError(f"conflicting channel masks for {node.name or node.op_type} input {slot}")
        entry[axis] = mask

    def __len__(self) -> int:
        return len(self._req)

    def commit(self, model: onnx.ModelProto, ev: ConstEval, scope: NameScope) -> list[str]:
        """Rewrite every requested tensor; returns the names of inputs that could not be read."""
        by_name: dict[str, list[tuple[onnx.NodeProto, int, dict[int, np.ndarray]]]] = defaultdict(list)
        for (_, slot), (node, axes) in self._req.items():
            by_name[node.input[slot]].append((node, slot, axes))
        users = uses(model.graph)
        failed = []
        for name, reqs in by_name.items():
            same = len(users[name]) == len(reqs) and name not in {o.name for o in model.graph.output} and \
                all(_same(reqs[0][2], r[2]) for r in reqs)
            fill = uniform_fill(ev, name)
            if same:
                self.rewritten.add(name)
            if fill is not None:  # ConstantOfShape: only the shape changes, never materialise it
                own = same and fill[2]
                for node, slot, axes in (reqs[:1] if own else reqs):
                    _new_fill(model, node, slot, fill, _sliced_shape(fill[1], axes), scope, name, own)
                continue
            value = ev.value(name)
            if value is None:
                failed.append(name)
                continue
            if same:
                replace_value(model, name, _sliced(value, reqs[0][2]))
                continue
            for node, slot, axes in reqs:
                set_input(model, node, slot, _sliced(value, axes), scope, f"{name}_pruned")
        return failed


SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Expand"}


def uniform_fill(ev: ConstEval, name: str) -> tuple[onnx.NodeProto, tuple[int, ...], bool] | None:
    """(ConstantOfShape node, shape of ``name``, whether ``name`` is that node's own output) when
    ``name`` is one repeated value: a ConstantOfShape output, or one seen through shape-only ops
    (Reshape, Flatten, ...: exporters put a classifier's weight behind a Reshape)."""
    node = ev.producer.get(name)
    if name in ev.inits or node is None or not ev.is_constant(name):
        return None
    if node.op_type == "ConstantOfShape":
        shape = ev.value(node.input[0])
        return None if shape is None else (node, tuple(int(d) for d in shape.reshape(-1)), True)
    if node.op_type in SHAPE_OPS and node.input and (inner := uniform_fill(ev, node.input[0])) is not None:
        value = ev.value(name)
        return None if value is None else (inner[0], tuple(value.shape), False)
    return None


def _new_fill(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, fill, shape: tuple[int, ...],
              scope: NameScope, name: str, in_place: bool) -> None:
    cos = fill[0]
    shape_name = scope(f"{name}_shape")
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), shape_name))
    if in_place:
        cos.input[0] = shape_name
        return
    new = helper.make_node("ConstantOfShape", [shape_name], [scope(f"{name}_pruned")], name=scope(f"{cos.name}_pruned"))
    new.attribute.extend(cos.attribute)
    g = model.graph
    g.node.insert(list(g.node).index(node), new)
    node.input[slot] = new.output[0]


def _sliced_shape(shape: tuple[int, ...], axes: dict[int, np.ndarray]) -> tuple[int, ...]:
    out = list(shape)
    for axis, mask in axes.items():
        if out[axis] != len(mask):
            raise ValueError(f"channel mask of length {len(mask)} for an axis of size {out[axis]}")
        out[axis] = int(np.count_nonzero(mask))
    return tuple(out)


def _same(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _sliced(value: np.ndarray, axes: dict[int, np.ndarray]) -> np.ndarray:
    for axis, mask in axes.items():
        if value.shape[axis] != len(mask):
            raise ValueError(f"channel mask of length {len(mask)} for an axis of size {value.shape[axis]}")
        value = np.compress(mask, value, axis=axis)
    return value
