"""A graph onnxruntime optimized and saved (com.microsoft FusedConv, BiasGelu). Its FusedConvs are
written out as the Conv and activation they fuse, so every pass compresses them (they were left
out without a word); weights other such ops read are named in a note; the elementwise fused ops
(BiasGelu, FastGelu, QuickGelu, BiasAdd) let channels through structured pruning."""
from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxcomp.cli import main
from onnxcomp.graph.normalize import unfused_copy

from . import models as M


def ort_optimized(tmp_path, name: str = "mobilenet_digits.onnx", level: str = "ORT_ENABLE_EXTENDED"):
    """A model from models/ as onnxruntime saves it at its extended level (Conv + Relu -> FusedConv,
    the MLP's bias and Gelu -> BiasGelu)."""
    out = tmp_path / "opt.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3  # (its warning that an NCHWc graph is for this machine only)
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(M.MODELS / name), so, providers=["CPUExecutionProvider"])
    if name != "mobilenet_digits.onnx" or level != "ORT_ENABLE_EXTENDED":
        return out, set()
    fused = [n for n in onnx.load(str(out)).graph.node if n.domain == "com.microsoft" and n.op_type == "FusedConv"]
    assert fused
    return out, {n.input[1] for n in fused}


def test_inspect_counts_fused_convs_as_the_layers_they_are(capsys, tmp_path):
    src, _ = ort_optimized(tmp_path)
    assert main(["inspect", str(src)]) == 0
    fused = capsys.readouterr().out
    assert main(["inspect", str(M.MODELS / "mobilenet_digits.onnx")]) == 0
    plain = capsys.readouterr().out
    pick = [line for line in plain.splitlines() if line.startswith(("Conv ", "total:"))]
    assert pick and all(line in fused for line in pick)  # the same layers, parameters and MACs
    assert "outside the ONNX standard" not in fused


def test_prune_compresses_fused_convs(capsys, tmp_path):
    src, names = ort_optimized(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--sparsity", "0.5", "--data", str(M.MODELS / "digits_calib.npz"),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime fused op(s) (FusedConv/FusedGemm) written as the standard ops they fuse" in text
    assert main(["prune", str(M.MODELS / "mobilenet_digits.onnx"), "--sparsity", "0.5", "--data",
                 str(M.MODELS / "digits_calib.npz"), "-o", str(tmp_path / "plain.onnx")]) == 0
    plain = capsys.readouterr().out
    prunable = [re.search(r"pruned [^\n]* prunable params", t).group(0) for t in (text, plain)]
    assert prunable[0] == prunable[1]  # every conv the plain export prunes, the fused convs included
    res = onnx.load(str(out))
    assert not any(n.op_type == "FusedConv" for n in res.graph.node)
    test = np.load(M.MODELS / "digits_test.npz")
    acc = [float(np.mean(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"input": test["input"]})[0].argmax(1) == test["labels"])) for p in (src, out)]
    assert acc[1] >= acc[0] - 0.02, acc
    assert names


