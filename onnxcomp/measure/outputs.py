"""How far a model's outputs moved: relative error, with an output that joins several heads judged
head by head.

A detector often writes one output that concatenates quantities in different units, such as
YOLOv8's ``[N, 4 + classes, anchors]``: box coordinates in pixels next to class probabilities in
[0, 1]. A relative error or cosine over the whole tensor then sees only the boxes: a YOLOv8n
pruned to detection F1 0.76 against the original reported cosine 0.9995. So where a graph output is
a Concat (through Transpose, Identity, Cast and elementwise unary ops) along a non-batch axis,
each slice along that axis (a box coordinate, a class) is measured against its own energy (at
least its part's median slice energy), and the output's error is the mean over the slices
(judging each part whole, boxes and all scores, lets the frequent classes speak for the rare
ones). ``benchmarks/detector.py`` measures what this changes. Where that Concat joins the strides
of a YOLOX- or YOLOv5-style head instead (``[N, anchors, 4 + 1 + classes]``: each stride's box,
objectness and class maps concatenated along channels or the last axis, then reshaped), the axis
of the inner Concat, the fields, is the one judged: a ddddocr detector pruned to F1 0.59 against the original
read cosine 0.994 over its anchors. Any other output is measured whole.
"""
from __future__ import annotations

import numpy as np
import onnx

# single-input ops whose output keeps the layout of the Concat's parts element for element
PASS_THROUGH = frozenset({"Identity", "Cast", "Sigmoid", "Tanh", "Relu", "Exp", "Abs", "Neg", "Clip",
                          "HardSigmoid", "LeakyRelu", "Softplus", "Sqrt"})


# the output of these is a feature vector, not class scores: a norm of its input, a tanh (BERT's pooler)
FEATURE_OPS = frozenset({"LpNormalization", "LayerNormalization", "Tanh", "SimplifiedLayerNormalization",
                         "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"})
_SHAPE_ONLY = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice"})


def feature_outputs(model: onnx.ModelProto) -> list[bool]:
    """Per graph output: whether it is a feature vector (an embedding) rather than class scores, so
    that no top-1 agreement over its dimensions is reported as its headline.

    Looking back from the output through reshapes, casts, row picks (a CLS token) and affine steps by
    constants (a LayerNorm's gamma and beta, a temperature), it is a feature vector when it comes
    from a normalization (``LpNormalization``, ``LayerNormalization`` and onnxruntime's fused
    ones), a ``Tanh``, or a division by a computed tensor (an L2 norm; the token count of mean
    pooling) or a product with a computed ``Reciprocal``, unless the numerator is an ``Exp`` (a
    softmax written out) or a constant (``1 / (1 + exp(-x))``). Logits, softmax and sigmoid
    outputs are not. A sentence-embedding transformer's pooled and normalized ``[N, 384]`` read
    "top-1 agreement 78 %" before: an argmax over embedding dimensions, which means nothing.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    fixed = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}

    def source(name: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        while node is not None and node.op_type in _SHAPE_ONLY and node.input:
            if any(x and x not in fixed for x in node.input[1:]):  # an index or a shape read from data
                return node
            node = producer.get(node.input[0])
        return node

    def feature(name: str) -> bool:
        for _ in range(64):
            node = source(name)
            if node is None:
                return False
            if node.op_type in FEATURE_OPS:
                return True
            if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
                return False
            left, right = (x in fixed for x in node.input)
            if right or (left and node.op_type in ("Add", "Mul")):  # an affine step by a constant
                name = node.input[0] if right else node.input[1]
                continue
            if left:  # a constant over a computed tensor: a sigmoid written out
                return False
            if node.op_type == "Div":  # over a norm or a count, unless a softmax written out
                top = source(node.input[0])
                return top is None or top.op_type != "Exp"
            if node.op_type == "Mul":
                return any((n := source(x)) is not None and n.op_type == "Reciprocal" for x in node.input)
            return False
        return False

    return [feature(o.name) for o in graph.output]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def output_parts(model: onnx.ModelProto) -> list[tuple[int, tuple[int | None, ...]] | None]:
    """Per graph output (in order): (the axis its parts were concatenated along, each part's
    extent on it), or None (measured whole).

    The axis is negative when the output's rank is unknown here (the Concat's own negative axis);
    an extent is None where shape inference cannot tell it (:func:`slice_floor` fills in one).
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    found: list = []
    for out in graph.output:
        perms = []
        node = producer.get(out.name)
        while node is not None and (node.op_type in PASS_THROUGH or node.op_type == "Transpose"):
            if node.op_type == "Transpose":
                perm = _attr(node, "perm")
                if perm is None:
                    break
                perms.append(list(perm))
            node = producer.get(node.input[0]) if node.input and node.input[0] else None
        ok = node is not None and node.op_type == "Concat" and len(node.input) >= 2
        found.append((node, perms) if ok else None)
    if not any(found):
        return [None] * len(found)
    from onnxcomp.graph.shapes import infer_shapes

    shapes = infer_shapes(model)
    parts: list = []
    for item in found:
        if item is None:
            parts.append(None)
            continue
        node, perms = item
        own = int(_attr(node, "axis", 0))
        inner = _fields(node, own, producer, shapes)
        if inner is not None:
            node, own, axis = inner
        else:
            axis = own
        if perms:
            axis = axis + len(perms[0]) if axis < 0 else axis
            for perm in reversed(perms):  # from the Concat toward the graph output
                axis = perm.index(axis) if 0 <= axis < len(perm) else 0
        parts.append(None if axis == 0 else (axis, _sizes(node, own, shapes)))  # never along the batch
    return parts


