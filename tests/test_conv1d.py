"""1-D convs (audio front ends, temporal conv nets, text CNNs) through the speed rewrites.

``factorize`` and ``depthwise`` skipped every 1-D conv ("only 2-D convs are rewritten"), so on an
audio model they wrote the input back unchanged. They now plan a 1-D conv as the 2-D conv of
height 1 it equals and write 1-D nodes back.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp as oc

from . import models as M

TCN = M.MODELS / "tcn_digits.onnx"  # trained: four Conv1d (k 3/5/3/3, a stride, a dilation), 0.9978
TEST = M.MODELS / "digits_test.npz"


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _accuracy(model: onnx.ModelProto) -> float:
    with np.load(TEST) as z:
        return float((_run(model, z["input"]).argmax(1) == z["labels"]).mean())


STEPS = {"svd": lambda m, d: oc.factorize(m, "svd", rank=16, data=d),
         "tucker2": lambda m, d: oc.factorize(m, "tucker2", rank=16, data=d),
         "depthwise": lambda m, d: oc.depthwise(m, multiplier=2, data=d, measure=False),
         "grouped": lambda m, d: oc.depthwise(m, groups=2, data=d, measure=False)}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_1d_conv_is_rewritten_as_the_2d_conv_of_height_1_it_equals(step):
    """Strided, dilated, unevenly padded: the 1-D model's rewrite holds the same factors as the
    height-1 2-D model's, in 1-D nodes, and computes the same outputs."""
    x = np.random.default_rng(8).normal(size=(32, 32, 40)).astype(np.float32)
    out = {}
    for rank, data in ((1, x), (2, x[:, :, None])):
        result = STEPS[step](M.conv_pair(rank), [{"x": data[i:i + 8]} for i in range(0, 32, 8)])
        assert len(result.result.applied) == 2, result.result.notes
        out[rank] = result.proto
    convs = [n for n in out[1].graph.node if n.op_type == "Conv"]
    groups = [a.i for n in convs for a in n.attribute if a.name == "group"]
    assert len(convs) > 2 if step != "grouped" else groups == [2, 2]  # each became two or three / grouped
    assert all(len(a.ints) in (1, 2) for n in convs for a in n.attribute if a.name in ("kernel_shape", "strides"))
    assert all(len(t.dims) == 3 for t in out[1].graph.initializer if len(t.dims) > 1)  # 1-D kernels
    one = {t.name: onnx.numpy_helper.to_array(t) for t in out[1].graph.initializer}
    two = {t.name: onnx.numpy_helper.to_array(t) for t in out[2].graph.initializer}
    assert set(one) == set(two)
    for name in one:
        assert np.allclose(one[name].reshape(-1), two[name].reshape(-1), atol=1e-5), name
    assert np.allclose(_run(out[1], x), _run(out[2], x[:, :, None])[:, :, 0], atol=1e-4)


def test_factorize_a_trained_1d_conv_net_keeps_its_accuracy(tmp_path):
    """tcn_digits (trained, Conv1d only): `factorize --ratio 0.5 --data` rewrites its convs into
    1-D convs with fewer MACs and keeps the test accuracy within a point (0.9933 of 0.9978)."""
    out = tmp_path / "tcn.fact.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "factorize", str(TCN), "--ratio", "0.5",
                           "--data", str(M.MODELS / "digits_calib.npz"), "-o", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    report = json.loads(proc.stdout)
    model = onnx.load(out)
    onnx.checker.check_model(model)
    rewritten = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(rewritten) > 4 and all(len(n.input) > 1 for n in rewritten)
    kernels = {t.name: t.dims for t in model.graph.initializer}
    assert all(len(kernels[n.input[1]]) == 3 for n in rewritten)  # still 1-D convs
    before, after = report["model_macs"]
    assert after < 0.6 * before  # 1.49 M -> 0.82 M MACs per sample
    original = _accuracy(onnx.load(TCN))
    assert _accuracy(model) >= original - 0.01


def test_structured_pruning_refits_a_1d_conv_consumer_as_its_2d_equal():
    """The consumer of pruned channels was left unfitted when it was a 1-D conv ("not 2-D"); it is
    now refit like the height-1 2-D conv it equals (same rows, same weights) — on tcn_digits at
    ratio 0.3 the outputs' SQNR went 17.0 -> 30.0 dB and the test accuracy 99.11 -> 99.56 %."""
    x = np.random.default_rng(8).normal(size=(32, 32, 40)).astype(np.float32)
    out = {}
    for rank, data in ((1, x), (2, x[:, :, None])):
        result = oc.prune_channels(M.conv_pair(rank), 0.25, data=[{"x": data[i:i + 8]} for i in range(0, 32, 8)])
        notes = " ".join(result.result.notes)
        assert "least-squares refit of 1 consumer(s)" in notes and "not refit" not in notes, notes
        out[rank] = {t.name: onnx.numpy_helper.to_array(t) for t in result.proto.graph.initializer}
    assert set(out[1]) == set(out[2]) and out[1]["w1"].shape == (48, 32, 3)
    for name in out[1]:
        assert np.allclose(out[1][name].reshape(-1), out[2][name].reshape(-1), atol=1e-5), name
