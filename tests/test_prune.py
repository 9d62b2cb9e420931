"""prune: allocation, granularity, N:M, skip reasons, encodings, quality on the real models."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.graph.weights import find_weights

from . import models as M

RESNET = M.MODELS / "resnet_digits.onnx"
MOBILENET = M.MODELS / "mobilenet_digits.onnx"
CALIB = M.MODELS / "digits_calib.npz"
TEST = np.load(M.MODELS / "digits_test.npz")


def accuracy(model: onnx.ModelProto) -> float:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": TEST["input"]})[0].argmax(1) == TEST["labels"]).mean())


def weights_of(model) -> dict[str, np.ndarray]:
    return {w.name: w.values() for w in find_weights(model)}


@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp"])
def test_overall_sparsity_meets_the_target(allocation):
    c = oc.prune(RESNET, 0.8, allocation=allocation, encoding="dense")
    r = c.results[0]
    before = sum(x.params_before for x in r.applied)
    after = sum(x.params_after for x in r.applied)
    assert 1 - after / before == pytest.approx(0.8, abs=0.01)
    levels = [x.detail["sparsity"] for x in r.applied]
    if allocation == "uniform":
        assert max(levels) - min(levels) < 0.02  # per-channel rounding only
    else:  # layer-adaptive: big layers are pruned harder than small ones
        assert max(levels) - min(levels) > 0.2


def test_channel_granularity_prunes_every_output_channel_alike():
    c = oc.prune(RESNET, 0.5, allocation="uniform", granularity="channel", encoding="dense")
    w = weights_of(c.proto)["features.5.body.3.weight"]
    per_channel = (w.reshape(w.shape[0], -1) == 0).mean(1)
    assert np.allclose(per_channel, 0.5, atol=1 / w[0].size)


def test_nm_2_4_along_the_reduction_axis():
    c = oc.prune(RESNET, nm="2:4", encoding="dense")
    w = weights_of(c.proto)["features.7.body.0.weight"]  # [128, 64, 3, 3], reduction axis 1
    groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
    assert np.all((groups != 0).sum(1) <= 2)
    assert c.results[0].settings["nm"] == "2:4"


def test_skip_reasons_tiny_and_depthwise():
    c = oc.prune(MOBILENET, 0.5, encoding="dense")
    reasons = {x.name: x.reason for x in c.results[0].skipped}
    assert any("depthwise" in r for r in reasons.values())
    assert any("tiny tensor" in r for r in reasons.values())
    dw = [w for w in find_weights(oc.load(MOBILENET).proto) if w.is_depthwise]
    after = weights_of(c.proto)
    assert all(np.count_nonzero(after[w.name]) == np.count_nonzero(w.values()) for w in dw)


def test_constant_node_and_shared_weights_are_pruned():
    model = M.constant_node_weights()
    c = oc.prune(model, 0.5, min_params=16, allocation="uniform", encoding="dense")
    assert {x.name for x in c.results[0].applied} == {"w", "m"}
    assert all(np.mean(v == 0) == pytest.approx(0.5, abs=0.05) for v in weights_of(c.proto).values())
    c = oc.prune(M.shared_weight(), 0.5, min_params=16, encoding="dense")
    assert [x.name for x in c.results[0].applied] == ["w"]  # one weight, both MatMuls see it


def test_encoded_file_is_small_and_bit_exact(tmp_path):
    """90 %: <= 0.14x the ResNet file; onnxruntime output equals the dense pruned model's."""
    c = oc.prune(RESNET, 0.9, encoding="auto")
    dense = oc.prune(RESNET, 0.9, encoding="dense")
    out = oc.save(c.model, tmp_path / "p.onnx")
    assert out.stat().st_size <= 0.14 * RESNET.stat().st_size
    x = {"input": TEST["input"][:32]}
    a = ort.InferenceSession(str(out)).run(None, x)[0]
    b = ort.InferenceSession(dense.proto.SerializeToString()).run(None, x)[0]
    assert np.array_equal(a, b)
    half = oc.save(oc.prune(RESNET, 0.5).model, tmp_path / "h.onnx")
    assert half.stat().st_size <= 0.70 * RESNET.stat().st_size


