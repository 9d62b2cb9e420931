"""Inputs whose samples are not on axis 0: an RNN state ``state[2, N, 16]`` beside ``x[N, 32]`` and a
scalar read by every sample (silero-vad's ``state[2, batch, 128]`` and ``sr``). ``--data`` used to
refuse them ("calibration data needs inputs with samples on axis 0"); the user now stores them as
the model takes them and every calibrated command runs on them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxcomp.graph.layout import adapt, sample_axes, strip

from . import models as M
from .test_unusual import run


def stateful(seed: int = 21) -> onnx.ModelProto:
    """y = scale * (relu([x, state[0]] @ W1) @ W2), stateN = state / 2, with an If (on scale > 0)
    whose branches read the state from the outer scope."""
    r = M.rng(seed)
    zero = M.const_node("zero", np.array(0, np.int64))
    half = M.const_node("half", np.array(0.5, np.float32))
    nil = M.const_node("nil", np.array(0.0, np.float32))
    then = helper.make_graph([helper.make_node("Mul", ["state", "half"], ["t_out"], name="t")], "then", [],
                             [M.vi("t_out", [2, "N", 16])])
    other = helper.make_graph([helper.make_node("Neg", ["state"], ["e_out"], name="e")], "else", [],
                              [M.vi("e_out", [2, "N", 16])])
    nodes = [zero, half, nil,
             helper.make_node("Gather", ["state", "zero"], ["s0"], name="first_layer", axis=0),
             helper.make_node("Concat", ["x", "s0"], ["xs"], name="cat", axis=1),
             helper.make_node("MatMul", ["xs", "W1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "W2"], ["y0"], name="mm2"),
             helper.make_node("Mul", ["y0", "scale"], ["y"], name="scaled"),
             helper.make_node("Greater", ["scale", "nil"], ["pos"], name="sign"),
             helper.make_node("If", ["pos"], ["stateN"], name="carry", then_branch=then, else_branch=other)]
    inits = [M.init("W1", r.normal(0, 0.2, (48, 64)).astype(np.float32)),
             M.init("W2", r.normal(0, 0.2, (64, 32)).astype(np.float32))]
    return M.make(nodes, [M.vi("x", ["N", 32]), M.vi("state", [2, "N", 16]), M.vi("scale", [])],
                  [M.vi("y", ["N", 32]), M.vi("stateN", [2, "N", 16])], inits)


def samples(n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs as the model takes them: x and the state's first layer share a 6-dim latent."""
    r, mix = M.rng(seed), M.rng(99)
    a, b = mix.normal(size=(6, 32)), mix.normal(size=(6, 16))
    z = r.normal(size=(n, 6))
    state = np.stack([z @ b, r.normal(size=(n, 16))]).astype(np.float32)
    return {"x": (z @ a + 0.05 * r.normal(size=(n, 32))).astype(np.float32), "state": state,
            "scale": np.array(2.0, np.float32)}


