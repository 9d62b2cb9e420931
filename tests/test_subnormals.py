"""Weights the passes write hold no float32 subnormals: x86 CPUs run them ~100x slower."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxcomp as oc

TINY = np.finfo(np.float32).tiny


def _model() -> onnx.ModelProto:
    """Two 1x1 convs; the first kernel's input channel 2 is almost dead (subnormal weights), as a
    channel that training drove to zero leaves it."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 32, 1, 1)).astype(np.float32)
    w1[:, 2] = np.float32(3e-39) * np.sign(w1[:, 2])
    w2 = rng.standard_normal((16, 64, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_rewritten_weights_hold_no_subnormals():
    """A factorized PP-OCRv4 recogniser's SVD factors held ~1,700 subnormals and the model ran
    1.9x slower than the original (one 1x1 conv 17 ms instead of 0.2 ms); zeroed, 2x faster."""
    result = oc.factorize(_model(), ratio=0.5, measure=False)
    arrays = [numpy_helper.to_array(t) for t in result.proto.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert len(arrays) >= 3  # the first conv was factorized
    assert not any(((np.abs(a) < TINY) & (a != 0)).any() for a in arrays)
    assert any("subnormal weight value(s) set to 0" in n for r in result.results for n in r.notes)


def test_constant_node_weights_are_flushed_and_untouched_ones_kept():
    """OBS-pruned weights the recogniser keeps in Constant nodes held ~4,800 subnormals and the
    calibrated `prune --sparsity 0.5` model ran 2.8x slower than the original (now 0.99x)."""
    from onnxcomp.graph.edit import flush_subnormals

    model = _model()
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    del model.graph.initializer[0]
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")))
    w2 = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w2[0, 0] = np.float32(1e-39)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w2, "w2"))
    assert flush_subnormals(model, keep={"w2"}) == 64  # w1's channel 2; w2 is an untouched input weight
    const = numpy_helper.to_array(model.graph.node[0].attribute[0].t)
    assert (const[:, 2] == 0).all() and np.array_equal(const[:, 3], w1[:, 3])
    assert numpy_helper.to_array(model.graph.initializer[0])[0, 0] == np.float32(1e-39)