def test_numpy_reference_of_a_pruned_gemm():
    """Gemm -> Relu after pruning: onnxruntime matches a numpy forward with the pruned weights."""
    model = M.gemm_layer(k=64, n=32, trans_b=1)  # y = relu(x @ B.T + C)
    c = oc.prune(model, 0.9, min_params=64, allocation="uniform")
    assert [e.kind for e in c.encodings] == ["gaps"]
    b = weights_of(oc.prune(model, 0.9, min_params=64, allocation="uniform", encoding="dense").proto)
    assert np.mean(b["B"] == 0) == pytest.approx(0.9, abs=0.01)
    x = M.rng(7).normal(size=(5, 64)).astype(np.float32)
    got = ort.InferenceSession(c.proto.SerializeToString()).run(None, {"x": x})[0]
    ref = np.maximum(x @ b["B"].T + b["C"], 0)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_calibration_keeps_accuracy_at_90_percent():
    """With calibration data (scores x input RMS, per-channel correction): <= 0.5 % drop at 90 %."""
    base = accuracy(oc.load(RESNET).proto)
    c = oc.prune(RESNET, 0.9, data=str(CALIB))
    assert accuracy(c.proto) >= base - 0.005
    assert c.result_of("correction").settings["mode"] == "affine"


def test_sensitivity_allocation_needs_real_data():
    with pytest.raises(oc.ConfigError, match="needs real calibration data"):
        oc.prune(RESNET, 0.5, allocation="sensitivity")


