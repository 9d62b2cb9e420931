"""Graph-level generator: hypothesis strategies that build *valid* but unusual ONNX models.

Where :mod:`tests.fuzzing` damages fixtures, this builds models an exporter could write and
onnxruntime runs: Conv / ConvTranspose (groups, dilations, pads, strides, 1-D to 3-D), Gemm
(transA / transB / alpha / beta, with or without C), MatMul (batched constants, constants on the
left), BatchNorm, residual Adds and Concats; weights inside If / Loop bodies and in local
functions (FunctionProto); float16, bfloat16 (stored, cast up) and float64; opsets 7-22; dynamic
or fixed batch; weights holding NaN / Inf, denormals, extreme ranges, all zeros, one value, shared
by two nodes, or also a graph output. :func:`cases` draws a :class:`Case`: the model and real-shaped
inputs for it (the ``--data`` file and the reference run).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

NP_OF = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
DENORMAL = {np.float32: 1e-41, np.float16: 1e-7, np.float64: 1e-310}
VALUE_KINDS = ["normal"] * 10 + ["scaled", "nan", "inf", "denormal", "extreme", "zeros", "constant",
                                 "sparse", "dead"]
CONV_SPATIAL = {1: [7], 2: [5, 4], 3: [3, 3, 3]}


@dataclass
class Case:
    """A generated model, inputs for it (samples on axis 0) and what went into it."""

    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    batch: int | None  # the fixed batch, None when dynamic
    tags: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"opset {self.model.opset_import[0].version}, batch {self.batch or 'dynamic'}: {', '.join(self.tags)}"


class Builder:
    """Collects nodes, initializers and local functions; draws every choice through ``draw``."""

    def __init__(self, draw, opset: int, dtype: int) -> None:
        self.draw, self.opset, self.dtype = draw, opset, dtype
        self.np = NP_OF[dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.extra_outputs: list[onnx.ValueInfoProto] = []
        self.tags: list[str] = []
        self.count = 0
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.last_weight: tuple[str, tuple[int, ...]] | None = None

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(f"n_{op}"), **attrs))
        return outs[0]

    def values(self, shape: tuple[int, ...], out_axis: int, dtype=None) -> np.ndarray:
        """Weight values of one drawn kind (NaN, denormal channel, extreme range, ...)."""
        dtype = dtype or self.np
        kind = self.draw(st.sampled_from(VALUE_KINDS))
        fan = max(1, int(np.prod(shape)) // max(1, shape[out_axis]))
        a = self.rng.normal(0, 1 / np.sqrt(fan), shape)
        ch = [slice(None)] * len(shape)
        ch[out_axis] = self.rng.integers(0, shape[out_axis])
        ch = tuple(ch)
        if kind == "scaled":
            a *= self.draw(st.sampled_from([1e-6, 1e-3, 30.0, 1e4]))
        elif kind in ("nan", "inf"):
            a.reshape(-1)[self.rng.integers(0, a.size)] = np.nan if kind == "nan" else -np.inf
        elif kind == "denormal":  # one output channel of subnormal values (a dead BN-folded channel)
            a[ch] = np.sign(a[ch]) * DENORMAL[dtype]
        elif kind == "extreme":
            a[ch] *= 1e4 if dtype == np.float16 else 1e30
        elif kind == "zeros":
            a[:] = 0
        elif kind == "constant":
            a[:] = 0.25
        elif kind == "sparse":
            a[self.rng.random(shape) < 0.85] = 0
        elif kind == "dead":
            a[ch] = 0
        if kind != "normal":
            self.tags.append(kind)
        with np.errstate(over="ignore"):
            return a.astype(dtype)

    def weight(self, shape: tuple[int, ...], out_axis: int) -> str:
        """A weight of the model dtype, stored as an initializer, a Constant node, a bfloat16 or
        float16 initializer cast up, or a weight drawn before (shared by two nodes)."""
        shape = tuple(int(d) for d in shape)
        if self.last_weight is not None and self.last_weight[1] == shape and self.draw(st.integers(0, 3)) == 0:
            self.tags.append("shared")
            return self.last_weight[0]
        storage = self.draw(st.sampled_from(["init"] * 6 + ["constant", "bf16", "f16", "output"]))
        if storage == "bf16" and (self.opset < 13 or self.dtype != TensorProto.FLOAT):
            storage = "init"
        if storage == "f16" and self.dtype != TensorProto.FLOAT:
            storage = "init"
        name = self.fresh("w")
        if storage in ("bf16", "f16"):
            stored = name + "_" + storage
            a = self.values(shape, out_axis, np.float16 if storage == "f16" else np.float32)
            t = numpy_helper.from_array(a, stored) if storage == "f16" else helper.make_tensor(
                stored, TensorProto.BFLOAT16, shape, _bf16_bits(a).tobytes(), raw=True)
            self.inits.append(t)
            self.nodes.append(helper.make_node("Cast", [stored], [name], name=self.fresh("n_cast"), to=self.dtype))
        elif storage == "constant":
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("n_const"),
                                               value=numpy_helper.from_array(self.values(shape, out_axis))))
        else:
            self.inits.append(numpy_helper.from_array(self.values(shape, out_axis), name))
            if storage == "output":  # a weight that is also a graph output
                self.extra_outputs.append(helper.make_tensor_value_info(name, self.dtype, list(shape)))
        if storage != "init":
            self.tags.append(storage)
        self.last_weight = (name, shape)
        return name


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (round to nearest even) of float32 values."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(a)
    rounded[nan] = 0x7FC0
    return rounded.astype(np.uint16)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- conv layers: tensors [B, C, *spatial] --------------------------------------------------------

def conv(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int, list[int]]:
    draw = b.draw
    g = draw(st.sampled_from(_divisors(c)))
    c2 = g * draw(st.integers(1, max(1, 8 // g)))
    k = [draw(st.integers(1, 3)) for _ in sp]
    d = [draw(st.sampled_from([1, 1, 2])) for _ in sp]
    s = [draw(st.sampled_from([1, 1, 2])) for _ in sp]
    pads = [draw(st.integers(0, (kk - 1) * dd)) for kk, dd in zip(k, d)] * 2
    out = [(n + 2 * p - (kk - 1) * dd - 1) // ss + 1 for n, p, kk, dd, ss in zip(sp, pads, k, d, s)]
    if min(out) < 1:
        k, d, s, pads, out = [1] * len(sp), [1] * len(sp), [1] * len(sp), [0] * 2 * len(sp), list(sp)
    inputs = [x, b.weight((c2, c // g, *k), 0)]
    if draw(st.booleans()):
        inputs.append(b.weight((c2,), 0))
    attrs = dict(kernel_shape=k, group=g) if draw(st.booleans()) else dict(group=g)
    y = b.node("Conv", inputs, dilations=d, strides=s, pads=pads, **attrs)
    b.tags.append(f"conv{len(sp)}d" + (f"/g{g}" if g > 1 else ""))
    return y, c2, out


def conv_transpose(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int, list[int]]:
    draw = b.draw
    g = draw(st.sampled_from(_divisors(c)))
    c2 = g * draw(st.integers(1, max(1, 6 // g)))
    k = [draw(st.integers(1, 3)) for _ in sp]
    s = [1 if n > 5 else draw(st.sampled_from([1, 2])) for n in sp]
    d = [draw(st.sampled_from([1, 1, 2])) for _ in sp]
    pads = [draw(st.integers(0, kk - 1)) for kk in k] * 2
    opad = [draw(st.integers(0, ss - 1)) for ss in s]
    out = [(n - 1) * ss + op + (kk - 1) * dd + 1 - 2 * p for n, ss, op, kk, dd, p in zip(sp, s, opad, k, d, pads)]
    if min(out) < 1:
        pads, out = [0] * 2 * len(sp), [(n - 1) * ss + op + (kk - 1) * dd + 1 for n, ss, op, kk, dd in
                                         zip(sp, s, opad, k, d)]
    inputs = [x, b.weight((c, c2 // g, *k), 1)]
    if draw(st.booleans()):
        inputs.append(b.weight((c2,), 0))
    y = b.node("ConvTranspose", inputs, group=g, strides=s, dilations=d, pads=pads, output_padding=opad)
    b.tags.append(f"convT{len(sp)}d" + (f"/g{g}" if g > 1 else ""))
    return y, c2, out


def batchnorm(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int, list[int]]:
    r = b.rng
    parts = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)]
    names = []
    for p in parts:
        names.append(b.fresh("bn"))
        b.inits.append(numpy_helper.from_array(p.astype(b.np), names[-1]))
    return b.node("BatchNormalization", [x, *names]), c, sp


def activation(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int, list[int]]:
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "LeakyRelu"]))
    return b.node(op, [x]), c, sp


def residual(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int, list[int]]:
    """x + Conv_same(x) (a kxk conv keeping the size), or Concat of two conv branches."""
    k = [1 + 2 * b.draw(st.integers(0, 1)) for _ in sp]
    pads = [kk // 2 for kk in k] * 2
    branch = b.node("Conv", [x, b.weight((c, c, *k), 0)], pads=pads)
    if b.draw(st.booleans()):
        b.tags.append("residual")
        return b.node("Add", [x, branch]), c, sp
    b.tags.append("concat")
    return b.node("Concat", [x, branch], axis=1), 2 * c, sp


CONV_LAYERS = [conv, conv, conv, conv_transpose, batchnorm, activation, residual]


# --- dense layers: tensors [B, F] or [B, S, F] ----------------------------------------------------

def gemm(b: Builder, x: str, f: int) -> tuple[str, int]:
    draw = b.draw
    f2 = draw(st.integers(2, 8))
    ta, tb = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    a = b.node("Transpose", [x], perm=[1, 0]) if ta else x
    inputs = [a, b.weight((f2, f) if tb else (f, f2), 0 if tb else 1)]
    c = draw(st.sampled_from(["vector", "row", "none"] if b.opset >= 11 else ["vector", "row"]))
    if c != "none":
        inputs.append(b.weight((f2,) if c == "vector" else (1, f2), 0 if c == "vector" else 1))
    attrs = {}
    if draw(st.booleans()):
        attrs = dict(alpha=draw(st.sampled_from([0.5, 2.0, -1.0])), beta=draw(st.sampled_from([0.0, 0.5, 1.0])))
    b.tags.append(f"gemm(tA{ta},tB{tb},C:{c}{',ab' if attrs else ''})")
    return b.node("Gemm", inputs, transA=ta, transB=tb, **attrs), f2


def matmul(b: Builder, x: str, f: int, rank: int, s: int) -> tuple[str, int, int]:
    """x @ W [F, F2]; for rank 3 also a batched constant [S, F, F2] after an Unsqueeze-free reshape
    (x [B, S, F] viewed as [B, S, 1, F]) or a constant on the left (W [S2, S] @ x)."""
    draw = b.draw
    f2 = draw(st.integers(2, 8))
    how = draw(st.sampled_from(["right", "right", "batched", "left"] if rank == 3 else ["right"]))
    if how == "right":
        b.tags.append("matmul")
        return b.node("MatMul", [x, b.weight((f, f2), 1)]), f2, s
    if how == "batched":  # [B, S, F] @ [S?]: keep broadcasting legal with a [1, F, F2] constant
        b.tags.append("matmul_batched")
        return b.node("MatMul", [x, b.weight((1, f, f2), 2)]), f2, s
    s2 = draw(st.integers(2, 5))
    b.tags.append("matmul_left")
    return b.node("MatMul", [b.weight((s2, s), 0), x]), f, s2


# --- control flow and local functions --------------------------------------------------------------

def _dense_body(b: Builder, x: str, f: int, inner: bool) -> tuple[list, list, str]:
    """Nodes of a body computing Relu(x @ W): W inside the body (initializer) or outer-scope."""
    w = b.fresh("wsub")
    values = b.values((f, f), 1)
    inits = [numpy_helper.from_array(values, w)] if inner else []
    if not inner:
        b.inits.append(numpy_helper.from_array(values, w))
    mm, out = b.fresh("sub_mm"), b.fresh("sub_out")
    nodes = [helper.make_node("MatMul", [x, w], [mm], name=b.fresh("n_submm")),
             helper.make_node("Relu", [mm], [out], name=b.fresh("n_subrelu"))]
    return nodes, inits, out


def if_block(b: Builder, x: str, f: int, shape: list) -> str:
    s = b.node("ReduceSum", [x], keepdims=0)
    zero = b.fresh("zero")
    b.inits.append(numpy_helper.from_array(np.array(0, b.np), zero))
    cond = b.node("Greater", [s, zero])
    branches = []
    for inner in (True, b.draw(st.booleans())):
        nodes, inits, out = _dense_body(b, x, f, inner)
        branches.append(helper.make_graph(nodes, b.fresh("branch"), [],
                                          [helper.make_tensor_value_info(out, b.dtype, shape)], initializer=inits))
    b.tags.append("if")
    return b.node("If", [cond], then_branch=branches[0], else_branch=branches[1])


def loop_block(b: Builder, x: str, f: int, shape: list) -> str:
    trip, keep = b.fresh("trip"), b.fresh("keep")
    b.inits += [numpy_helper.from_array(np.array(2, np.int64), trip), numpy_helper.from_array(np.array(True), keep)]
    h, ci, co = b.fresh("h"), b.fresh("cond_in"), b.fresh("cond_out")
    nodes, inits, out = _dense_body(b, h, f, b.draw(st.booleans()))
    nodes.append(helper.make_node("Identity", [ci], [co], name=b.fresh("n_condid")))
    body = helper.make_graph(nodes, b.fresh("body"),
                             [helper.make_tensor_value_info(b.fresh("i"), TensorProto.INT64, []),
                              helper.make_tensor_value_info(ci, TensorProto.BOOL, []),
                              helper.make_tensor_value_info(h, b.dtype, shape)],
                             [helper.make_tensor_value_info(co, TensorProto.BOOL, []),
                              helper.make_tensor_value_info(out, b.dtype, shape)], initializer=inits)
    b.tags.append("loop")
    return b.node("Loop", [trip, keep, x], body=body)


def function_block(b: Builder, x: str, f: int) -> str:
    """A local function holding its weight in a Constant node (and, sometimes, reading one more
    weight from the main graph as an input)."""
    name = b.fresh("Block")
    from_main = b.draw(st.booleans())
    nodes = [helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(b.values((f, f), 1))),
             helper.make_node("MatMul", ["X", "K"], ["Z"]), helper.make_node("Relu", ["Z"], ["Y0"])]
    if from_main:
        nodes.append(helper.make_node("MatMul", ["Y0", "W2"], ["Y"]))
    else:
        nodes.append(helper.make_node("Identity", ["Y0"], ["Y"]))
    b.functions.append(helper.make_function("gen.local", name, ["X", "W2"] if from_main else ["X"], ["Y"], nodes,
                                            [helper.make_opsetid("", b.opset)]))
    inputs = [x, b.weight((f, f), 1)] if from_main else [x]
    out = b.fresh("fn_out")
    b.nodes.append(helper.make_node(name, inputs, [out], domain="gen.local", name=b.fresh("n_fn")))
    b.tags.append("function")
    return out


# --- whole models -----------------------------------------------------------------------------------

def _conv_trunk(b: Builder, x: str, c: int, sp: list[int]) -> tuple[str, int]:
    for _ in range(b.draw(st.integers(1, 3))):
        layer = b.draw(st.sampled_from(CONV_LAYERS))
        x, c, sp = layer(b, x, c, sp)
        if max(sp) > 12 or c > 16:  # keep the graphs tiny
            x, c, sp = conv(b, x, c, sp) if c <= 16 else (x, c, sp)
            if max(sp) > 12:
                x = b.node("MaxPool", [x], kernel_shape=[2] * len(sp), strides=[2] * len(sp))
                sp = [n // 2 for n in sp]
    pooled = b.node("GlobalAveragePool", [x])
    return b.node("Flatten", [pooled], axis=1), c


def _dense(b: Builder, x: str, f: int, batch_shape: list, subgraphs: bool) -> tuple[str, int]:
    for _ in range(b.draw(st.integers(1, 3))):
        kind = b.draw(st.sampled_from(["gemm", "matmul", "act", "twice"] +
                                      (["if", "loop", "function"] if subgraphs else [])))
        if kind == "twice":  # one weight read by two MatMuls (a shared weight)
            w = b.weight((f, f), 1)
            x = b.node("MatMul", [b.node("Relu", [b.node("MatMul", [x, w])]), w])
            b.tags.append("shared")
        elif kind == "gemm":
            x, f = gemm(b, x, f)
        elif kind == "matmul":
            x, f, _ = matmul(b, x, f, 2, 0)
        elif kind == "act":
            x = b.node("Relu", [x])
        elif kind == "if":
            x = if_block(b, x, f, batch_shape + [f])
        elif kind == "loop":
            x = loop_block(b, x, f, batch_shape + [f])
        else:
            x = function_block(b, x, f)
    return x, f


@st.composite
def cases(draw) -> Case:
    """One generated model with its inputs."""
    family = draw(st.sampled_from(["conv", "conv", "conv", "dense", "seq"]))
    opset = draw(st.integers(7, 22))
    dtype = draw(st.sampled_from([TensorProto.FLOAT] * 6 + [TensorProto.FLOAT16, TensorProto.DOUBLE]))
    if dtype == TensorProto.DOUBLE and family == "conv":  # onnxruntime has no float64 Conv on CPU
        family = "dense"
    b = Builder(draw, opset, dtype)
    fixed = draw(st.sampled_from([None, None, 1, 2, 3]))
    batch_dim = fixed if fixed is not None else "N"
    n = fixed if fixed is not None else 3
    subgraphs = opset >= 11 and dtype != TensorProto.FLOAT16
    if family == "conv":
        rank = draw(st.sampled_from([1, 2, 2, 3]))
        c = draw(st.integers(1, 6))
        sp = CONV_SPATIAL[rank]
        shape = [c, *sp]
        x, f = _conv_trunk(b, "x", c, list(sp))
        y, f = _dense(b, x, f, [batch_dim], subgraphs) if draw(st.booleans()) else (x, f)
        out_shape = [batch_dim, f]
    elif family == "dense":
        f = draw(st.integers(2, 8))
        shape = [f]
        y, f = _dense(b, "x", f, [batch_dim], subgraphs)
        out_shape = [batch_dim, f]
    else:
        s, f = draw(st.integers(2, 4)), draw(st.integers(2, 6))
        shape = [s, f]
        y = "x"
        for _ in range(draw(st.integers(1, 3))):
            y, f, s = matmul(b, y, f, 3, s)
            if draw(st.booleans()):
                y = b.node("Relu", [y])
        out_shape = [batch_dim, s, f]
    outputs = [helper.make_tensor_value_info(y, dtype, out_shape)] + b.extra_outputs
    graph = helper.make_graph(b.nodes, "generated", [helper.make_tensor_value_info("x", dtype, [batch_dim, *shape])],
                              outputs, initializer=b.inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("gen.local", 1)] if b.functions else [])
    model = helper.make_model(graph, opset_imports=imports, functions=b.functions, producer_name="graphgen")
    model.ir_version = 8 if b.functions or draw(st.booleans()) else max(4, helper.find_min_ir_version_for(imports))
    feeds = {"x": b.rng.normal(0, 1, (n * 2, *shape)).astype(NP_OF[dtype])}
    return Case(model, feeds, fixed, [f"{family}", {1: "f32", 10: "f16", 11: "f64"}[dtype], *b.tags])