def test_weights_of_other_ops_are_named(capsys, tmp_path):
    """A com.microsoft FusedMatMul reading a weight: no pass rewrites it, and the note says so."""
    r = M.rng(8)
    node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", name="fmm", transB=1, alpha=0.5)
    graph = helper.make_graph([node], "g", [M.vi("x", ["N", 32])], [M.vi("y", ["N", 48])],
                              [M.init("w", r.normal(size=(48, 32)).astype(np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    src = M.save(model, tmp_path / "fmm.onnx")
    assert main(["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "-o", str(tmp_path / "o.onnx")]) == 0
    out = capsys.readouterr().out
    assert "1 weight(s) are read by ops outside the ONNX standard (com.microsoft:FusedMatMul)" in out


def test_structured_prunes_mlp_neurons_through_bias_gelu(capsys, tmp_path):
    """onnxruntime's BiasGelu (bias + Gelu) is elementwise per channel: the MLP's neurons stay a
    prunable group (they were frozen: 'no channel rule for BiasGelu')."""
    src, _ = ort_optimized(tmp_path, "vit_mha_digits.onnx")
    assert any(n.op_type == "BiasGelu" for n in onnx.load(str(src)).graph.node)
    out = tmp_path / "out.onnx"
    assert main(["prune", "--structured", "--ratio", "0.3", str(src), "--data", str(M.MODELS / "digits_calib.npz"),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no channel rule for BiasGelu" not in text
    rows = [line for line in text.splitlines() if "mlp.0/MatMul" in line]
    assert rows and all(" pruned" in r for r in rows), rows
    test = np.load(M.MODELS / "digits_test.npz")
    acc = [float(np.mean(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"input": test["input"]})[0].argmax(1) == test["labels"])) for p in (src, out)]
    assert acc[1] >= acc[0] - 0.01, acc


@pytest.mark.parametrize("op,act,params", [("FusedConv", "HardSigmoid", [0.2, 0.5]), ("FusedConv", "Clip", [0.0, 6.0]),
                                           ("FusedGemm", "LeakyRelu", [0.1]), ("FusedGemm", "Relu", [])])
def test_unfuse_is_exact(op, act, params):
    r = M.rng(9)
    if op == "FusedConv":  # with the sum input Z
        node = helper.make_node(op, ["x", "w", "b", "z"], ["y"], domain="com.microsoft", name="f", pads=[1] * 4,
                                activation=act, activation_params=params)
        inits = [M.init("w", r.normal(size=(6, 3, 3, 3)).astype(np.float32)),
                 M.init("b", r.normal(size=6).astype(np.float32))]
        x_shape, z_shape, y_shape = [2, 3, 5, 5], [2, 6, 5, 5], [2, 6, 5, 5]
    else:
        kw = dict(zip(("activation_alpha", "activation_beta"), params))
        node = helper.make_node(op, ["x", "w", "b"], ["y"], domain="com.microsoft", name="f", transB=1, alpha=0.7,
                                activation=act, **kw)
        inits = [M.init("w", r.normal(size=(6, 4)).astype(np.float32)), M.init("b", r.normal(size=6).astype(np.float32))]
        x_shape, z_shape, y_shape = [2, 4], None, [2, 6]
    inputs = [M.vi("x", x_shape)] + ([M.vi("z", z_shape)] if z_shape else [])
    graph = helper.make_graph([node], "g", inputs, [M.vi("y", y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    plain = unfused_copy(model)
    onnx.checker.check_model(plain, full_check=True)
    assert not any(n.domain for n in plain.graph.node)
    feed = {"x": r.normal(size=x_shape).astype(np.float32) * 3}
    if z_shape:
        feed["z"] = r.normal(size=z_shape).astype(np.float32)
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for m in (model, plain))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv", [["factorize", "--ratio", "0.5"], ["prune", "--structured", "--ratio", "0.3"],
                                  ["quantize"]])
def test_nchwc_convs_are_not_convs(capsys, tmp_path, argv):
    """At onnxruntime's top level the saved convs are com.microsoft.nchwc Convs, kernels in a
    blocked layout: they were read as Convs (factorize wrote a model at 7 % test accuracy, exit 0;
    --structured and quantize crashed). Now they are left alone and named."""
    src, _ = ort_optimized(tmp_path, level="ORT_ENABLE_ALL")
    assert any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in onnx.load(str(src)).graph.node)
    out = tmp_path / "out.onnx"
    assert main([argv[0], str(src), *argv[1:], "--data", str(M.MODELS / "digits_calib.npz"), "-o", str(out)]) == 0
    assert "(com.microsoft.nchwc:Conv) and left alone by every pass" in capsys.readouterr().out
    test = np.load(M.MODELS / "digits_test.npz")
    acc = [float(np.mean(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"input": test["input"]})[0].argmax(1) == test["labels"])) for p in (src, out)]
    assert acc[1] >= acc[0] - 0.01, acc


def function_model() -> onnx.ModelProto:
    """Two calls of a model-local function (torch's export_modules_as_functions writes modules so):
    Conv -> Relu -> + x inside, its kernel passed in from the main graph's initializers."""
    r = M.rng(10)
    body = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["a"]),
            helper.make_node("Add", ["a", "x"], ["y"])]
    fn = helper.make_function("local", "Block", ["x", "w"], ["y"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], name="stem", pads=[1] * 4),
             helper.make_node("Block", ["h0", "w1"], ["h1"], name="b1", domain="local"),
             helper.make_node("Block", ["h1", "w2"], ["h2"], name="b2", domain="local"),
             helper.make_node("GlobalAveragePool", ["h2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    inits = [M.init(n, r.normal(0, 0.2, s).astype(np.float32)) for n, s in
             (("w0", (32, 3, 3, 3)), ("w1", (32, 32, 3, 3)), ("w2", (32, 32, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [M.vi("x", ["N", 3, 8, 8])], [M.vi("y", ["N", 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[fn])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_layers_inside_local_functions_are_layers(capsys, tmp_path):
    """They were named 'outside the ONNX standard' and left alone: 2 of the 3 convs."""
    src = M.save(function_model(), tmp_path / "fn.onnx")
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "Conv       3" in text and "outside the ONNX standard" not in text
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--sparsity", "0.5", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pruned 9.22 k of 18.43 k prunable params" in text  # w1 and w2, inside the function calls
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.ones((2, 3, 8, 8), np.float32)})[0].shape == (2, 32)
