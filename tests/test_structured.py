"""Structured pruning pass, API and CLI: exactness on zero filters, rounding, refit, reports, errors."""
import json

import numpy as np
import onnx
import pytest

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.config import StructuredPruneConfig
from onnxcomp.errors import ConfigError
from onnxcomp.passes.base import Context
from onnxcomp.passes.structured.structured import StructuredPrunePass
from onnxcomp.passes.structured.alloc import keep_count

from . import models as M
from .test_channels import run

ZERO = {"conv0": [1, 3, 5, 7, 9, 11, 13, 15], "conv1": [0, 2, 4, 6], "conv3": [0, 1, 2, 3, 4, 5, 6, 7]}


def channels(model: onnx.ModelProto) -> dict[str, int]:
    """Output channels of every Conv, by node name."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: inits[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv"}


@pytest.mark.parametrize("importance", ["l1", "l2", "bn"])
def test_zero_filters_are_removed_and_outputs_unchanged(importance):
    model = M.chan_residual(zero=ZERO)
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    before = run(model, x)
    cfg = StructuredPruneConfig(ratio=0.5, importance=importance, allocation="uniform", round_to=4)
    result = StructuredPrunePass(cfg).run(model, Context())
    assert channels(model) == {"conv0": 8, "conv1": 4, "conv2": 8, "conv3": 8}
    np.testing.assert_allclose(run(model, x), before, atol=1e-5)
    assert result.settings["macs_after"] < result.settings["macs_before"]
    assert {g["status"] for g in result.groups} == {"pruned", "frozen"}


def test_keep_count_rounds_and_never_empties():
    for n in (1, 3, 8, 17, 64, 1000):
        for ratio in (0.0, 0.1, 0.5, 0.9, 0.99):
            for r in (1, 8):
                k = keep_count(n, ratio, r)
                assert 1 <= k <= n
                assert k == n or (k % r == 0 and k >= r)
    assert keep_count(64, 0.5, 8) == 32 and keep_count(32, 0.4, 8) == 16 and keep_count(6, 0.5, 8) == 6


def test_small_groups_are_skipped_with_reason():
    model = M.chan_residual()
    result = StructuredPrunePass(StructuredPruneConfig(ratio=0.5, round_to=8)).run(model, Context())
    conv1 = next(g for g in result.groups if g["producers"] == ["conv1"])
    assert conv1["status"] == "kept" and "too small" in conv1["reason"]
    fc = next(g for g in result.groups if g["producers"] == ["fc"])
    assert fc["status"] == "frozen" and fc["reason"] == "graph output y"


def test_exclude_protects_a_group():
    model = M.chan_residual()
    cfg = StructuredPruneConfig(ratio=0.5, round_to=4, exclude=("conv3",))
    result = StructuredPrunePass(cfg).run(model, Context())
    assert channels(model)["conv3"] == 16 and channels(model)["conv0"] == 8
    assert "--exclude conv3" in next(g for g in result.groups if g["producers"] == ["conv3"])["reason"]


def test_random_data_never_refits_and_activation_needs_real_data():
    model = oc.as_model(M.chan_se())
    rand = oc.load_data(None, model.proto, batch_size=4)
    comp = oc.prune_channels(model, 0.5, data=rand, round_to=4)
    s = comp.results[0].settings
    assert (s["importance"], s["allocation"], s["refit"]) == ("l1", "uniform", False)
    with pytest.raises(ConfigError, match="importance='activation' needs real calibration data"):
        oc.prune_channels(model, 0.5, data=rand, importance="activation")
    with pytest.raises(ConfigError, match="ratio=1.5"):
        oc.prune_channels(model, 1.5)


@pytest.fixture(scope="module")
def digits():
    return M.digits_sets("resnet_digits.onnx", 32, 200)


def accuracy(model: onnx.ModelProto, test) -> float:
    return float((run(model, test[0]).argmax(1) == test[1]).mean())


def test_refit_with_real_data_recovers_accuracy(digits):
    model, calib, test = digits
    kw = dict(importance="activation", allocation="uniform")
    plain = oc.prune_channels(model, 0.25, data={"input": calib}, refit=False, **kw)
    fitted = oc.prune_channels(model, 0.25, data={"input": calib}, **kw)
    assert fitted.results[0].settings["refit"] and any("least-squares refit" in n for n in fitted.results[0].notes)
    acc0, acc_plain, acc_fit = accuracy(model.proto, test), accuracy(plain.proto, test), accuracy(fitted.proto, test)
    assert acc_fit >= acc0 - 0.03 and acc_fit > acc_plain
    assert fitted.results[0].settings["macs_after"] < 0.65 * fitted.results[0].settings["macs_before"]


def test_cli_prune_channels_json(tmp_path, capsys):
    path = M.save(M.chan_split(), tmp_path / "split.onnx")
    out = tmp_path / "out.onnx"
    assert main(["prune-channels", str(path), "--ratio", "0.5", "--round-to", "4", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["write"]["output"] == str(out) and out.is_file()
    groups = report["passes"][0]["groups"]
    assert any(g["status"] == "pruned" for g in groups) and any(g["status"] == "frozen" for g in groups)
    run(onnx.load(out), np.zeros((1, 3, 8, 8), np.float32))


def test_cli_human_summary_lists_frozen_groups(tmp_path, capsys):
    path = M.save(M.chan_shuffle(), tmp_path / "shuffle.onnx")
    assert main(["prune-channels", str(path), "--ratio", "0.5", "--round-to", "4"]) == 0
    text = capsys.readouterr().out
    assert "channel shuffle" in text and "frozen" in text and (tmp_path / "shuffle.channels50.onnx").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--ratio", "1.5"], "--ratio 1.5"),
    (["--ratio", "-0.1"], "--ratio -0.1"),
    (["--importance", "bogus"], "bogus"),
    (["--importance", "activation"], "needs real calibration data"),
    (["--allocation", "sensitivity"], "needs real calibration data"),
    (["--round-to", "0"], "--round-to"),
    (["--refit"], "needs real calibration data"),
])
def test_cli_bad_options_exit_2_one_line(tmp_path, capsys, args, needle):
    path = M.save(M.chan_residual(), tmp_path / "res.onnx")
    assert main(["prune-channels", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_constant_channels_are_folded_into_the_consumer_bias():
    model = M.chan_residual(zero={"conv3": ZERO["conv3"]})
    bias = next(t for t in model.graph.initializer if t.name == "conv3_b")
    b = onnx.numpy_helper.to_array(bias).copy()
    b[ZERO["conv3"]] = np.linspace(0.5, 2.0, 8)  # zero filters, positive bias: constant channels
    bias.CopyFrom(onnx.numpy_helper.from_array(b, "conv3_b"))
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    kw = dict(importance="l1", allocation="uniform", round_to=4, refit=False, include=("conv3",))
    with_data = oc.prune_channels(model, 0.5, data={"x": x}, **kw)
    without = oc.prune_channels(model, 0.5, **kw)
    assert channels(with_data.proto)["conv3"] == 8 and channels(with_data.proto)["conv0"] == 16
    assert any("folded into 1 consumer bias" in n for n in with_data.results[0].notes)
    np.testing.assert_allclose(run(with_data.proto, x), run(model, x), atol=1e-4)
    assert np.abs(run(without.proto, x) - run(model, x)).max() > 0.1
