"""compare(): exact self-agreement, a damaged conv found first per layer, labels, gates, CLI JSON."""
import json
import math

import numpy as np
import pytest

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.measure.fidelity import compare

from . import models as M


@pytest.fixture
def model():
    return M.classifier()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(48, 1, 8, 8)).astype(np.float32))
    return str(path)


@pytest.fixture
def files(tmp_path, model):
    a = M.save(model, tmp_path / "a.onnx")
    b = M.save(M.with_zeroed(model, "w1"), tmp_path / "b.onnx")
    return str(a), str(b)


def test_self_comparison_is_exact(model, data):
    r = compare(model, model, data, per_layer=True)
    o = r.outputs[0]
    assert o["top1_agreement"] == 1.0 and o["top5_overlap"] == 1.0
    assert o["max_abs"] == 0.0 and o["rel_l2"] == 0.0 and o["sqnr_db"] == math.inf
    assert o["cosine"] == pytest.approx(1.0)
    assert r.first_degraded is None and all(e["sqnr_db"] == math.inf for e in r.per_layer)
    assert r.num_samples == 48 and not r.random_data
    d = json.loads(oc.report.to_json(r))
    assert d["outputs"][0]["sqnr_db"] is None  # inf is not JSON: reported as null


def test_zeroed_conv_is_reported_and_named_first(model, data):
    r = compare(model, M.with_zeroed(model, "w1"), data, per_layer=True)
    o = r.outputs[0]
    assert o["top1_agreement"] < 0.9 and o["cosine"] < 0.99 and o["max_abs"] > 0 and o["sqnr_db"] < 20
    assert [e["tensor"] for e in r.per_layer][:3] == ["conv1", "bn1", "relu1"]  # graph order
    assert r.first_degraded == "conv1"
    assert r.per_layer[0]["rel_l2"] > 0.1


