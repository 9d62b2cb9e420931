"""An output that concatenates heads in different units (a detector's boxes in pixels beside class
probabilities) is judged slice by slice: a wrecked class score must not hide behind the boxes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.measure.fidelity import compare
from onnxcomp.measure.outputs import output_error, output_parts
from onnxcomp.measure.sensitivity import output_errors

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 8, 32)).astype(np.float32)
W_BOX = RNG.normal(size=(4, 8, 1)).astype(np.float32)
W_CLS = RNG.normal(size=(3, 8, 1)).astype(np.float32)


def detector(w_box=W_BOX, w_cls=W_CLS, *, axis: int = 1, transpose: bool = False) -> onnx.ModelProto:
    """x [N, 8, A] -> Concat(100 * conv_box(x), sigmoid(conv_cls(x))) along ``axis`` [-> Transpose]."""
    nodes = [helper.make_node("Conv", ["x", "wb"], ["b0"]), helper.make_node("Mul", ["b0", "s"], ["box"]),
             helper.make_node("Conv", ["x", "wc"], ["c0"]), helper.make_node("Sigmoid", ["c0"], ["cls"]),
             helper.make_node("Concat", ["box", "cls"], ["cat" if transpose else "out"], axis=axis)]
    if transpose:
        nodes.append(helper.make_node("Transpose", ["cat"], ["out"], perm=[0, 2, 1]))
    inits = [numpy_helper.from_array(w_box, "wb"), numpy_helper.from_array(w_cls, "wc"),
             numpy_helper.from_array(np.array(100.0, np.float32), "s")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": X})[0]


def test_the_concatenated_axis_is_found_through_a_transpose_and_never_the_batch():
    assert output_parts(detector()) == [(1, (4, 3))]
    assert output_parts(detector(transpose=True)) == [(2, (4, 3))]
    assert output_parts(detector(axis=-2)) == [(-2, (4, 3))]
    assert output_parts(detector(axis=0)) == [None]


def test_scores_that_moved_count_although_the_boxes_dominate_the_energy():
    ref, moved = _run(detector()), _run(detector(w_cls=W_CLS * 1.5))
    parts = output_parts(detector())[0]
    whole = output_error(ref, moved)
    assert whole < 1e-5  # what the tool measured before: the boxes hide the scores
    assert output_error(ref, moved, parts) > 1e-3
    assert output_error(ref, moved, parts) == output_error(ref, moved, (-2, (4, None)))  # one extent inferred
    # boxes that moved as much (relatively) still count as much as before
    boxes = _run(detector(w_box=W_BOX * 1.05))
    assert output_error(ref, boxes, parts) > 0.1 * output_error(ref, boxes)
    assert output_errors(detector(), [detector(w_cls=W_CLS * 1.5)], [{"x": X}])[0] > 1e-3


def test_the_fidelity_headline_reads_the_slices_and_says_so(tmp_path):
    orig, cand = tmp_path / "det.onnx", tmp_path / "moved.onnx"
    onnx.save(detector(), orig)
    onnx.save(detector(w_cls=-W_CLS), cand)  # every score inverted: a broken detector
    data = tmp_path / "x.npz"
    np.savez(data, x=X)
    report = compare(orig, cand, str(data))
    out = report.outputs[0]
    assert out["cosine_whole"] > 0.999
    assert report.headline == ("cosine", out["cosine"]) and out["cosine"] < 0.9
    assert "concatenated axis 1" in report.summary
    same = compare(orig, orig, str(data))
    assert same.headline[1] > 0.99999


def yolox(w_cls=W_CLS) -> onnx.ModelProto:
    """x [N, 8, 4, 8] at two strides; per stride Concat(100 * box, sigmoid(obj), sigmoid(cls)) along
    channels, Reshape to [N, 8, anchors]; the strides concatenated along anchors, then Transpose to
    [N, anchors, fields] (YOLOX's head, as ddddocr's detector exports it)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["x2"], kernel_shape=[2, 2], strides=[2, 2])]
    for s, src in (("a", "x"), ("b", "x2")):
        nodes += [helper.make_node("Conv", [src, "wb"], [f"b0{s}"]),
                  helper.make_node("Mul", [f"b0{s}", "k"], [f"box{s}"]),
                  helper.make_node("Conv", [src, "wo"], [f"o0{s}"]),
                  helper.make_node("Sigmoid", [f"o0{s}"], [f"obj{s}"]),
                  helper.make_node("Conv", [src, "wc"], [f"c0{s}"]),
                  helper.make_node("Sigmoid", [f"c0{s}"], [f"cls{s}"]),
                  helper.make_node("Concat", [f"box{s}", f"obj{s}", f"cls{s}"], [f"f{s}"], axis=1),
                  helper.make_node("Reshape", [f"f{s}", "shape"], [f"r{s}"])]
    nodes += [helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=2),
              helper.make_node("Transpose", ["cat"], ["out"], perm=[0, 2, 1])]
    inits = [numpy_helper.from_array(W_BOX[..., None], "wb"), numpy_helper.from_array(W_CLS[:1, :, :, None], "wo"),
             numpy_helper.from_array(w_cls[..., None], "wc"), numpy_helper.from_array(np.array(100.0, np.float32), "k"),
             numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape")]
    graph = helper.make_graph(nodes, "yolox", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_yolox_fields_are_judged_not_its_anchors():
    """The output's last Concat joins strides (anchors, same units); the fields (box in pixels,
    objectness, classes) were joined per stride before a Reshape: those are the slices judged.
    A ddddocr detector structurally pruned to F1 0.59 against the original read cosine 0.994 when
    its anchors were judged."""
    import onnxruntime as ort

    parts = output_parts(yolox())[0]
    assert parts == (2, (4, 1, 3))
    x = X.reshape(16, 8, 4, 8)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    ref, moved = run(yolox()), run(yolox(w_cls=W_CLS * 1.5))
    assert ref.shape == (16, 40, 8)
    assert output_error(ref, moved, (1, (32, 8))) < 1e-4  # by anchors, as before: the boxes hide it
    assert output_error(ref, moved, parts) > 1e-3


def yolov5() -> onnx.ModelProto:
    """Per stride: Conv to 3 x 7 channels, Reshape [N, 3, 7, H, W], Transpose to [N, 3, H, W, 7],
    Sigmoid, Split into xy / wh / scores, xy and wh scaled to pixels, Concat along the last axis,
    Reshape [N, 3*H*W, 7]; the strides concatenated along anchors (YOLOv5's exported Detect)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["x2"], kernel_shape=[2, 2], strides=[2, 2])]
    for s, src, hw in (("a", "x", (4, 8)), ("b", "x2", (2, 4))):
        nodes += [helper.make_node("Conv", [src, "w"], [f"c{s}"]),
                  helper.make_node("Reshape", [f"c{s}", f"s5{s}"], [f"r{s}"]),
                  helper.make_node("Transpose", [f"r{s}"], [f"t{s}"], perm=[0, 1, 3, 4, 2]),
                  helper.make_node("Sigmoid", [f"t{s}"], [f"p{s}"]),
                  helper.make_node("Split", [f"p{s}", "split"], [f"xy{s}", f"wh{s}", f"sc{s}"], axis=4),
                  helper.make_node("Mul", [f"xy{s}", "k"], [f"xyk{s}"]),
                  helper.make_node("Mul", [f"wh{s}", "k"], [f"whk{s}"]),
                  helper.make_node("Concat", [f"xyk{s}", f"whk{s}", f"sc{s}"], [f"f{s}"], axis=-1),
                  helper.make_node("Reshape", [f"f{s}", "s3"], [f"o{s}"])]
    nodes.append(helper.make_node("Concat", ["oa", "ob"], ["out"], axis=1))
    inits = [numpy_helper.from_array(RNG.normal(size=(21, 8, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2, 2, 3], np.int64), "split"),
             numpy_helper.from_array(np.array(100.0, np.float32), "k"),
             numpy_helper.from_array(np.array([0, 3, 7, 4, 8], np.int64), "s5a"),
             numpy_helper.from_array(np.array([0, 3, 7, 2, 4], np.int64), "s5b"),
             numpy_helper.from_array(np.array([0, -1, 7], np.int64), "s3")]
    graph = helper.make_graph(nodes, "yolov5", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_yolov5_fields_are_found_through_a_reshape_that_keeps_the_last_axis():
    import onnxruntime as ort

    model = yolov5()
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X.reshape(16, 8, 4, 8)})[0]
    assert out.shape == (16, 3 * 32 + 3 * 8, 7)
    assert output_parts(model) == [(2, (2, 2, 3))]
