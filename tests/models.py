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
