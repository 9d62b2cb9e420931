"""A graph onnxruntime optimized and saved (com.microsoft FusedConv, BiasGelu): FusedConv's weights
are left alone, and every command says so instead of silently compressing only the plain layers;
the elementwise fused ops (BiasGelu, FastGelu, QuickGelu, BiasAdd) let channels through."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcomp.cli import main

from . import models as M


def ort_optimized(tmp_path, name: str = "mobilenet_digits.onnx"):
    """A model from models/ as onnxruntime saves it at its extended level (Conv + Relu -> FusedConv,
    the MLP's bias and Gelu -> BiasGelu)."""
    out = tmp_path / "opt.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(M.MODELS / name), so, providers=["CPUExecutionProvider"])
    if name != "mobilenet_digits.onnx":
        return out, set()
    fused = [n for n in onnx.load(str(out)).graph.node if n.domain == "com.microsoft" and n.op_type == "FusedConv"]
    assert fused
    return out, {n.input[1] for n in fused}


def test_inspect_names_weights_of_other_domains(capsys, tmp_path):
    src, _ = ort_optimized(tmp_path)
    assert main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "are read by ops outside the ONNX standard (com.microsoft:FusedConv) and left alone by every pass" in out
    assert "before onnxruntime's offline optimizations" in out


def test_prune_says_so_and_leaves_them_exact(capsys, tmp_path):
    src, names = ort_optimized(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--sparsity", "0.5", "--data", str(M.MODELS / "digits_calib.npz"),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "com.microsoft:FusedConv" in text
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer if t.name in names}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if t.name in names}
    assert before.keys() == after.keys() == names
    assert all(np.array_equal(before[k], after[k]) for k in names)


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
