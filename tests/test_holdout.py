"""--holdout: the written model is judged (fidelity, gates) on samples the compression never saw."""
import json

import numpy as np
import pytest

from onnxcomp.cli import main

from . import models as M

MODEL = M.MODELS / "mobilenet_digits.onnx"
CALIB = M.MODELS / "digits_calib.npz"
TEST = M.MODELS / "digits_test.npz"


def _run(capsys, *argv):
    code = main(["prune", str(MODEL), "--sparsity", "0.9", "--json", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_a_gate_is_judged_on_a_held_out_quarter_the_compression_never_saw(tmp_path, capsys):
    """With a gate and 128 samples, the last 32 are held out: the pass is fitted to the first 96
    (the same file as --samples 96 writes) and the fidelity and the gate look at the other 32."""
    code, gated = _run(capsys, "--data", str(CALIB), "--min-agreement", "0.5", "-o", str(tmp_path / "g.onnx"))
    assert code == 0
    fid = gated["write"]["fidelity"]
    assert fid["num_samples"] == 32 and "the last 32 held out" in fid["data"]
    assert not any("fitted to" in n for n in fid["notes"])
    code, first = _run(capsys, "--data", str(CALIB), "--samples", "96", "-o", str(tmp_path / "s.onnx"))
    assert code == 0
    assert (tmp_path / "g.onnx").read_bytes() == (tmp_path / "s.onnx").read_bytes()


def test_without_a_gate_the_report_says_it_measured_the_fitted_samples(tmp_path, capsys):
    code, out = _run(capsys, "--data", str(CALIB), "-o", str(tmp_path / "a.onnx"))
    fid = out["write"]["fidelity"]
    assert code == 0 and fid["num_samples"] == 128
    assert any("the 128 samples the compression was fitted to" in n and "--holdout 0.25" in n for n in fid["notes"])


def test_explicit_holdout_takes_the_labels_of_the_held_out_samples(tmp_path, capsys):
    """--holdout 0.2 of the 450 labelled test digits: accuracy is counted on the last 90 with their
    own labels (from the .npz, or from a --labels file alike)."""
    with np.load(TEST) as d:
        labels = d["labels"]
    np.save(tmp_path / "labels.npy", labels)
    code, out = _run(capsys, "--data", str(TEST), "--holdout", "20%", "-o", str(tmp_path / "h.onnx"))
    acc = out["write"]["fidelity"]["accuracy"]
    assert code == 0 and acc["n"] == 90
    code, again = _run(capsys, "--data", str(TEST), "--labels", str(tmp_path / "labels.npy"), "--holdout", "0.2",
                       "-o", str(tmp_path / "h2.onnx"))
    assert code == 0 and again["write"]["fidelity"]["accuracy"] == acc


@pytest.mark.parametrize("argv,expect", [
    (["--holdout", "0.25"], "needs real samples to hold out"),
    (["--data", str(CALIB), "--holdout", "0.999"], "leaves none to fit"),
    (["--data", str(CALIB), "--holdout", "0.001"], "leaves none to hold out"),
    (["--data", str(CALIB), "--holdout", "1.5"], "outside 0..1"),
])
def test_bad_holdout_is_refused_in_one_line_before_any_work(tmp_path, capsys, argv, expect):
    out = tmp_path / "x.onnx"
    assert main(["prune", str(MODEL), "--sparsity", "0.5", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and not out.exists()