def _sizes(node: onnx.NodeProto, axis: int, shapes: dict) -> tuple[int | None, ...]:
    sizes = []
    for i in node.input:
        d = (s[axis] if (s := shapes.get(i)) and -len(s) <= axis < len(s) else None)
        sizes.append(d if isinstance(d, int) and d > 0 else None)
    return tuple(sizes)


def _fields(outer: onnx.NodeProto, axis: int, producer: dict, shapes: dict) -> tuple | None:
    """(inner Concat, its axis, that axis at the outer Concat's output) when the outer Concat's first
    input is an inner Concat along another non-batch axis, reached through Reshapes that keep that axis
    (:func:`_through_reshape`), Transposes and pass-through ops (YOLOX, YOLOv5: fields joined per
    stride, then strides)."""
    rank = len(shapes.get(outer.output[0]) or ())
    if not rank:
        return None
    name, steps = outer.input[0], []
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "Concat" and len(node.input) >= 2:
            break
        if node.op_type == "Transpose":
            perm = _attr(node, "perm")
            if perm is None:
                return None
            steps.append(list(perm))
        elif node.op_type in ("Reshape", "Flatten"):
            steps.append(node)
        elif node.op_type not in PASS_THROUGH:
            return None
        name = node.input[0]
    else:
        return None
    shape = shapes.get(node.output[0]) or ()
    own = int(_attr(node, "axis", 0))
    at = own + len(shape) if own < 0 else own
    if not 0 < at < len(shape):
        return None
    for step in reversed(steps):  # from the inner Concat toward the outer one
        if isinstance(step, list):
            at = step.index(at) if at < len(step) else -1
        else:
            at = _through_reshape(shapes.get(step.input[0]), shapes.get(step.output[0]), at)
        if at <= 0:
            return None
    norm = axis + rank if axis < 0 else axis
    return (node, own, at) if at != norm and at < rank else None


def _through_reshape(before, after, at: int) -> int:
    """Where axis ``at`` of a Reshape's input lands in its output: the same index when the dims up to
    it are kept (YOLOX: ``[N, 6, H, W] -> [N, 6, H*W]``), the same place from the end when the dims
    from it on are kept (YOLOv5: ``[N, 3, H, W, 85] -> [N, 3*H*W, 85]``), else -1 (it moved)."""
    if not before or not after:
        return -1
    if tuple(before[:at + 1]) == tuple(after[:at + 1]) and all(isinstance(d, int) for d in before[1:at + 1]):
        return at
    tail = len(before) - at
    if tail <= len(after) - 1 and tuple(before[at:]) == tuple(after[-tail:]) and all(
            isinstance(d, int) for d in before[at:]):
        return len(after) - tail
    return -1


def _extents(total: int, sizes) -> list[int] | None:
    """The parts' extents with at most one unknown filled in from ``total``; None if they cannot be."""
    unknown = [i for i, s in enumerate(sizes) if s is None]
    known = sum(s for s in sizes if s is not None)
    if len(unknown) > 1 or known > total or (not unknown and known != total):
        return None
    out = list(sizes)
    if unknown:
        out[unknown[0]] = total - known
    return out if all(s > 0 for s in out) else None


def slice_floor(energy: np.ndarray, sizes) -> np.ndarray:
    """Per slice, the energy it is judged against at least: the median slice energy of its own
    part (a class that never fires is not judged on noise, and a lone score row beside four box
    rows still counts), or of all slices when the parts' extents are unknown."""
    ext = _extents(len(energy), sizes) if sizes else None
    if ext is None:
        return np.full(len(energy), np.median(energy))
    return np.concatenate([np.full(len(p), np.median(p)) for p in np.split(energy, np.cumsum(ext)[:-1])])


def slice_axis(a: np.ndarray, parts) -> int | None:
    """The axis of ``a`` to judge slice by slice (``parts`` from :func:`output_parts`), or None."""
    if parts is None or np.ndim(a) < 2:
        return None
    axis = parts[0] + a.ndim if parts[0] < 0 else parts[0]
    return axis if 0 < axis < a.ndim and a.shape[axis] > 1 else None


def output_error(a: np.ndarray, b: np.ndarray, parts=None) -> float:
    """``||b - a||² / ||a||²``; with ``parts`` (a concatenated output, from :func:`output_parts`),
    the mean over the slices along its axis of each slice's error over its energy (at least
    :func:`slice_floor`). Outputs of different shapes (sized by the data in a way
    :mod:`onnxcomp.graph.tail` does not cut off) count as moved by their whole size: 1."""
    if np.shape(a) != np.shape(b):
        return 1.0
    a = np.asarray(a, np.float64)
    d = np.asarray(b, np.float64) - a
    axis = slice_axis(a, parts)
    if axis is not None:
        rest = tuple(i for i in range(a.ndim) if i != axis)
        energy, err = (a * a).sum(rest), (d * d).sum(rest)
        floor = np.maximum(energy, slice_floor(energy, parts[1]))
        if (floor > 0).all():
            return float(np.mean(err / floor))
    return float((d * d).sum() / max(float((a * a).sum()), 1e-30))