def ort_run(path, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_which_inputs_have_samples_off_axis_0():
    assert sample_axes(stateful()) == {"state": 1, "scale": None}
    fixed = M.make([helper.make_node("Neg", ["state"], ["o"], name="n")], [M.vi("x", [1, 8]),
                   M.vi("state", [2, 1, 8])], [M.vi("o", [2, 1, 8])])
    assert sample_axes(fixed) == {}  # a fixed batch: samples on axis 0 as before
    unnamed = M.make([helper.make_node("Neg", ["s"], ["o"], name="n")], [M.vi("x", [None, 8]),
                     M.vi("s", [3, None, 8])], [M.vi("o", [3, None, 8])])
    assert sample_axes(unnamed) == {"s": 1}
    seq_first = M.make([helper.make_node("Neg", ["h0"], ["o"], name="n")], [M.vi("x", ["T", "N", 8]),
                       M.vi("h0", [1, "N", 8])], [M.vi("o", [1, "N", 8])])
    assert sample_axes(seq_first) == {"x": 1, "h0": 1}  # the one name both share is the batch
    text = M.make([helper.make_node("Neg", ["ids"], ["o"], name="n")], [M.vi("ids", ["batch", "seq"]),
                  M.vi("mask", ["batch", "seq"])], [M.vi("o", ["batch", "seq"])])
    assert sample_axes(text) == {}


def test_adapter_runs_samples_first_and_strips_to_the_same_model():
    model = stateful()
    adapted = adapt(model, sample_axes(model))
    onnx.checker.check_model(adapted, full_check=True)
    feed = samples(5, seed=1)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    first = {"x": feed["x"], "state": np.moveaxis(feed["state"], 1, 0), "scale": np.full(5, 2.0, np.float32)}
    got = ort.InferenceSession(adapted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, first)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert adapt(adapted, sample_axes(model)).SerializeToString() == adapted.SerializeToString()
    assert strip(adapted).SerializeToString() == model.SerializeToString()


def test_calibrated_prune_on_a_state_and_a_scalar(capsys, tmp_path):
    """prune --data fits the layers with OBS on the user's state and scalar; the written model keeps
    the input layout, and on unseen samples it is closer to the original than data-free pruning."""
    src = M.save(stateful(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **samples(64, seed=2))
    common = ["--sparsity", "0.7", "--min-params", "1000", "--encoding", "dense"]
    code, out, err = run(capsys, ["prune", str(src), *common, "--data", str(tmp_path / "calib.npz"),
                                  "--holdout", "0.25", "-o", str(tmp_path / "obs.onnx")])
    assert code == 0, err
    assert "score=obs" in out and "magnitude mask" not in out + err
    assert "fidelity: output" in out and "of 64 samples: the last 16 held out" in out
    code, out, err = run(capsys, ["prune", str(src), *common, "-o", str(tmp_path / "free.onnx")])
    assert code == 0, err
    written = onnx.load(str(tmp_path / "obs.onnx"))
    assert [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in written.graph.input] == \
        [["N", 32], [2, "N", 16], []]
    assert not any(n.name.startswith("onnxcomp_samples") for n in written.graph.node)
    test = samples(200, seed=3)
    ref = ort_run(src, test)[0]
    err_obs, err_free = (np.linalg.norm(ort_run(tmp_path / f, test)[0] - ref) / np.linalg.norm(ref)
                         for f in ("obs.onnx", "free.onnx"))
    assert err_obs < 0.6 * err_free, (err_obs, err_free)  # measured: 0.27 against 0.59
    code, out, err = run(capsys, ["compare", str(src), str(tmp_path / "obs.onnx"), "--data",
                                  str(tmp_path / "calib.npz")])
    assert code == 0 and "cosine" in out, err


@pytest.mark.parametrize("key, value, message", [
    ("state", np.zeros((64, 2, 16), np.float32), "array 'state' has shape 64x2x16 but the model expects "
                                                  "state[2,N,16] float32, its samples on axis 1"),
    ("scale", np.full(64, 2.0, np.float32), "input 'scale' is a scalar"),
])
def test_arrays_in_another_layout_are_one_line(capsys, tmp_path, key, value, message):
    src = M.save(stateful(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **{**samples(64, seed=2), key: value})
    code, out, err = run(capsys, ["cluster", str(src), "--bits", "4", "--data", str(tmp_path / "calib.npz"),
                                  "-o", str(tmp_path / "o.onnx")])
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "o.onnx").exists()


def test_api_batches_take_the_models_layout(tmp_path):
    """Batches handed to the API are in the model's layout too (several chunks, re-cut into batches)."""
    import onnxcomp as oc

    data = samples(48, seed=4)
    chunks = [{"x": data["x"][i:i + 12], "state": data["state"][:, i:i + 12], "scale": data["scale"]}
              for i in range(0, 48, 12)]
    result = oc.cluster(stateful(), bits=4, data=chunks, min_params=1000)
    assert result.proto.graph.input[1].type.tensor_type.shape.dim[0].dim_value == 2
    report = result.to_dict()["passes"][0]
    assert [c["action"] for c in report["changes"]] == ["clustered", "clustered"]
    assert any("GPTQ-style assignment with error feedback on 2 weight(s)" in n for n in report["notes"])
    feed = samples(16, seed=5)
    path = M.save(result.proto, tmp_path / "c.onnx")
    y, ref = ort_run(path, feed)[0], ort_run(M.save(stateful(), tmp_path / "m.onnx"), feed)[0]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.05


def test_sensitivity_and_auto_on_a_state_and_a_scalar(capsys, tmp_path):
    """The commands that run the model outside the runner (the sensitivity sweep, auto's trials)
    take the same data; auto writes the model with its own input layout."""
    src = M.save(stateful(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **samples(64, seed=2))
    code, out, err = run(capsys, ["sensitivity", str(src), "--data", str(tmp_path / "calib.npz"), "--min-params",
                                  "1000"])
    assert code == 0 and "W1" in out and "W2" in out, err
    code, out, err = run(capsys, ["auto", str(src), "--data", str(tmp_path / "calib.npz"), "--target-size", "0.5",
                                  "--max-drop", "0.05", "-o", str(tmp_path / "a.onnx")])
    assert code in (0, 3), err
    written = onnx.load(str(tmp_path / "a.onnx"))
    assert [len(i.type.tensor_type.shape.dim) for i in written.graph.input] == [2, 3, 0]
    assert not any(n.name.startswith("onnxcomp_samples") for n in written.graph.node)
    feed = samples(8, seed=6)
    assert np.isfinite(ort_run(tmp_path / "a.onnx", feed)[0]).all()


def test_data_free_commands_measure_on_random_states(capsys, tmp_path):
    """Without --data the check runs random samples through the same adapter (they could not be
    stacked on axis 0: 'fidelity: not measured'); an integer scalar (a sample rate) has no random
    value the model surely takes, so such a model is still written unmeasured."""
    src = M.save(stateful(), tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1000",
                                  "-o", str(tmp_path / "p.onnx")])
    assert code == 0, err
    assert "16 samples, x[16x32], state[2x16x16], scale[scalar]" in out and "fidelity: output" in out
    model = stateful()
    model.graph.input[2].type.tensor_type.elem_type = onnx.TensorProto.INT64
    cast = helper.make_node("Cast", ["scale"], ["scale_f"], name="cast", to=onnx.TensorProto.FLOAT)
    for n in model.graph.node:
        n.input[:] = ["scale_f" if i == "scale" else i for i in n.input]
    model.graph.node.insert(0, cast)
    src = M.save(model, tmp_path / "int.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1000",
                                  "-o", str(tmp_path / "q.onnx")])
    assert code == 0 and "fidelity: not measured" in out, out + err


def test_a_layer_whose_input_is_always_zero_keeps_its_weights(capsys, tmp_path):
    """Calibration states that are all zero (a stream's first chunk) give the layer reading them no
    statistics: the fit would have zeroed the whole weight (no error on those samples); it gets a
    magnitude mask at the target instead, with a note."""
    r = M.rng(41)
    zero = M.const_node("zero", np.array(0, np.int64))
    nodes = [zero, helper.make_node("Gather", ["state", "zero"], ["s0"], name="first", axis=0),
             helper.make_node("MatMul", ["s0", "Ws"], ["a"], name="from_state"),
             helper.make_node("MatMul", ["x", "Wx"], ["b"], name="from_x"),
             helper.make_node("Add", ["a", "b"], ["y"], name="sum")]
    model = M.make(nodes, [M.vi("x", ["N", 32]), M.vi("state", [2, "N", 32])], [M.vi("y", ["N", 32])],
                   [M.init("Ws", r.normal(size=(32, 32)).astype(np.float32)),
                    M.init("Wx", r.normal(size=(32, 32)).astype(np.float32))])
    src = M.save(model, tmp_path / "m.onnx")
    data = samples(64, seed=2)
    np.savez(tmp_path / "calib.npz", x=data["x"], state=np.zeros((2, 64, 32), np.float32))
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1000", "--encoding",
                                  "dense", "--data", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "p.onnx")])
    assert code == 0, err
    assert "Ws: magnitude mask" in out + err and "Wx: magnitude mask" not in out + err
    ws = next(onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer
              if t.name == "Ws")
    assert 0.3 < np.mean(ws == 0) < 0.8
