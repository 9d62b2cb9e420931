"""Activation capture: intermediate tensors through onnxruntime, on a copy, with bounded memory."""
import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import helper

from onnxcomp import io
from onnxcomp.io import sessions as runtime
from onnxcomp.graph.subgraph import activation_tensors, expose
from onnxcomp.measure.capture import capture, collect
from onnxcomp.errors import ConfigError, ModelLoadError

from . import models as M


@pytest.fixture
def model():
    return M.classifier()


def _batches(n=3, size=4):
    r = np.random.default_rng(0)
    return [{"x": r.normal(size=(size, 1, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_capture_matches_a_manual_run_and_leaves_the_model_alone(model):
    before = model.SerializeToString()
    outs = list(capture(model, ["relu1", "x"], _batches(), include_outputs=True))
    assert model.SerializeToString() == before
    assert len(outs) == 3 and set(outs[0]) == {"relu1", "x", "logits"}
    assert outs[0]["relu1"].shape == (4, 8, 8, 8) and outs[0]["relu1"].min() >= 0
    sess = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    assert np.allclose(outs[1]["logits"], sess.run(None, _batches()[1])[0], atol=1e-5)
    assert np.array_equal(outs[2]["x"], _batches()[2]["x"])  # graph inputs come from the feed


def test_capture_splits_batches_under_a_byte_cap(model):
    outs = list(capture(model, ["conv1"], _batches(n=1, size=8), max_bytes=3 * 8 * 8 * 8 * 4))
    assert [len(o["conv1"]) for o in outs] == [1, 3, 3, 1]


def test_integer_tensors_without_inferred_type_are_captured():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=1)]
    model = M.make(nodes, [M.vi("x", ["N", 3])], [M.vi("y", [2])])
    out = next(capture(model, ["s"], [{"x": np.ones((5, 3), np.float32)}]))
    assert out["s"].dtype == np.int64 and list(out["s"]) == [5, 3]


def test_collect_concatenates_and_respects_caps(model):
    got = collect(model, ["relu2"], _batches(), max_samples=10)
    assert got["relu2"].shape == (10, 8, 4, 4)
    with pytest.raises(ConfigError, match="would exceed"):
        collect(model, ["relu1"], _batches(), max_bytes=10_000)


def test_unknown_tensor_and_activation_order(model):
    with pytest.raises(ConfigError, match="'nope' is not produced"):
        expose(model, ["nope"])
    assert activation_tensors(model) == ["conv1", "bn1", "relu1", "conv2", "relu2", "flat", "logits"]


def test_runtime_session_errors(tmp_path, model):
    with pytest.raises(ConfigError, match="choose one of: .*CPUExecutionProvider"):
        runtime.session(model, provider="NoSuchExecutionProvider")
    assert runtime.resolve_provider("cpu") == "CPUExecutionProvider"
    with pytest.raises(ModelLoadError, match="does not exist"):
        runtime.session(tmp_path / "missing.onnx")
    sess = runtime.session(expose(model, ["conv2"]), threads=1)
    out = list(runtime.run_batches(sess, _batches(n=2)))
    assert len(out) == 2 and set(out[0]) == {"logits", "conv2"}


def test_huge_protos_go_through_a_temp_file(model, monkeypatch):
    """Above the protobuf threshold the session reads a temp file; the caller's proto keeps its data."""
    monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", 1000)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    sess = runtime.session(model)
    assert sess._onnxcomp_tmp is not None
    assert sess.run(None, _batches(n=1)[0])[0].shape == (4, 10)
    assert model == before  # no tensor moved to external data, nothing cleared
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
