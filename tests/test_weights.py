"""Weight discovery: every place real exporters put weights, and writing them back."""
import numpy as np
import onnxruntime as ort

from onnxcomp.graph.weights import find_weights, set_weight

from . import models as M


def run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def test_initializer_weights_roles_and_axes():
    found = find_weights(M.conv_bn_relu()).by_name()
    assert set(found) == {"w1", "b1", "w2", "fc", "fcb"}  # BN params are not compute weights
    assert (found["w1"].role, found["w1"].out_axis, found["w1"].in_axis) == ("conv", 0, 1)
    assert found["b1"].role == "conv_bias" and found["b1"].is_bias
    assert (found["fc"].role, found["fc"].out_axis, found["fc"].in_axis) == ("gemm_b", 0, 1)
    assert found["w1"].source == "initializer" and found["w1"].consumers == ["conv1"]


def test_constant_node_weights_found_and_written_back():
    model = M.constant_node_weights()
    found = find_weights(model).by_name()
    assert found["w"].source == "constant" and found["w"].role == "conv"
    assert (found["m"].role, found["m"].out_axis, found["m"].in_axis) == ("matmul_b", 1, 0)
    x = {"x": M.rng(9).normal(size=(1, 2, 4, 4)).astype(np.float32)}
    set_weight(model, found["w"], np.zeros(found["w"].shape, np.float32))
    assert np.all(run(model, x) == 0)  # the Constant node now holds the new values


def test_constant_of_shape_weight_becomes_initializer_on_write():
    model = M.constant_of_shape_weights()
    w = find_weights(model).by_name()["w"]
    assert w.source == "constant_of_shape" and w.shape == (4, 3, 3, 3)
    assert np.all(w.values() == 0.5)
    new = np.arange(w.size, dtype=np.float32).reshape(w.shape) / w.size
    set_weight(model, w, new)
    again = find_weights(model).by_name()["w"]
    assert again.source == "initializer" and np.array_equal(again.values(), new)
    x = np.ones((1, 3, 5, 5), np.float32)
    assert np.allclose(run(model, {"x": x})[0, :, 0, 0], new.reshape(4, -1).sum(1), rtol=1e-5)


def test_shared_weight_is_one_weight_with_two_uses():
    found = find_weights(M.shared_weight())
    assert len(found) == 1
    w = found.weights[0]
    assert w.shared and w.consumers == ["mm1", "mm2"] and w.roles == ("matmul_b",)


def test_gemm_trans_and_matmul_constant_on_the_left():
    found = find_weights(M.gemm_and_matmul_sides()).by_name()
    assert (found["wt"].out_axis, found["wt"].in_axis) == (0, 1)  # transB=1: [N, K]
    assert (found["wn"].out_axis, found["wn"].in_axis) == (1, 0)  # transB=0: [K, N]
    assert (found["left"].role, found["left"].out_axis, found["left"].in_axis) == ("matmul_a", 0, 1)


def test_fp16_weight():
    w = find_weights(M.fp16_conv()).weights[0]
    assert w.dtype == np.float16 and w.nbytes == 3 * 2 * 9 * 2


def test_quantized_weights_are_reported_and_left_alone():
    found = find_weights(M.qdq_weight())
    assert [w.name for w in found] == ["wf"]
    assert "wq" in found.quantized
    found = find_weights(M.qdq_float_weight())
    assert len(found) == 0 and "w" in found.quantized


def test_reshaped_constant_is_seen_in_its_consumer_shape():
    """The zoo's inception_v1 classifier: ConstantOfShape [1,1,1000,1024] -> Reshape -> Gemm."""
    model = M.onnx.load(str(M.LIGHT / "light_inception_v1.onnx"))
    w = find_weights(model).by_name()["loss3/classifier_w_0"]
    assert w.shape == (1000, 1024) and w.stored_shape == (1, 1, 1000, 1024)
    assert (w.role, w.out_axis) == ("gemm_b", 0)
