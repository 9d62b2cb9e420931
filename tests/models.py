"""Tiny fixture graphs built with onnx.helper (seeded), shared by the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FLOAT = TensorProto.FLOAT


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def const_node(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array)),
                            name=f"const_{name}")


def make(nodes, inputs, outputs, inits=(), opset: int = 17, name: str = "fixture") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vi(name: str, shape, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_bn_relu(batch="N", c_in: int = 3, c_mid: int = 8, n_cls: int = 5, hw: int = 8,
                 seed: int = 0) -> onnx.ModelProto:
    """x -> Conv 3x3 -> BN -> Relu -> Conv 3x3 -> Relu -> GlobalAvgPool -> Flatten -> Gemm."""
    r = rng(seed)
    w1 = r.normal(0, 0.3, (c_mid, c_in, 3, 3)).astype(np.float32)
    b1 = r.normal(0, 0.1, c_mid).astype(np.float32)
    w2 = r.normal(0, 0.3, (c_mid, c_mid, 3, 3)).astype(np.float32)
    fc = r.normal(0, 0.3, (n_cls, c_mid)).astype(np.float32)
    fcb = r.normal(0, 0.1, n_cls).astype(np.float32)
    bn = [r.uniform(0.5, 1.5, c_mid), r.normal(0, 0.1, c_mid), r.normal(0, 0.1, c_mid),
          r.uniform(0.5, 1.5, c_mid)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w1", w1), init("b1", b1), init("w2", w2), init("fc", fc), init("fcb", fcb)]
    inits += [init(n, a.astype(np.float32)) for n, a in zip(["g", "beta", "mean", "var"], bn)]
    return make(nodes, [vi("x", [batch, c_in, hw, hw])], [vi("y", [batch, n_cls])], inits)


def constant_node_weights() -> onnx.ModelProto:
    """Conv and MatMul weights held in Constant nodes (as paddle2onnx writes them)."""
    r = rng(1)
    nodes = [
        const_node("w", r.normal(size=(4, 2, 3, 3)).astype(np.float32)),
        const_node("m", r.normal(size=(4 * 4 * 4, 6)).astype(np.float32)),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="mm"),
    ]
    return make(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 6])])


def constant_of_shape_weights() -> onnx.ModelProto:
    """A Conv kernel made by ConstantOfShape with an initializer shape (the ONNX zoo style)."""
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"], name="cos",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
    ]
    return make(nodes, [vi("x", [1, 3, 5, 5])], [vi("y", [1, 4, 3, 3])],
                [init("w_shape", np.array([4, 3, 3, 3], np.int64))])


def shared_weight() -> onnx.ModelProto:
    """One initializer used by two MatMuls."""
    r = rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm2")]
    return make(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])],
                [init("w", r.normal(size=(8, 8)).astype(np.float32))])


def gemm_and_matmul_sides() -> onnx.ModelProto:
    """Gemm with transB=1, Gemm with transB=0, MatMul with the constant on the left."""
    r = rng(3)
    nodes = [helper.make_node("Gemm", ["x", "wt"], ["a"], name="gemm_t", transB=1),
             helper.make_node("Gemm", ["a", "wn"], ["b"], name="gemm_n"),
             helper.make_node("MatMul", ["left", "b"], ["y"], name="mm_left")]
    inits = [init("wt", r.normal(size=(6, 4)).astype(np.float32)),   # [N=6, K=4]
             init("wn", r.normal(size=(6, 5)).astype(np.float32)),   # [K=6, N=5]
             init("left", r.normal(size=(3, 2)).astype(np.float32))]  # [M=3, K=2]
    return make(nodes, [vi("x", [2, 4])], [vi("y", [3, 5])], inits)


def fp16_conv() -> onnx.ModelProto:
    r = rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    return make(nodes, [vi("x", [1, 2, 4, 4], TensorProto.FLOAT16)],
                [vi("y", [1, 3, 2, 2], TensorProto.FLOAT16)],
                [init("w", r.normal(size=(3, 2, 3, 3)).astype(np.float16))])


def qdq_weight() -> onnx.ModelProto:
    """An int8 weight behind DequantizeLinear (an already-quantized model) plus a float conv."""
    r = rng(5)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="dq"),
             helper.make_node("Conv", ["x", "wd"], ["c"], name="qconv"),
             helper.make_node("Conv", ["c", "wf"], ["y"], name="fconv")]
    inits = [init("wq", r.integers(-100, 100, (3, 2, 1, 1)).astype(np.int8)),
             init("s", np.array(0.01, np.float32)), init("z", np.array(0, np.int8)),
             init("wf", r.normal(size=(2, 3, 1, 1)).astype(np.float32))]
    return make(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 2, 4, 4])], inits)


def qdq_float_weight() -> onnx.ModelProto:
    """A float weight that feeds QuantizeLinear/DequantizeLinear (QDQ) before the conv."""
    r = rng(6)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], name="q"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="dq"),
             helper.make_node("Conv", ["x", "wd"], ["y"], name="conv")]
    inits = [init("w", r.normal(size=(3, 2, 1, 1)).astype(np.float32)),
             init("s", np.array(0.01, np.float32)), init("z", np.array(0, np.int8))]
    return make(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 3, 4, 4])], inits, opset=13)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def with_zeroed(model: onnx.ModelProto, weight: str) -> onnx.ModelProto:
    """A copy of ``model`` with the initializer ``weight`` set to zeros (a damaged layer)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == weight:
            t.CopyFrom(init(weight, np.zeros_like(numpy_helper.to_array(t))))
    return out