def test_cli_writes_default_output_and_json(tmp_path, capsys):
    src = tmp_path / "resnet.onnx"
    src.write_bytes(RESNET.read_bytes())
    assert main(["prune", str(src), "--sparsity", "0.9", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    out = tmp_path / "resnet.prune90.onnx"
    assert out.is_file() and d["write"]["output"] == str(out)
    assert d["write"]["ratio"] <= 0.14 and d["write"]["fidelity"]["random_data"] is True
    assert d["passes"][0]["settings"]["allocation"] == "lamp"
    assert src.read_bytes() == RESNET.read_bytes()


@pytest.mark.parametrize("argv,expect", [
    (["--sparsity", "1.5"], "--sparsity 1.5"),
    (["--sparsity", "0.5", "--nm", "4:2"], "--nm"),
    ([], "--sparsity"),
    (["--sparsity", "0.5", "--encoding", "zip"], "--encoding"),
    (["--sparsity", "0.5", "--allocation", "sensitivity"], "calibration data"),
])
def test_bad_options_exit_2_one_line(tmp_path, capsys, argv, expect):
    src = tmp_path / "m.onnx"
    src.write_bytes(MOBILENET.read_bytes())
    assert main(["prune", str(src), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_quality_gate_exit_3_keeps_the_file(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes(RESNET.read_bytes())
    code = main(["prune", str(src), "--sparsity", "0.95", "--data", str(M.MODELS / "digits_test.npz"),
                 "--score", "magnitude", "--correction", "none", "--max-drop", "0.001", "--holdout", "0"])
    assert code == 3
    assert (tmp_path / "m.prune95.onnx").is_file()
    captured = capsys.readouterr()
    assert "quality gate missed" in captured.out and captured.err.count("\n") == 1


def test_obs_updates_beat_magnitude_without_correction():
    """OBS/SparseGPT masks with Hessian updates keep a model that plain magnitude pruning breaks."""
    magnitude = oc.prune(RESNET, 0.8, data=str(CALIB), score="magnitude", correction="none", encoding="dense")
    obs = oc.prune(RESNET, 0.8, data=str(CALIB), score="obs", correction="none", encoding="dense")
    assert accuracy(obs.proto) >= 0.95 > 0.5 > accuracy(magnitude.proto)
    zeros = [x.detail["sparsity"] for x in obs.results[0].applied]
    assert sum(zeros) / len(zeros) > 0.5  # the updates kept the masks: still sparse


@pytest.mark.parametrize("command", ["prune", "cluster"])
def test_a_1d_conv_is_calibrated_as_the_2d_conv_it_equals(command):
    """1-D convs (audio, text) took magnitude masks / plain k-means with --data: no statistics. They
    are now solved as the 2-D conv over rows of height 1 that computes the same: the same weights
    come out of both, strides, dilations and uneven pads included."""
    x = np.random.default_rng(8).normal(size=(32, 32, 40)).astype(np.float32)
    out = {}
    for rank, data in ((1, x), (2, x[:, :, None])):
        batches = [{"x": data[i:i + 8]} for i in range(0, 32, 8)]
        step = oc.prune if command == "prune" else oc.cluster
        result = step(M.conv_pair(rank), 0.5 if command == "prune" else 3, data=batches, encoding="dense")
        notes = " ".join(result.result_of(command).notes)
        assert ("magnitude mask" not in notes and len(result.result_of(command).applied) == 2) if command == "prune" \
            else "GPTQ-style assignment with error feedback on 2 weight(s)" in notes
        out[rank] = {t.name: onnx.numpy_helper.to_array(t).reshape(-1) for t in result.proto.graph.initializer}
    assert set(out[1]) == set(out[2])
    for name in out[1]:
        assert np.allclose(out[1][name], out[2][name], atol=1e-6), name


@pytest.mark.parametrize("command", ["prune", "cluster"])
def test_a_3d_conv_is_fitted_to_its_outputs_with_data(command):
    """3-D convs (video, volumes) took magnitude masks / plain k-means with --data. They are now fit
    by OBS / GPTQ on their 3-D patches, and on those samples the outputs move less than with the
    data-free choice at the same sparsity / bits."""
    from onnx import helper

    r = np.random.default_rng(11)
    w1, w2 = r.normal(0, 0.2, (16, 4, 3, 3, 3)), r.normal(0, 0.1, (16, 16, 3, 1, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 6),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", strides=[2, 1, 2], pads=[1, 0, 1, 1, 0, 1])]
    model = M.make(nodes, [M.vi("x", ["N", 4, 6, 8, 8])], [M.vi("y", ["N", 16, 3, 8, 4])],
                   [M.init("w1", w1.astype(np.float32)), M.init("w2", w2.astype(np.float32))])
    x = np.cumsum(r.normal(size=(16, 4, 6, 8, 8)), axis=4).astype(np.float32) / 4  # correlated inputs
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = {}
    for data in ([{"x": x}], None):
        step = oc.prune if command == "prune" else oc.cluster
        result = step(model, 0.6 if command == "prune" else 3, data=data, correction="none", encoding="dense")
        notes = " ".join(result.result_of(command).notes)
        if data is not None:
            assert "magnitude mask" not in notes and ("GPTQ-style" in notes or command == "prune"), notes
        got = ort.InferenceSession(result.proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        err[data is not None] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert err[True] < 0.8 * err[False]


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_convs_are_calibrated_as_their_explicit_pads(mode):
    """A conv with auto_pad SAME_* (TF exports) took magnitude masks with --data: its pads depend on
    the input's size. They are now worked out per batch: the same weights come out as from the
    same conv with the pads written out (stride 2 on an even size: uneven pads)."""
    from onnx import helper

    from tests import models as M

    r = np.random.default_rng(9)
    w1, w2 = r.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32), r.normal(0, 0.1, (32, 32, 3, 3)).astype(np.float32)
    pads = {"SAME_UPPER": [0, 0, 1, 1], "SAME_LOWER": [1, 1, 0, 0]}[mode]  # 16 -> 8 at stride 2 with 3 taps
    out = {}
    for how in ("auto", "explicit"):
        attrs = {"auto_pad": mode} if how == "auto" else {"pads": pads}
        nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", strides=[2, 2], **attrs),
                 helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
                 helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
        model = M.make(nodes, [M.vi("x", ["N", 16, 16, 16])], [M.vi("y", ["N", 32, 8, 8])],
                       [M.init("w1", w1), M.init("w2", w2)])
        x = np.random.default_rng(10).normal(size=(16, 16, 16, 16)).astype(np.float32)
        result = oc.prune(model, 0.5, data=[{"x": x[:8]}, {"x": x[8:]}], encoding="dense")
        assert "magnitude mask" not in " ".join(result.result_of("prune").notes)
        out[how] = {t.name: onnx.numpy_helper.to_array(t) for t in result.proto.graph.initializer}
    for name in out["auto"]:
        assert np.allclose(out["auto"][name], out["explicit"][name], atol=1e-6), name