def test_labels_give_accuracy_of_both(model, data):
    import onnxruntime as ort

    x = np.load(data)["x"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = sess.run(None, {"x": x})[0].argmax(1)
    r = compare(model, M.with_zeroed(model, "w1"), data, labels=labels)
    assert r.accuracy["original"] == 1.0 and r.accuracy["n"] == 48
    assert r.accuracy["drop"] == pytest.approx(1.0 - r.accuracy["candidate"])
    assert "accuracy 100.00 %" in r.summary


def test_regression_output_has_no_top1(tmp_path):
    nodes = [M.helper.make_node("Relu", ["x"], ["y"])]
    model = M.make(nodes, [M.vi("x", ["N", 3, 4])], [M.vi("y", ["N", 3, 4])])
    r = compare(model, model, None, num_samples=4)
    assert r.outputs[0]["top1_agreement"] is None and r.headline[0] == "cosine"
    assert r.random_data and "random data: no quality guarantee" in r.summary


def test_cli_compare_json_and_per_layer(capsys, files, data):
    a, b = files
    assert main(["compare", a, b, "--data", data, "--per-layer", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["first_degraded"] == "conv1" and out["gate_failed"] is None
    assert main(["compare", a, b, "--data", data, "--per-layer"]) == 0
    text = capsys.readouterr().out
    assert "first degraded: conv1" in text


def test_cli_gate_exit_3(capsys, files, data):
    a, b = files
    assert main(["compare", a, b, "--data", data, "--min-agreement", "99.5%"]) == 3
    captured = capsys.readouterr()
    assert "summary:" in captured.out
    assert captured.err.count("\n") == 1 and "--min-agreement 99.50 %" in captured.err
    assert main(["compare", a, a, "--data", data, "--max-drop", "0", "--min-agreement", "1"]) == 0


def test_cli_random_data_is_labelled(capsys, files):
    a, _ = files
    assert main(["compare", a, a, "--num-samples", "4"]) == 0
    assert "random data: no quality guarantee" in capsys.readouterr().out


def test_cli_compare_plot(tmp_path, files, data):
    pytest.importorskip("matplotlib")
    a, b = files
    out = tmp_path / "layers.png"
    assert main(["compare", a, b, "--data", data, "--plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not (M.MODELS / "digits_test.npz").exists(), reason="real models absent")
def test_real_digits_models_with_labels():
    r = compare(M.MODELS / "resnet_digits.onnx", M.MODELS / "mobilenet_digits.onnx",
                str(M.MODELS / "digits_test.npz"))
    assert r.accuracy is not None and r.accuracy["original"] > 0.9 and r.accuracy["candidate"] > 0.9
    assert r.outputs[0]["top1_agreement"] > 0.9


def test_candidate_that_cannot_run_is_one_line(tmp_path, capsys, model, data):
    other = M.classifier()
    other.graph.input[0].name = "z"
    other.graph.node[0].input[0] = "z"
    a, b = M.save(model, tmp_path / "a.onnx"), M.save(other, tmp_path / "z.onnx")
    assert main(["compare", str(a), str(b), "--data", data]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed to run" in err and str(b) in err


def test_cli_labels_file_and_max_drop(tmp_path, capsys, files, data):
    a, b = files
    np.save(tmp_path / "y.npy", np.zeros(48, np.int64))
    code = main(["compare", a, b, "--data", data, "--labels", str(tmp_path / "y.npy"), "--json",
                 "--max-drop", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["accuracy"]["n"] == 48 and out["headline"]["metric"] == "top1_agreement"
    assert main(["compare", a, b, "--labels", str(tmp_path / "y.npy")]) == 2  # labels need real data
    assert "labels were given with random data" in capsys.readouterr().err


def test_progress_callback_counts_samples_and_passes(model, data):
    calls = []
    compare(model, model, data, per_layer=True, progress=lambda *a: calls.append(a))
    assert calls[-1][0] == 48 and calls[-1][1] == calls[-1][2] - 1


def test_two_classes_report_top1_without_a_top5(data):
    """With 5 classes or fewer every top-5 holds them all: a 100 % top-5 overlap would mean nothing."""
    model = M.classifier(n_cls=2)
    r = compare(model, M.with_zeroed(model, "w1"), data)
    o = r.outputs[0]
    assert o["top1_agreement"] is not None and o["top5_overlap"] is None
    assert "top-1 agreement" in r.summary and "top-5" not in r.summary


def test_two_outputs_name_the_judged_one_in_the_headline(data):
    """With several outputs the line says which one it judged, then its metrics."""
    import onnx

    model = M.classifier()
    two = onnx.ModelProto()
    two.CopyFrom(model)
    two.graph.node.append(onnx.helper.make_node("Relu", [two.graph.output[0].name], ["relu"], name="relu"))
    two.graph.output.append(onnx.helper.make_empty_tensor_value_info("relu"))
    r = compare(two, two, data)
    assert r.metrics_line().startswith(f"output {two.graph.output[0].name} (the furthest moved of 2): "
                                       "top-1 agreement 100.00 %")
    assert ":;" not in r.summary


def test_the_output_that_moved_most_is_judged():
    """A detector's eight head outputs (or an RNN's output beside its state) must all hold: the
    headline and the gates once looked at the first output only, whatever the others did."""
    from onnxcomp.measure.fidelity_report import FidelityReport

    def out(name, cos, top1=None):
        return {"name": name, "cosine": cos, "top1_agreement": top1, "sqnr_db": 20.0, "max_abs": 0.1}

    outs = [out("scores_p3", 0.99), out("boxes_p3", 0.80), out("scores_p4", float("nan"))]
    r = FidelityReport("a", "b", "d", 8, False, outs)
    assert r.judged["name"] == "boxes_p3" and r.headline == ("cosine", 0.80)
    assert r.metrics_line().startswith("output boxes_p3 (the furthest moved of 3): cosine 0.80000")
    named = FidelityReport("a", "b", "d", 8, False, outs, output="scores_p3")
    assert named.headline == ("cosine", 0.99) and "furthest" not in named.metrics_line()
    mixed = FidelityReport("a", "b", "d", 8, False, [out("logits", 0.999, 0.90), out("embedding", 0.95)])
    assert mixed.headline == ("top1_agreement", 0.90)  # each by its own metric: a gate holds every output
    labelled = FidelityReport("a", "b", "d", 8, False, outs, accuracy={"original": 1.0, "candidate": 0.9, "drop": 0.1})
    assert labelled.judged["name"] == "scores_p3"  # labels label the first output


def test_one_value_per_sample_is_not_judged_by_its_sign():
    """A sigmoid probability [N, 1] (a binary classifier, a voice-activity score): each sample's
    own cosine is 1 whatever the value, so a model whose probabilities all moved read 'cosine
    1.00000'. The samples' values are now one vector."""
    from onnxcomp.measure.fidelity_report import OutputMetrics

    r = M.rng(0)
    p = 1 / (1 + np.exp(-r.normal(size=(64, 1))))
    m = OutputMetrics()
    m.update(p, np.clip(p + r.normal(0, 0.3, p.shape), 0.01, 0.99))
    out = m.result()
    assert out["cosine"] < 0.95 and out["top1_agreement"] is None
    same = OutputMetrics()
    same.update(p, p)
    assert same.result()["cosine"] == pytest.approx(1.0)
    wide = OutputMetrics()  # several values per sample: per-sample cosines as before
    wide.update(np.hstack([p, -p]), np.hstack([p, -p]))
    assert wide.result()["cosine"] == pytest.approx(1.0) and wide.result()["cosine_sd"] is not None
