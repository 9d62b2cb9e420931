"""Channel rules for shapes: Reshape (constant or computed targets) and the Shape vectors read at run time.

A computed target is read symbolically (:meth:`ReshapeRules._symbolic`: ints, and ``(tensor, axis)``
for dimensions read by Shape). A Shape that reads a pruned channel count freezes its channels
unless that count reaches nothing but Reshape targets, which accept it only where it lands on the
axis the same channels move to (then it stays right after pruning: transformers' ``view(..., -1,
d)`` heads, the dynamo exporter's batch x heads fold around Kᵀ); entries dropped by a constant
Gather/Slice (a sequence length read from a head-split tensor) are harmless.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.types import IndexEdit
from onnxcomp.graph.edit import get_attr


def _prod(xs) -> int:
    return int(np.prod(list(xs), dtype=np.int64)) if len(xs) else 1


class Product(tuple):
    """A shape entry read at run time times a constant: ``(entry, factor)`` (batch x heads)."""

    def __new__(cls, entry, factor: int):
        return super().__new__(cls, (entry, factor))


class Expr(tuple):
    """A shape entry computed at run time from others: the ``(tensor, axis)`` sizes it reads."""

    def __new__(cls, reads):
        return super().__new__(cls, tuple(sorted(set(reads))))


def _reads(e) -> list:
    """The ``(tensor, axis)`` sizes a symbolic shape entry reads."""
    if isinstance(e, int):
        return []
    if isinstance(e, Product):
        return _reads(e[0])
    if isinstance(e, Expr):
        return list(e)
    return [e]


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


class ReshapeRules:
    """Mixin of :class:`onnxcomp.graph.channels.rules.Walker`: Reshape and Shape."""

    def r_Reshape(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        target = get_attr(node, "shape") if self.opset < 5 else self.const(node, 1)
        entries = [int(x) for x in np.reshape(target, -1)] if target is not None else self._symbolic(node.input[1])
        if entries is None:
            return self.opaque(node, "target shape computed at run time")
        s_in, s_out = self.shape(node.input[0]), self.shape(node.output[0])
        if not _static(s_in) or not _static(s_out):
            return self.opaque(node, "needs static shapes (pass --input-shape)")
        moving, other = self._count_reads(node, entries, lay)
        a, before = lay.axis, _prod(s_in[:lay.axis])
        for b in range(len(s_out)):
            if _prod(s_out[:b]) != before or s_out[b] % s_in[a] or (entries[b] == 0 and b != a):
                continue
            factor = s_out[b] // s_in[a]
            if any(_prod(s_in[a + 1:j]) == factor for j in range(a + 1, len(s_in) + 1)):
                if moving and (moving != [b] or factor != 1 or isinstance(entries[b], (Product, Expr))):
                    return self.opaque(node, "target shape reads a channel count at run time")
                if b in other:  # the width of a frozen tensor: written as the kept count instead
                    if not self.edit_count(node, target, b, lay.ids, factor, replace=True):
                        return None
                elif isinstance(entries[b], tuple) and not moving:  # e.g. the batch, or an untracked size
                    return self.opaque(node, "target shape reads a size that would not follow the channels")
                elif isinstance(entries[b], int) and entries[b] > 0 and not self.edit_count(node, target, b, lay.ids, factor):
                    return None
                return self.out(node.output[0], b, np.repeat(lay.ids, factor), len(s_out))
        if moving:  # a count read at run time lands where these channels do not: it would not follow them
            return self.opaque(node, "target shape reads a channel count at run time")
        if not self.split_groups(node, lay, entries, s_in, s_out, other):
            self.opaque(node, "reshapes the channel axis (channel shuffle / regrouping is not supported)")

    def _count_reads(self, node: onnx.NodeProto, entries: list, lay) -> tuple[list, set]:
        """(entries that read these channels' own count, entries read at run time whose value the
        model fixes: another tensor's channel count, whose channels are then frozen, or a size that
        shape inference finds static without any input size). A fixed entry where the channels
        land may be written as their kept count."""
        moving, other = set(), set()
        for k, e in enumerate(entries):
            reads, fixed = _reads(e), True
            for t, ax in reads:
                if t in self.L and self.L[t].axis == ax:
                    if len(self.L[t].ids) == len(lay.ids) and np.array_equal(self.L[t].ids, lay.ids):
                        moving.add(k)
                        continue
                    self.cg.freeze(self.L[t].ids, f"{self.label(node)}: its width sizes a reshape at run time")
                elif not self._model_fixed(t, ax):
                    fixed = False
            if reads and fixed and k not in moving:
                other.add(k)
        return sorted(moving), other

    def _model_fixed(self, name: str, axis: int) -> bool:
        """Whether dimension ``axis`` of ``name`` is static whatever the input sizes."""
        if self.free_shapes is None:
            from onnxcomp.graph.shapes import infer_shapes

            self.free_shapes = infer_shapes(self.cg.model, None, batch_one=False)
        s = self.free_shapes.get(name)
        return s is not None and axis < len(s) and isinstance(s[axis], int) and s[axis] > 0

    def edit_count(self, node: onnx.NodeProto, target, b: int, ids: np.ndarray, factor: int,
                   replace: bool = False) -> bool:
        """Record the rewrite of entry ``b`` of ``node``'s target shape (the kept count of ``ids``
        times ``factor``): a constant target, or the constant that a computed one is built from
        (rewritten in copies of the nodes between it and this Reshape, for this Reshape alone:
        exporters share one shape between layers). False (and the channels frozen) when it
        cannot be rewritten."""
        info = {"entry": b, "factor": factor}
        if target is None:
            src = self._literal_source(node.input[1], b, replace=replace)
            if src is None:
                self.opaque(node, "computed target shape with a literal channel count")
                return False
            info.update(path=src[0], entry=src[1], computed=True, replace=src[2])
        self.cg.edits.append(IndexEdit(node, "reshape", [ids], info))
        return True

    def _literal_source(self, name: str, b: int, depth: int = 0, replace: bool = False) -> tuple | None:
        """(input slots from the producer of ``name`` down to the constant, position in it, whether
        the last slot is a one-entry piece read at run time to be replaced by a constant): where
        entry ``b`` of the computed shape ``name`` is written (a Concat piece; the constant factor
        of a Mul, for a count multiplied by the batch)."""
        node = self.ev.producer.get(name)
        if node is None or depth > 12:
            return None
        if node.op_type in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"):
            inner = self._symbolic(node.input[0])
            if inner is None or (node.op_type != "Cast" and node.op_type != "Identity" and len(inner) != 1):
                return None
            sub = self._literal_source(node.input[0], b, depth + 1) if self.ev.value(node.input[0]) is None \
                else ([], b, False)
            return None if sub is None else ([0, *sub[0]], sub[1], sub[2])
        if node.op_type == "Mul" and b == 0:
            k = next((j for j in (0, 1) if self.ev.value(node.input[j]) is not None), None)
            return None if k is None or np.size(self.ev.value(node.input[k])) != 1 else ([k], 0, False)
        if node.op_type != "Concat":
            return None
        start = 0
        for slot, i in enumerate(node.input):
            part = self._symbolic(i)
            if part is None:
                return None
            if start <= b < start + len(part):
                if self.ev.value(i) is not None:
                    return [slot], b - start, False
                nested = getattr(self.ev.producer.get(i), "op_type", None) == "Concat"
                if replace and not nested:  # the piece itself becomes a constant (never a deeper one)
                    return ([slot], 0, True) if len(part) == 1 else None
                sub = self._literal_source(i, b - start, depth + 1, replace)
                return None if sub is None else ([slot, *sub[0]], sub[1], sub[2])
            start += len(part)
        return None

    def _symbolic(self, name: str, depth: int = 0) -> list | None:
        """A 1-D int tensor built from Shape/Gather/Concat/...: ints and (tensor, axis) entries."""
        value = self.ev.value(name)
        if value is not None:
            return [int(x) for x in np.reshape(value, -1)]
        node = self.ev.producer.get(name)
        if node is None or depth > 12:
            return None
        op = node.op_type
        if op == "Shape":
            R = self.rank(node.input[0])
            if R is None:
                return None
            return [(node.input[0], k) for k in range(R)[slice(int(get_attr(node, "start", 0)), get_attr(node, "end"))]]
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            return self._symbolic(node.input[0], depth + 1)
        if op == "Reshape":  # of a one-entry vector (a scalar made [1])
            inner = self._symbolic(node.input[0], depth + 1)
            return inner if inner is not None and len(inner) == 1 else None
        if op in ("Add", "Sub", "Mul", "Div"):  # a size times a constant (batch x heads), or arithmetic
            args = [self._symbolic(i, depth + 1) for i in node.input[:2]]
            if any(a is None or len(a) != 1 for a in args):
                return None
            (x,), (y,) = args
            if isinstance(x, int) and isinstance(y, int):
                return [{"Add": x + y, "Sub": x - y, "Mul": x * y}.get(op, int(x / y) if y else 0)]
            if op == "Mul" and isinstance(y, int) and isinstance(x, tuple) and not isinstance(x, (Product, Expr)):
                return [Product(x, y)]
            if op == "Mul" and isinstance(x, int) and isinstance(y, tuple) and not isinstance(y, (Product, Expr)):
                return [Product(y, x)]
            return [Expr(_reads(x) + _reads(y))]
        if op == "Concat":
            parts = [self._symbolic(i, depth + 1) for i in node.input]
            return None if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Slice" and self.opset >= 10 and len(node.input) >= 3:
            data = self._symbolic(node.input[0], depth + 1)
            bounds = [self.ev.value(i) if i else None for i in node.input[1:5]] + [None] * (5 - len(node.input))
            if data is None or any(b is None for b in bounds[:2]) or any(
                    node.input[j] and bounds[j - 1] is None for j in range(3, len(node.input))):
                return None
            axes, steps = bounds[2], bounds[3]
            if axes is not None and [int(x) for x in np.reshape(axes, -1)] not in ([0], [-1]):  # a 1-D vector
                return None
            step = 1 if steps is None else int(np.reshape(steps, -1)[0])
            return data[int(np.reshape(bounds[0], -1)[0]):int(np.reshape(bounds[1], -1)[0]):step]
        if op == "Gather" and int(get_attr(node, "axis", 0)) == 0:
            data, idx = self._symbolic(node.input[0], depth + 1), self.ev.value(node.input[1])
            return None if data is None or idx is None else [data[int(i)] for i in np.reshape(idx, -1)]
        return None

    def r_Shape(self, node: onnx.NodeProto) -> None:
        lay = self._data(node)
        R = lay.rank or self.rank(node.input[0])
        start, end = int(get_attr(node, "start", 0)), get_attr(node, "end")
        dims = list(range(R)[slice(start, end)]) if R is not None else None
        ends: list = []
        if dims is not None and lay.axis not in dims:
            return
        if dims is not None and self._reads_other_dims(node.output[0], dims.index(lay.axis), tensor=node.input[0],
                                                       ends=ends):
            # those Reshapes / Slices must take the count in (checked after the walk: one whose
            # data carries no channels is never visited, and would keep the old count)
            self.deferred.append((node, lay.ids, ends))
            return
        self.opaque(node, "reads the channel count at run time")

    def readers(self, name: str) -> list:
        """The nodes that read tensor ``name``."""
        return self.uses.get(name, [])

    def _reads_other_dims(self, name: str, k: int | None, depth: int = 0, tensor: str | None = None,
                          ends: list | None = None) -> bool:
        """Whether entry ``k`` of the shape vector ``name`` (None: any entry) of ``tensor`` reaches
        nothing but Reshape targets (which check the counts they read) and the bounds of Slices of
        ``tensor`` itself (checked to cut it evenly), or is dropped by a Gather/Slice with constant
        positions (e.g. the sequence length read from a head-split tensor)."""
        readers = self.readers(name)
        if not readers or depth > 12 or any(o.name == name for o in self.cg.model.graph.output):
            return False
        n_dims = self.shape(name)
        for r in readers:
            if r.op_type == "Reshape" and r.input[0] != name or (
                    r.op_type == "Slice" and tensor is not None and r.input[0] == tensor and name in r.input[1:3]):
                if ends is not None:  # a target (the Reshape rule checks it) or a chunk of the tensor
                    ends.append(r)
                continue
            picked = None
            if r.op_type == "Gather" and r.input[0] == name and int(get_attr(r, "axis", 0)) == 0 and n_dims:
                idx = self.const(r, 1)
                if idx is None:
                    return False
                picked = [int(i) % n_dims[0] for i in np.reshape(idx, -1)]
            elif r.op_type == "Slice" and r.input[0] == name and self.opset >= 10 and n_dims:
                bounds = [self.const(r, j) for j in (1, 2, 3, 4)]
                if bounds[0] is None or bounds[1] is None or any(
                        j < len(r.input) and r.input[j] and bounds[j - 1] is None for j in (3, 4)):
                    return False
                step = 1 if bounds[3] is None else int(np.reshape(bounds[3], -1)[0])
                picked = list(range(n_dims[0])[slice(int(np.reshape(bounds[0], -1)[0]),
                                                     int(np.reshape(bounds[1], -1)[0]), step)])
            elif r.op_type not in ("Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Add", "Sub", "Mul", "Div"):
                return False
            if picked is not None and k is not None and k not in picked:
                continue
            if not all(self._reads_other_dims(o, None, depth + 1, tensor, ends) for o in r.output):
                return False
        return True
