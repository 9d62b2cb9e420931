"""Static shapes of every tensor and the multiply-accumulates of each compute node.

Shapes come from ONNX shape inference (with data propagation) on a weight-free copy of the graph,
with the user's input shapes substituted. A dynamic leading batch dimension counts as 1 (MACs are
per sample); any other dynamic dimension stays unknown and so do the MACs that depend on it.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import shape_inference

from onnxcomp.errors import ConfigError
from onnxcomp.graph import einsum

SKELETON_MIN_ELEMENTS = 64


def parse_input_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` strings (the --input-shape option) into a dict; one string may
    name several inputs, split by commas or spaces (``input_ids=1x128,attention_mask=1x128``:
    the name of the first took the rest before)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in (part for given in specs or () for part in re.split(r"[,\s]+(?=[^,\s=]+=)", given.strip())):
        name, sep, dims = spec.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise ConfigError(f"bad --input-shape {spec!r}",
                              "write NAME=DIMS with positive integers, e.g. input=1x3x224x224") from None
        shapes[name] = shape
    return shapes


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[list, int]]:
    """Real graph inputs (not initializers) -> (dims with str for symbolic/None, onnx elem type)."""
    inits = {t.name for t in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs[vi.name] = (dims, tt.elem_type)
    return specs


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without large float weight data (shape inference needs only their dims)."""
    skel = onnx.ModelProto()
    skel.CopyFrom(model) if model.ByteSize() < 64 * 2**20 else _copy_light(model, skel)
    for t in skel.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and \
                int(np.prod(t.dims)) >= SKELETON_MIN_ELEMENTS:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("int32_data")
    return skel


def _copy_light(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """Copy a big model field by field, dropping float data before it is duplicated."""
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    for t in model.graph.initializer:
        c = g.initializer.add()
        c.name, c.data_type = t.name, t.data_type
        c.dims.extend(t.dims)
        if not (t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
                and int(np.prod(t.dims)) >= SKELETON_MIN_ELEMENTS):
            c.CopyFrom(t)


def infer_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 batch_one: bool = True) -> dict[str, tuple]:
    """Tensor name -> shape (ints, or None for unknown dims) for every tensor shape inference finds."""
    input_shapes = dict(input_shapes or {})
    specs = input_specs(model)
    unknown = [n for n in input_shapes if n not in specs]
    if unknown:
        raise ConfigError(f"--input-shape names {unknown[0]!r}, which is not a model input",
                          f"the inputs are: {', '.join(specs) or '(none)'}")
    skel = _skeleton(model)
    for vi in skel.graph.input:
        if vi.name not in specs:
            continue
        dims = vi.type.tensor_type.shape.dim
        if vi.name in input_shapes:
            shape = input_shapes[vi.name]
            if len(dims) and len(shape) != len(dims):
                raise ConfigError(f"--input-shape {vi.name} has {len(shape)} dims, the model input has "
                                  f"{len(dims)}", "give one size per dimension")
            del dims[:]
            for s in shape:
                dims.add().dim_value = s
        elif batch_one and len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    skel.graph.ClearField("value_info")
    try:
        inferred = shape_inference.infer_shapes(skel, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: fall back to what is declared
        inferred = skel
    shapes: dict[str, tuple] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple], weight_shape: tuple | None,
              group: int = 1) -> int | None:
    """Multiply-accumulates of one compute node at the inferred shapes (None when unknown)."""
    op = node.op_type
    out = shapes.get(node.output[0])
    if op == "Conv":
        if not _known(out) or weight_shape is None:
            return None
        # out elements x (C_in / groups) x kernel area
        return int(np.prod(out, dtype=np.int64) * int(np.prod(weight_shape[1:], dtype=np.int64)))
    if op == "ConvTranspose":
        x = shapes.get(node.input[0])
        if not _known(x) or weight_shape is None:
            return None
        # every input element is scattered over (C_out / groups) x kernel area outputs
        return int(np.prod(x, dtype=np.int64) * int(np.prod(weight_shape[1:], dtype=np.int64)))
    if op in ("Gemm", "MatMul"):
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not _known(out):
            return None
        if op == "Gemm":
            if not _known(a):
                return None
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
        else:
            if _known(a) and len(a) >= 1:
                k = a[-1]
            elif _known(b) and len(b) >= 2:
                k = b[-2]
            elif _known(b):
                k = b[0]
            else:
                return None
        return int(np.prod(out, dtype=np.int64)) * int(k)
    if op in ("LSTM", "GRU", "RNN"):  # Y holds every step's hidden state: each took gates x (I + H) per unit
        x = shapes.get(node.input[0])
        if not _known(out) or not _known(x):
            return None
        return int(np.prod(out, dtype=np.int64)) * {"LSTM": 4, "GRU": 3, "RNN": 1}[op] * (int(x[-1]) + int(out[-1]))
    return einsum.macs(node, shapes) if op == "Einsum" else None


def same_pads(in_hw: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
              dilations: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """auto_pad SAME_UPPER / SAME_LOWER as explicit pads (all begins, then all ends): the output is
    ceil(input / stride) long, the odd pad at the end (UPPER) or the beginning (LOWER)."""
    begin, end = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        first = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first)
    return tuple(begin + end)



def conv_attrs(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(kernel, strides, pads, dilations) of a conv with a ``weight_shape`` kernel, defaults filled
    in, pads in ONNX order (every begin, then every end). A 1-D conv's come as the height-1 2-D conv
    it equals (``(1, k)``, ``(1, s)``, ``(0, p0, 0, p1)``, ``(1, d)``), the form the 2-D statistics
    and rewrites take."""
    dims = len(weight_shape) - 2
    got = {a.name: list(a.ints) for a in node.attribute if a.name in ("strides", "pads", "dilations")}
    strides, pads = got.get("strides", [1] * dims), got.get("pads", [0] * (2 * dims))
    dilations = got.get("dilations", [1] * dims)
    if dims == 1:
        return (1, weight_shape[2]), (1, strides[0]), (0, pads[0], 0, pads[1]), (1, dilations[0])
    return tuple(weight_shape[2:]), tuple(strides), tuple(pads), tuple(dilations)