def classifier(batch="batch", channels: int = 8, n_cls: int = 10, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x[batch,1,hw,hw] -> Conv 3x3 -> BN -> Relu -> Conv 3x3 /2 -> Relu -> Flatten -> Gemm.

    No global pooling, so predictions depend on the input (the class changes from sample to
    sample on random data); ``channels`` sets both convs' output channels.
    """
    r = rng(seed)
    c, h2 = channels, hw // 2
    inits = [init("w1", r.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32)),
             init("b1", r.normal(0, 0.1, c).astype(np.float32)),
             init("bn_s", r.uniform(0.5, 1.5, c).astype(np.float32)),
             init("bn_b", r.normal(0, 0.1, c).astype(np.float32)),
             init("bn_m", r.normal(0, 0.1, c).astype(np.float32)),
             init("bn_v", r.uniform(0.5, 1.5, c).astype(np.float32)),
             init("w2", r.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32)),
             init("b2", r.normal(0, 0.1, c).astype(np.float32)),
             init("fc_w", r.normal(0, 0.2, (n_cls, c * h2 * h2)).astype(np.float32)),
             init("fc_b", np.zeros(n_cls, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["conv1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"],
                              name="bn1"),
             helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"),
             helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
             helper.make_node("Flatten", ["relu2"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    return make(nodes, [vi("x", [batch, 1, hw, hw])], [vi("logits", [batch, n_cls])], inits)


def conv_layer(c_in: int = 4, c_out: int = 6, kernel=(3, 3), hw=(9, 9), strides=(1, 1), pads=None,
               dilations=(1, 1), group: int = 1, bias: bool = True, auto_pad: str | None = None,
               seed: int = 7, batch="N") -> onnx.ModelProto:
    """x -> Conv (name 'conv', output 'c', any geometry) -> Relu -> y: one conv to rewrite."""
    r = rng(seed)
    w = r.normal(0, 0.5, (c_out, c_in // group) + tuple(kernel)).astype(np.float32)
    inits = [init("w", w)]
    inputs = ["x", "w"]
    if bias:
        inits.append(init("b", r.normal(0, 0.5, c_out).astype(np.float32)))
        inputs.append("b")
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations), group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads or [0, 0, 0, 0])
    nodes = [helper.make_node("Conv", inputs, ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return make(nodes, [vi("x", [batch, c_in, hw[0], hw[1]])], [vi("y", [batch, c_out, "H", "W"])], inits)


def gemm_layer(k: int = 12, n: int = 10, trans_a: int = 0, trans_b: int = 1, alpha: float = 1.0,
               beta: float = 1.0, with_c: bool = True, seed: int = 8) -> onnx.ModelProto:
    """x -> Gemm (name 'gemm', output 'g', any transA/transB/alpha/beta/C) -> Relu -> y."""
    r = rng(seed)
    b = r.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [init("B", b)]
    inputs = ["x", "B"]
    if with_c:
        inits.append(init("C", r.normal(0, 0.5, n).astype(np.float32)))
        inputs.append("C")
    nodes = [helper.make_node("Gemm", inputs, ["g"], name="gemm", transA=trans_a, transB=trans_b,
                              alpha=alpha, beta=beta),
             helper.make_node("Relu", ["g"], ["y"], name="relu")]
    x_shape = [k, 5] if trans_a else [5, k]
    return make(nodes, [vi("x", x_shape)], [vi("y", [5, n])], inits)


def matmul_layer(k: int = 12, n: int = 10, seed: int = 9) -> onnx.ModelProto:
    """x[N, 3, K] -> MatMul with a constant [K, N] weight (name 'mm', output 'y', a graph output)."""
    w = rng(seed).normal(0, 0.5, (k, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    return make(nodes, [vi("x", ["N", 3, k])], [vi("y", ["N", 3, n])], [init("W", w)])


# --- structured (channel) pruning fixtures: every builder takes ``zero`` = output channels of the
# named producers whose filters (and biases / BN shifts) are exactly zero, for exactness tests.

def _ch_conv(name: str, x: str, y: str, c_in: int, c_out: int, r, zero=(), k: int = 3, group: int = 1,
             bias: bool = True, attrs=None):
    w = r.normal(0, 0.4, (c_out, c_in // group, k, k)).astype(np.float32)
    b = r.normal(0, 0.1, c_out).astype(np.float32)
    w[list(zero)] = 0.0
    b[list(zero)] = 0.0
    inputs = [x, f"{name}_w"] + ([f"{name}_b"] if bias else [])
    node = helper.make_node("Conv", inputs, [y], name=name, pads=[k // 2] * 4, group=group, **(attrs or {}))
    return [node], [init(f"{name}_w", w)] + ([init(f"{name}_b", b)] if bias else [])


def _ch_bn(name: str, x: str, y: str, c: int, r, zero=()):
    g, beta = r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c)
    mean, var = r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)
    g[list(zero)] = 0.0
    beta[list(zero)] = 0.0
    mean[list(zero)] = 0.0
    arrays = [a.astype(np.float32) for a in (g, beta, mean, var)]
    names = [f"{name}_{s}" for s in ("g", "b", "m", "v")]
    return ([helper.make_node("BatchNormalization", [x, *names], [y], name=name)],
            [init(n, a) for n, a in zip(names, arrays)])


def _ch_build(parts, inputs, outputs, opset: int = 17):
    nodes, inits = [], []
    for n, i in parts:
        nodes += n
        inits += i
    return make(nodes, inputs, outputs, inits, opset=opset)


def _ch_head(x: str, c: int, r, n_cls: int = 5):
    """GAP -> Flatten -> Gemm classifier (the graph output freezes the Gemm's group)."""
    fc = r.normal(0, 0.3, (n_cls, c)).astype(np.float32)
    return ([helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1)],
            [init("fc_w", fc), init("fc_b", np.zeros(n_cls, np.float32))])


def chan_residual(zero=None, seed: int = 11) -> onnx.ModelProto:
    """conv0-BN-Relu, conv1-Relu-conv2-BN, residual Add, Relu, conv3, head. Groups {conv0, conv2}, {conv1}, {conv3}."""
    z, r = zero or {}, rng(seed)
    parts = [_ch_conv("conv0", "x", "c0", 3, 16, r, z.get("conv0", ()), bias=False),
             _ch_bn("bn0", "c0", "n0", 16, r, z.get("conv0", ())),
             ([helper.make_node("Relu", ["n0"], ["r0"], name="relu0")], []),
             _ch_conv("conv1", "r0", "c1", 16, 8, r, z.get("conv1", ())),
             ([helper.make_node("Relu", ["c1"], ["r1"], name="relu1")], []),
             _ch_conv("conv2", "r1", "c2", 8, 16, r, z.get("conv0", ()), bias=False),
             _ch_bn("bn2", "c2", "n2", 16, r, z.get("conv0", ())),
             ([helper.make_node("Add", ["r0", "n2"], ["s"], name="add"),
               helper.make_node("Relu", ["s"], ["rs"], name="relu_s")], []),
             _ch_conv("conv3", "rs", "c3", 16, 16, r, z.get("conv3", ()), k=1),
             ([helper.make_node("Relu", ["c3"], ["r3"], name="relu3")], []),
             _ch_head("r3", 16, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def chan_concat(seed: int = 12) -> onnx.ModelProto:
    """Two conv branches -> Concat -> per-channel Mul by a [1,16,1,1] constant -> conv -> head."""
    r = rng(seed)
    scale = r.uniform(0.5, 1.5, (1, 16, 1, 1)).astype(np.float32)
    parts = [_ch_conv("conva", "x", "ca", 3, 8, r), _ch_conv("convb", "x", "cb", 3, 8, r),
             ([helper.make_node("Relu", ["ca"], ["ra"], name="relua"),
               helper.make_node("Relu", ["cb"], ["rb"], name="relub"),
               helper.make_node("Concat", ["ra", "rb"], ["cat"], name="concat", axis=1),
               helper.make_node("Mul", ["cat", "scale"], ["sc"], name="mul")], [init("scale", scale)]),
             _ch_conv("convc", "sc", "cc", 16, 16, r),
             ([helper.make_node("Relu", ["cc"], ["rc"], name="reluc")], []), _ch_head("rc", 16, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def chan_split(seed: int = 13) -> onnx.ModelProto:
    """conv -> Split [8, 8] -> two convs -> Add; a second conv -> Slice channels 4:12 -> conv; Concat -> head."""
    r = rng(seed)
    parts = [_ch_conv("conv0", "x", "c0", 3, 16, r),
             ([helper.make_node("Split", ["c0", "sizes"], ["s0", "s1"], name="split", axis=1)],
              [init("sizes", np.array([8, 8], np.int64))]),
             _ch_conv("convl", "s0", "cl", 8, 8, r), _ch_conv("convr", "s1", "cr", 8, 8, r),
             ([helper.make_node("Add", ["cl", "cr"], ["a"], name="add")], []),
             _ch_conv("conv1", "x", "c1", 3, 16, r),
             ([helper.make_node("Slice", ["c1", "st", "en", "ax"], ["sl"], name="slice")],
              [init("st", np.array([4], np.int64)), init("en", np.array([12], np.int64)),
               init("ax", np.array([1], np.int64))]),
             _ch_conv("conv2", "sl", "c2", 8, 16, r),
             ([helper.make_node("Concat", ["a", "c2"], ["cat"], name="concat", axis=1)], []),
             _ch_head("cat", 24, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def chan_depthwise(seed: int = 14) -> onnx.ModelProto:
    """MobileNet-style: conv -> Clip -> depthwise 3x3 (group 16) -> Clip -> pointwise -> Add(input) -> head."""
    r = rng(seed)
    lo, hi = init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))
    parts = [_ch_conv("conv0", "x", "c0", 3, 16, r),
             ([helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0")], [lo, hi]),
             _ch_conv("dw", "r0", "d", 16, 16, r, group=16),
             ([helper.make_node("Clip", ["d", "lo", "hi"], ["rd"], name="clipd")], []),
             _ch_conv("pw", "rd", "p", 16, 16, r, k=1),
             ([helper.make_node("Add", ["p", "r0"], ["s"], name="add")], []), _ch_head("s", 16, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def chan_se(seed: int = 15) -> onnx.ModelProto:
    """conv -> HardSwish trunk; SE: GAP -> conv 16->8 -> Relu -> conv 8->16 -> HardSigmoid -> Mul(trunk);
    then conv -> swish (x * Sigmoid(x)) -> head."""
    r = rng(seed)
    parts = [_ch_conv("conv0", "x", "c0", 3, 16, r),
             ([helper.make_node("HardSwish", ["c0"], ["t"], name="hswish"),
               helper.make_node("GlobalAveragePool", ["t"], ["sq"], name="se_pool")], []),
             _ch_conv("se1", "sq", "e1", 16, 8, r, k=1),
             ([helper.make_node("Relu", ["e1"], ["er"], name="se_relu")], []),
             _ch_conv("se2", "er", "e2", 8, 16, r, k=1),
             ([helper.make_node("HardSigmoid", ["e2"], ["gate"], name="se_gate"),
               helper.make_node("Mul", ["t", "gate"], ["m"], name="se_mul")], []),
             _ch_conv("conv1", "m", "c1", 16, 16, r),
             ([helper.make_node("Sigmoid", ["c1"], ["sg"], name="sig"),
               helper.make_node("Mul", ["c1", "sg"], ["sw"], name="swish")], []), _ch_head("sw", 16, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def chan_mlp(seed: int = 16) -> onnx.ModelProto:
    """conv 3->8 on 4x4 -> Relu -> Flatten (C*H*W = 128) -> Gemm 128->32 -> Relu -> Gemm 32->16 -> Relu -> Gemm."""
    r = rng(seed)
    gemm = []
    for name, k, n in (("fc1", 128, 32), ("fc2", 32, 16), ("fc3", 16, 5)):
        gemm.append(([], [init(f"{name}_w", r.normal(0, 0.2, (n, k)).astype(np.float32)),
                          init(f"{name}_b", r.normal(0, 0.1, n).astype(np.float32))]))
    nodes = [helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Flatten", ["r0"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["g1"], name="fc1", transB=1),
             helper.make_node("Relu", ["g1"], ["h1"], name="relu1"),
             helper.make_node("Gemm", ["h1", "fc2_w", "fc2_b"], ["g2"], name="fc2", transB=1),
             helper.make_node("Relu", ["g2"], ["h2"], name="relu2"),
             helper.make_node("Gemm", ["h2", "fc3_w", "fc3_b"], ["y"], name="fc3", transB=1)]
    parts = [_ch_conv("conv0", "x", "c0", 3, 8, r), (nodes, [])] + gemm
    return _ch_build(parts, [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 5])])


def chan_shuffle(seed: int = 17) -> onnx.ModelProto:
    """conv -> Reshape [N,2,8,H,W] -> Transpose -> Reshape [N,16,H,W] (channel shuffle) -> conv -> head."""
    r = rng(seed)
    parts = [_ch_conv("conv0", "x", "c0", 3, 16, r),
             ([helper.make_node("Reshape", ["c0", "s5"], ["g5"], name="shuffle_reshape"),
               helper.make_node("Transpose", ["g5"], ["t5"], name="shuffle_transpose", perm=[0, 2, 1, 3, 4]),
               helper.make_node("Reshape", ["t5", "s4"], ["sh"], name="shuffle_back")],
              [init("s5", np.array([0, 2, 8, 8, 8], np.int64)), init("s4", np.array([0, 16, 8, 8], np.int64))]),
             _ch_conv("conv1", "sh", "c1", 16, 16, r),
             ([helper.make_node("Relu", ["c1"], ["r1"], name="relu1")], []), _ch_head("r1", 16, r)]
    return _ch_build(parts, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])])


def output_error(src, calib, n: int = 64):
    """A function ``compressed -> relative squared error of its outputs`` against ``src``'s, on
    the first ``n`` samples of ``calib`` (``compressed``: anything with a ``.proto``)."""
    from onnxcomp.api import load
    from onnxcomp.io.sessions import session

    x = np.load(calib)["input"][:n]
    ref = session(load(src).proto).run(None, {"input": x})[0]

    def err(compressed) -> float:
        y = session(compressed.proto).run(None, {"input": x})[0]
        return float(((y - ref) ** 2).sum() / (ref ** 2).sum())

    return err


def digits_sets(model_file: str, n_calib: int, n_test: int):
    """(model, calibration inputs, (test inputs, test labels)) of a digits model in models/."""
    import onnxcomp as oc

    model = oc.load(MODELS / model_file)
    with np.load(MODELS / "digits_calib.npz") as z:
        calib = z["input"][:n_calib]
    with np.load(MODELS / "digits_test.npz") as z:
        test = z["input"][:n_test], z["labels"][:n_test]
    return model, calib, test


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has installed a SIGTERM handler (Linux /proc), i.e. got past start-up."""
    import signal

    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            caught = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def conv_pair(rank: int) -> onnx.ModelProto:
    """Two convs (32 -> 64 -> 64 channels, 3 taps, the second strided and dilated) over a 1-D signal,
    or the same as 2-D convs over rows of height 1."""
    r = np.random.default_rng(7)
    w1, w2 = r.normal(0, 0.2, (64, 32, 3)).astype(np.float32), r.normal(0, 0.1, (64, 64, 3)).astype(np.float32)
    if rank == 1:
        a1, a2 = {"pads": [1, 1]}, {"pads": [2, 1], "strides": [2], "dilations": [2]}
        shape_in, shape_out = ["N", 32, 40], ["N", 64, 20]
    else:
        w1, w2 = w1[:, :, None], w2[:, :, None]
        a1 = {"pads": [0, 1, 0, 1]}
        a2 = {"pads": [0, 2, 0, 1], "strides": [1, 2], "dilations": [1, 2]}
        shape_in, shape_out = ["N", 32, 1, 40], ["N", 64, 1, 20]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **a1),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", **a2)]
    return make(nodes, [vi("x", shape_in)], [vi("y", shape_out)], [init("w1", w1), init("w2", w2)])
