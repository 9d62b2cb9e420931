"""Find every weight of a model, wherever the exporter put it, and write weights back.

A weight is a constant tensor feeding a compute op (Conv, ConvTranspose, Gemm, MatMul). Exporters
store such tensors as initializers, as ``Constant`` nodes (paddle2onnx), or as ``ConstantOfShape``
with a constant shape (the ONNX zoo's architecture-only models), sometimes behind ``Identity``.
Passes work on :class:`Weight` objects and never on raw protobufs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.graph import einsum, foreign
from onnxcomp.graph.foreign import QUANTIZED_WHY
from onnxcomp.graph.constants import (FLOAT_TYPES, MOVES, Constants, constant_of_shape_value, constant_tensor,
                                      load_time_constants)
from onnxcomp.graph.edit import get_attr as _attr
from onnxcomp.graph.nested import nested_nodes, subgraph_reads
from onnxcomp.io import tensor_array

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
WEIGHT_OPS = COMPUTE_OPS + ("Gather", "LSTM", "GRU", "RNN", "Einsum")  # and tables, recurrent weights
KERNELS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm")  # integer layers
QUANT_OPS = ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear") + KERNELS


@dataclass
class Use:
    """One consumer of a weight: the node, the input slot and the role it plays there."""

    node: onnx.NodeProto
    index: int
    role: str


@dataclass
class Weight:
    """A constant tensor feeding compute ops, with its role and channel axes.

    ``role`` is one of conv, conv_bias, convtranspose, convtranspose_bias, gemm_b, gemm_a, gemm_c,
    matmul_b, matmul_a, gather_data (an embedding table: its rows are picked by ids, its last axis
    is the output's channels), rnn_w / rnn_r (LSTM/GRU/RNN input and recurrence weights), einsum_b
    (a matrix an Einsum multiplies by, :mod:`onnxcomp.graph.einsum`).
    ``out_axis``/``in_axis`` index the output-channel and reduction axes of the stored tensor (None
    where they do not apply). ``source`` tells where it lives: initializer, constant (a Constant
    node) or constant_of_shape.
    """

    name: str
    source: str
    shape: tuple[int, ...]
    dtype: np.dtype
    role: str
    out_axis: int | None
    in_axis: int | None
    group: int = 1
    uses: list[Use] = field(default_factory=list)
    holder: object = None  # the TensorProto / NodeProto that stores it
    stored_shape: tuple[int, ...] | None = None  # differs from shape when seen through a Reshape
    nested: bool = False  # some consumer sits inside an If/Loop/Scan body (no statistics are taken there)

    @property
    def op_type(self) -> str:
        return self.uses[0].node.op_type

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def consumers(self) -> list[str]:
        return [u.node.name or u.node.output[0] for u in self.uses]

    @property
    def shared(self) -> bool:
        return len(self.uses) > 1

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.role for u in self.uses))

    @property
    def is_bias(self) -> bool:
        return self.role in ("conv_bias", "convtranspose_bias", "gemm_c")

    @property
    def is_depthwise(self) -> bool:
        """A Conv kernel whose groups equal its output channels (one input channel each), or a
        ConvTranspose kernel [C_in, C_out / groups, ...] with one output channel per group."""
        return self.role in ("conv", "convtranspose") and self.group > 1 and self.shape[1] == 1

    def values(self) -> np.ndarray:
        """The weight as a numpy array (a copy for ConstantOfShape)."""
        if self.source == "constant_of_shape":
            value = constant_of_shape_value(self.holder)
            return np.full(self.shape, value, dtype=self.dtype)
        tensor = self.holder if self.source == "initializer" else constant_tensor(self.holder)
        return tensor_array(tensor).reshape(self.shape)  # read from disk when lazy (io.load(lazy=True))


@dataclass
class WeightReport:
    """All weights of a graph plus the constant tensors found but deliberately left alone."""

    weights: list[Weight]
    quantized: list[str] = field(default_factory=list)  # feed DequantizeLinear / QLinear ops
    skipped: dict[str, str] = field(default_factory=dict)  # tensor name -> reason
    held: list[Weight] = field(default_factory=list)  # real weights no pass may touch (read by subgraphs)
    load_time: set[str] = field(default_factory=set)  # tensors onnxruntime computes at load (decoders)

    def by_name(self) -> dict[str, Weight]:
        return {w.name: w for w in self.weights}

    def __iter__(self):
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def _roles(node: onnx.NodeProto) -> list[tuple[int, str, int | None, int | None]]:
    """(input index, role, out_axis, in_axis) for each weight slot of a compute node."""
    op = node.op_type
    if op == "Conv":
        return [(1, "conv", 0, 1), (2, "conv_bias", 0, None)]
    if op == "ConvTranspose":
        return [(1, "convtranspose", 1, 0), (2, "convtranspose_bias", 0, None)]
    if op == "Gemm":
        ta, tb = _attr(node, "transA", 0), _attr(node, "transB", 0)
        return [(1, "gemm_b", 0 if tb else 1, 1 if tb else 0),
                (0, "gemm_a", 1 if ta else 0, 0 if ta else 1),
                (2, "gemm_c", -1, None)]
    if op == "MatMul":
        return [(1, "matmul_b", -1, -2), (0, "matmul_a", -2, -1)]
    if op == "Gather" and int(_attr(node, "axis", 0)) == 0:  # an embedding table: rows picked by ids
        return [(0, "gather_data", -1, 0)]
    if op in ("LSTM", "GRU", "RNN"):  # W [directions, gates x hidden, input], R [.., hidden]: a row per gate unit
        return [(1, "rnn_w", 1, 2), (2, "rnn_r", 1, 2)]
    return einsum.roles(node) if op == "Einsum" else []


def weight_slots(node: onnx.NodeProto) -> list[int]:
    """The input slots of ``node`` that hold a weight (see :func:`find_weights`)."""
    return [index for index, *_ in _roles(node)]


ENCODED_WHY = "computed at load by a decoder (already compressed); left alone"


def find_weights(model: onnx.ModelProto | onnx.GraphProto, *, min_size: int = 1, nested: bool = False) -> WeightReport:
    """Every constant float tensor of the main graph feeding Conv/ConvTranspose/Gemm/MatMul (and
    embedding Gathers, recurrent ops).

    Weights feeding DequantizeLinear or QLinear/Integer ops are listed in ``quantized`` and never
    returned as weights. Non-float constants and constants of unknown shape are in ``skipped``.
    Weights that If/Loop/Scan bodies read are ``held`` (left alone) unless ``nested``: passes that
    only change values take them too, their consumers inside the bodies among the uses.
    """
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    consts = Constants(graph)
    found: dict[str, Weight] = {}
    folded = load_time_constants(graph)
    report = WeightReport(weights=[], load_time=folded)
    nodes = [(n, frozenset()) for n in graph.node] + (list(nested_nodes(graph)) if nested else [])
    for node, local in nodes:
        if node.op_type in QUANT_OPS:
            for name in node.input:
                hit = consts.resolve(name) if name else None
                if hit is not None and hit[0] not in report.quantized:
                    report.quantized.append(hit[0])
                    if node.op_type in KERNELS and len(hit[3]) >= 2:  # an integer layer's weight
                        report.skipped.setdefault(hit[0], QUANTIZED_WHY.format(node.op_type))
            continue
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx") or all(i in folded for i in node.input if i):
            continue  # no layer: a decoder's MatMul or Gather (folded at load), not a weight's consumer
        pending: list[tuple[tuple, str, int | None, int | None, int]] = []  # (resolved constant, role, axes, slot)
        for index, role, out_axis, in_axis in _roles(node):
            if index >= len(node.input) or not node.input[index] or node.input[index] in local:
                continue
            hit = consts.resolve(node.input[index])
            if hit is None:
                moved = consts.moved_sources(node.input[index]) if role in ("rnn_w", "rnn_r") else None
                if moved:  # assembled at load from [gates x hidden, input] tensors: a row per gate unit
                    pending.extend((h, role, 0, -1, index) for src in moved if (h := consts.resolve(src)) is not None)
                elif node.input[index] in folded:  # a decoder's output, or a tied table moved by a Transpose
                    src = consts.producers.get(node.input[index])
                    tied = src is not None and src.op_type in MOVES and bool(src.input) \
                        and src.input[0] in consts.initializers
                    report.skipped.setdefault(node.input[index], f"a {src.op_type} of {src.input[0]}, which another "
                                              "layer reads too; changes with it" if tied else ENCODED_WHY)
                continue
            pending.append((hit, role, out_axis, in_axis, index))
        for hit, role, out_axis, in_axis, index in pending:
            name, source, holder, stored, dtype, view = hit
            shape = view if view is not None else stored
            if dtype not in FLOAT_TYPES:
                report.skipped[name] = f"dtype {onnx.TensorProto.DataType.Name(dtype)} is not float"
                continue
            if len(shape) == 0 or int(np.prod(shape)) < min_size:
                continue
            if role in ("matmul_b", "matmul_a", "gather_data", "rnn_w", "rnn_r") and len(shape) < 2:
                report.skipped[name] = "1-D MatMul operand" if role != "gather_data" else "1-D table"
                continue
            use = Use(node=node, index=index, role=role)
            if name in found:
                found[name].uses.append(use)
                found[name].nested |= bool(local)
                continue
            rank = len(shape)
            found[name] = Weight(
                name=name, source=source, shape=tuple(int(d) for d in shape),
                dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)), role=role,
                out_axis=None if out_axis is None else out_axis % rank,
                in_axis=None if in_axis is None else in_axis % rank,
                group=int(_attr(node, "group", 1)) if node.op_type in ("Conv", "ConvTranspose") else 1,
                uses=[use], holder=holder, stored_shape=tuple(int(d) for d in stored), nested=bool(local))
    einsum.note_operands(graph, consts, found, report.skipped)
    foreign.note_weights(graph, consts, found, report.skipped)
    quantized = set(report.quantized)
    outer, inner = subgraph_reads(graph)
    outer = set() if nested else outer
    report.weights = [w for w in found.values() if w.name not in quantized and w.name not in outer]
    for w in found.values():
        if w.name in quantized:
            report.skipped[w.name] = QUANTIZED_WHY.format("feeds DequantizeLinear")
        elif w.name in outer:
            report.skipped[w.name] = "also read inside an If/Loop/Scan subgraph; left alone"
            report.held.append(w)
    for name in inner:
        report.skipped.setdefault(name, "inside an If/Loop/Scan subgraph; left alone")
    for t in graph.initializer:  # main-graph tensors only subgraphs read (silero-vad's op18 export)
        if t.name in outer and t.name not in found and len(t.dims) >= 2 and t.data_type in FLOAT_TYPES:
            report.skipped.setdefault(t.name, "read inside an If/Loop/Scan subgraph; left alone")
    return report


def set_weight(model: onnx.ModelProto, weight: Weight, values: np.ndarray) -> None:
    """Write new values for a weight back where it lives, keeping its name and dtype.

    A ConstantOfShape weight cannot hold arbitrary values; it becomes an initializer of the same
    name (its node is removed). All consumers see the new values (shared weights stay consistent).
    """
    values = np.asarray(values, dtype=weight.dtype)
    if tuple(values.shape) != tuple(weight.shape):
        raise ValueError(f"new values for {weight.name} have shape {values.shape}, not {weight.shape}")
    values = values.reshape(weight.stored_shape or weight.shape)
    graph = model.graph
    if weight.source == "initializer" and values.dtype.kind in "fiu" and values.dtype.itemsize > 1 \
            and values.dtype.byteorder in "=<|":
        _write_raw(weight.holder, values)  # in place: no tensor-sized intermediate message
        return
    tensor = numpy_helper.from_array(values, weight.name)
    if weight.source == "initializer":
        weight.holder.CopyFrom(tensor)
    elif weight.source == "constant":
        for attr in weight.holder.attribute:
            if attr.name == "value":
                tensor.name = attr.t.name  # as the exporter left it (often none): no bytes added
                attr.t.CopyFrom(tensor)
    else:  # constant_of_shape -> initializer
        node = weight.holder
        graph.node.remove(node)
        graph.initializer.append(tensor)
        weight.source, weight.holder = "initializer", graph.initializer[-1]


def _write_raw(holder: onnx.TensorProto, values: np.ndarray) -> None:
    """``holder`` becomes ``values`` (its name kept) exactly as numpy_helper.from_array writes
    them: raw little-endian bytes, data type, dims; any other data field and location cleared."""
    for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data",
                 "external_data", "data_location", "segment", "doc_string", "metadata_props"):
        holder.ClearField(name)
    del holder.dims[:]
    holder.dims.extend(values.shape)
    holder.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
    holder.raw_data = np.ascontiguousarray(values).tobytes()


def remove_storage(model: onnx.ModelProto, weight: Weight) -> None:
    """Delete the tensor's storage so an encoding subgraph can produce the same name instead."""
    graph = model.graph
    if weight.source == "initializer":
        graph.initializer.remove(weight.holder)
        for i, vi in enumerate(graph.input):
            if vi.name == weight.name:  # older exporters list initializers as inputs too
                del graph.input[i]
                break
    else:
        graph.node.remove(weight.holder)
    weight.holder = None
