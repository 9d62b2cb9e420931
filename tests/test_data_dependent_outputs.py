"""Outputs that cannot be compared element for element: their shape depends on the data (a
detector exported with its NMS, a NonZero of a mask), or they are not tensors (sklearn-onnx's
ZipMap: a list of dicts; every calibrated command crashed on those too). Every command fits and measures the model up to the tensors those ops read and keeps the
nodes after them; before, the calibrated commands crashed (traceback) and the data-free ones
refused the model ("output 'boxes' is 11756x4 in the original but 9423x4 in the candidate")."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxcomp.cli import main
from onnxcomp.graph import tail

from . import models as M

CALIB = M.MODELS / "digits_calib.npz"


def with_hits(keep_logits: bool) -> onnx.ModelProto:
    """models/mobilenet_digits.onnx (trained) with a data-dependent output: the indices of the
    classes whose probability passes 0.5 (NonZero of a mask), beside the logits or alone."""
    m = onnx.load(str(M.MODELS / "mobilenet_digits.onnx"))
    g = m.graph
    logits = g.output[0].name
    g.node.extend([helper.make_node("Softmax", [logits], ["prob"], name="soft", axis=1),
                   helper.make_node("Greater", ["prob", "half"], ["mask"], name="gt"),
                   helper.make_node("NonZero", ["mask"], ["hits"], name="nz")])
    g.initializer.append(M.init("half", np.array(0.5, np.float32)))
    if not keep_logits:
        del g.output[:]
    g.output.append(helper.make_tensor_value_info("hits", TensorProto.INT64, [2, "K"]))
    return m


def nms_detector() -> onnx.ModelProto:
    """Conv features -> 32 boxes and one score per box -> NonMaxSuppression -> Gather of the
    kept boxes (seeded weights; the shapes, not the task, are the point)."""
    r = M.rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["f"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["f"], ["fr"], name="r1"),
             helper.make_node("Conv", ["fr", "wb"], ["b4"], name="cb", strides=[2, 2]),  # [N, 4, 4, 8]
             helper.make_node("Conv", ["fr", "ws"], ["s1"], name="cs", strides=[2, 2]),  # [N, 1, 4, 8]
             helper.make_node("Reshape", ["b4", "shape_b"], ["b"], name="rb"),
             helper.make_node("Transpose", ["b"], ["boxes"], name="tb", perm=[0, 2, 1]),  # [N, 32, 4]
             helper.make_node("Sigmoid", ["s1"], ["sg"], name="sig"),
             helper.make_node("Reshape", ["sg", "shape_s"], ["scores"], name="rs"),  # [N, 1, 32]
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["sel"], name="nms"),
             helper.make_node("Gather", ["sel", "two"], ["box_idx"], name="gi", axis=1),
             helper.make_node("Gather", ["boxes", "box_idx"], ["picked"], name="gp", axis=1)]
    inits = [M.init("w1", r.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)),
             M.init("wb", r.normal(0, 0.3, (4, 16, 2, 2)).astype(np.float32)),
             M.init("ws", r.normal(0, 0.3, (1, 16, 2, 2)).astype(np.float32)),
             M.init("shape_b", np.array([0, 4, -1], np.int64)), M.init("shape_s", np.array([0, 1, -1], np.int64)),
             M.init("max_out", np.array([10], np.int64)), M.init("iou", np.array([0.5], np.float32)),
             M.init("thr", np.array([0.3], np.float32)), M.init("two", np.array(2, np.int64))]
    return M.make(nodes, [M.vi("x", ["N", 3, 8, 16])], [M.vi("picked", ["N", "K", 4]), M.vi("sel", ["K", 3],
                                                                                             TensorProto.INT64)],
                  inits)


def test_split_measures_at_the_float_tensors_and_attach_restores():
    m = with_hits(keep_logits=False)
    full = onnx.ModelProto()
    full.CopyFrom(m)
    cut = tail.split(m)
    assert [o.name for o in m.graph.output] == ["prob"]  # the mask joined the tail: measured at what it tests
    assert {n.op_type for n in cut.nodes} == {"Greater", "NonZero"} and cut.dynamic == ["NonZero"]
    tail.attach(m, cut)
    assert [o.name for o in m.graph.output] == ["hits"]
    assert sorted(n.name for n in m.graph.node) == sorted(n.name for n in full.graph.node)
    onnx.checker.check_model(m, full_check=True)


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5"], ["cluster", "--bits", "4"],
                                  ["prune", "--structured", "--ratio", "0.3"], ["factorize", "--ratio", "0.5"]])
def test_commands_with_data_keep_the_tail(capsys, tmp_path, argv):
    src = M.save(with_hits(keep_logits=True), tmp_path / "hits.onnx")
    out = tmp_path / "out.onnx"
    assert main([argv[0], str(src), *argv[1:], "--data", str(CALIB), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "output(s) hits: their shape depends on the data (after NonZero)" in text
    res = onnx.load(str(out))
    assert [o.name for o in res.graph.output] == ["logits", "hits"]
    assert [n.op_type for n in res.graph.node if n.name in ("gt", "nz")] == ["Greater", "NonZero"]
    test = np.load(M.MODELS / "digits_test.npz")
    x, y = test["input"][:300], test["labels"][:300]
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.mean(b[0].argmax(1) == y) >= np.mean(a[0].argmax(1) == y) - 0.05
    assert b[1].shape[0] == 2  # [2, K] indices of the confident (sample, class) pairs


def test_data_free_prune_of_a_model_whose_only_output_is_sized_by_the_data(capsys, tmp_path):
    src = M.save(with_hits(keep_logits=False), tmp_path / "hits.onnx")
    out = tmp_path / "out.onnx"
    assert main(["prune", str(src), "--sparsity", "0.5", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "fidelity: " in captured.out and "Traceback" not in captured.err
    assert "compare models with the same outputs" not in captured.err


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5", "--min-params", "1"],
                                  ["cluster", "--bits", "3", "--min-params", "1"],
                                  ["prune", "--structured", "--ratio", "0.5", "--round-to", "1"]])
def test_nms_detector(capsys, tmp_path, argv):
    src = M.save(nms_detector(), tmp_path / "det.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=M.rng(6).normal(size=(24, 3, 8, 16)).astype(np.float32))
    out = tmp_path / "out.onnx"
    assert main([argv[0], str(src), *argv[1:], "--data", str(data), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "after NonMaxSuppression" in text and "(boxes, scores)" in text
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    picked, sel = sess.run(None, {"x": np.ones((2, 3, 8, 16), np.float32)})
    assert picked.shape[-1] == 4 and sel.shape[1] == 3


def test_sensitivity_measures_before_the_tail(capsys, tmp_path):
    src = M.save(with_hits(keep_logits=False), tmp_path / "hits.onnx")
    assert main(["sensitivity", str(src), "--data", str(CALIB), "--samples", "16"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def sklearn_mlp(tmp_path):
    """An MLP trained on sklearn's digits, written as sklearn-onnx writes classifiers: a label
    output and the probabilities as a ZipMap (a list of {class: probability} dicts, not a tensor)."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    with warnings.catch_warnings():  # (not converged to the last digit: it is trained enough)
        warnings.simplefilter("ignore")
        clf = MLPClassifier((64,), max_iter=60, random_state=0).fit(x[:1200], y[:1200])
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z0"]),
             helper.make_node("Add", ["z0", "b2"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1),
             helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0),
             helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=list(range(10)))]
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64,
                                                                     helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(nodes, "mlp", [M.vi("x", ["N", 64])],
                              [M.vi("label", ["N"], TensorProto.INT64), helper.make_value_info("probabilities", seq)],
                              [M.init(n, v.astype(np.float32)) for n, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    src = M.save(model, tmp_path / "mlp.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x[1200:1328])
    return src, calib, x[1400:], y[1400:]


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5"], ["cluster", "--bits", "4"]])
def test_sklearn_zipmap_classifier(capsys, tmp_path, argv):
    src, calib, x, y = sklearn_mlp(tmp_path)
    out = tmp_path / "out.onnx"
    assert main([argv[0], str(src), *argv[1:], "--min-params", "1", "--data", str(calib), "-o", str(out)]) == 0
    assert "output(s) probabilities: they are not tensors (after ZipMap)" in capsys.readouterr().out
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert isinstance(b[1], list) and isinstance(b[1][0], dict)  # still sklearn-onnx's list of dicts
    assert np.mean(b[0] == y) >= np.mean(a[0] == y) - 0.03


def test_outputs_of_different_shapes_count_as_moved_by_their_size():
    """A shape no rule cuts off (an op beyond graph.tail's list) makes the error 1, not a crash."""
    from onnxcomp.measure.outputs import output_error

    a = np.ones((5, 4), np.float32)
    assert output_error(a, np.ones((7, 4), np.float32)) == 1.0
    assert output_error(a, a * 1.1) == pytest.approx(0.01)


def test_a_nonzero_whose_result_keeps_the_outputs_shape_cuts_nothing(capsys, tmp_path):
    """A NonZero inside (a count of confident classes added to the logits): every output keeps
    its declared shape, so the model is compressed and measured whole."""
    m = with_hits(keep_logits=False)
    g = m.graph
    del g.output[:]
    g.node.extend([helper.make_node("Shape", ["hits"], ["hs"], name="hs", start=1),
                   helper.make_node("Cast", ["hs"], ["hf"], name="hf", to=TensorProto.FLOAT),
                   helper.make_node("Add", ["prob", "hf"], ["score"], name="score")])
    g.output.append(M.vi("score", ["batch", 10]))
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    assert tail.split(m) is None
    src = M.save(m, tmp_path / "count.onnx")
    assert main(["prune", str(src), "--sparsity", "0.5", "--data", str(CALIB), "-o", str(tmp_path / "o.onnx")]) == 0
    assert "depends on the data" not in capsys.readouterr().out
