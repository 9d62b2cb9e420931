"""depthwise: exact at M = k² and G = 1, exact on block-structured permuted weights, reasons, CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.measure.fidelity import compare
from tests import models as M
from tests.test_factorize import GEOMETRIES, producer, rel_err

FULL = dict(allow_growth=True, min_params=0)


def _x(model: onnx.ModelProto, seed: int = 1) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return M.rng(seed).normal(size=[2] + dims).astype(np.float32)


@pytest.mark.parametrize("geom", [g for g in GEOMETRIES if g != "groups"])
def test_full_multiplier_is_exact(geom):
    model = M.conv_layer(**GEOMETRIES[geom])
    kh, kw = GEOMETRIES[geom].get("kernel", (3, 3))
    c = oc.depthwise(model, multiplier=kh * kw, **FULL)
    (change,) = c.results[0].applied
    assert change.detail["multiplier"] == min(6, kh * kw) and change.detail["energy"] > 1 - 1e-9
    assert rel_err(model, c.proto, _x(model)) < 1e-4
    assert [n.name for n in c.proto.graph.node][:2] == ["conv_dw", "conv_pw"]
    assert producer(c.proto, "c").name == "conv_pw"


def test_groups_one_is_exact():
    model = M.conv_layer(**GEOMETRIES["stride2_asym_pads"])
    c = oc.depthwise(model, groups=1, **FULL)
    assert rel_err(model, c.proto, _x(model)) < 1e-4 and producer(c.proto, "c").name == "conv_g"


def _block_permuted(groups: int = 4, c_in: int = 8, c_out: int = 12) -> onnx.ModelProto:
    """A conv whose kernel is exactly block-diagonal after an (unknown) channel permutation."""
    model = M.conv_layer(c_in=c_in, c_out=c_out, pads=[1, 1, 1, 1])
    r = M.rng(3)
    w = np.zeros((c_out, c_in, 3, 3), np.float32)
    og, cg = c_out // groups, c_in // groups
    for g in range(groups):
        w[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = r.normal(size=(og, cg, 3, 3))
    w = w[r.permutation(c_out)][:, r.permutation(c_in)]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    return model


def test_grouped_finds_the_blocks_and_restores_channel_order():
    model = _block_permuted()
    c = oc.depthwise(model, groups=4, min_params=0, measure=False)
    (change,) = c.results[0].applied
    assert change.detail["kept"] > 1 - 1e-9 and change.macs_after * 4 == change.macs_before
    ops = [n.op_type for n in c.proto.graph.node]
    assert ops[:3] == ["Gather", "Conv", "Gather"] and producer(c.proto, "c").name == "conv_perm_out"
    assert rel_err(model, c.proto, _x(model)) < 1e-4
    assert not any(t.name in ("w", "b") for t in c.proto.graph.initializer)  # bias was permuted


def test_low_multiplier_drops_macs_and_energy_choice():
    model = M.conv_layer(c_in=32, c_out=32, pads=[1, 1, 1, 1], hw=(12, 12))
    (change,) = oc.depthwise(model, multiplier=1, min_params=0, measure=False).results[0].changes
    assert change.macs_after < 0.25 * change.macs_before
    assert oc.inspect(oc.depthwise(model, multiplier=1, min_params=0,
                                   measure=False).model).total_macs == change.macs_after
    (change,) = oc.depthwise(model, energy=0.6, min_params=0, measure=False).results[0].changes
    assert change.detail["kept"] >= 0.6


def test_skip_reasons():
    cases = [(M.conv_layer(c_in=8, c_out=8, group=8), {}, "already separable"),
             (M.conv_layer(c_in=8, c_out=8, kernel=(1, 1)), {}, "1x1 kernel"),
             (M.conv_layer(c_in=6, c_out=6), dict(groups=4), "not divisible"),
             (M.conv_layer(c_in=16, c_out=16), dict(multiplier=1, energy=0.99), "below --energy"),
             (M.conv_layer(c_in=4, c_out=6), dict(multiplier=9), "would not drop")]
    for model, kw, text in cases:
        (change,) = oc.depthwise(model, min_params=0, measure=False, **kw).results[0].changes
        assert change.skipped and text in change.reason, (kw, change.reason)


def test_data_aware_lowers_error_on_a_resnet_layer():
    m = oc.load(M.MODELS / "resnet_digits.onnx")
    errors = {}
    for aware in (False, True):
        c = oc.depthwise(m, multiplier=2, include=["*features.6*"], data_aware=aware, measure=False,
                         data=oc.load_data(M.MODELS / "digits_calib.npz", m, num_samples=32))
        assert len(c.results[0].applied) == 2
        errors[aware] = compare(m, c.model, M.MODELS / "digits_test.npz").outputs[0]["rel_l2"]
    assert errors[True] < errors[False]


@pytest.mark.parametrize("args, text", [(["--multiplier", "0"], "--multiplier 0"),
                                        (["--multiplier", "2", "--groups", "2"], "--multiplier and --groups"),
                                        (["--energy", "1.5"], "--energy 1.5")])
def test_bad_options_exit_2_one_line(tmp_path, capsys, args, text):
    path = M.save(M.conv_layer(), tmp_path / "m.onnx")
    assert main(["depthwise", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err


def test_cli_json(tmp_path, capsys):
    path = M.save(_block_permuted(), tmp_path / "m.onnx")
    assert main(["depthwise", str(path), "--groups", "4", "--min-params", "0", "--no-measure", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passes"][0]["changes"][0]["detail"]["groups"] == 4
    assert out["write"]["fidelity"]["outputs"][0]["rel_l2"] < 1e-4
    assert main(["depthwise", str(path), "--multiplier", "1", "--min-params", "0", "--no-measure", "--dry-run",
                 "-o", str(tmp_path / "dry.onnx")]) == 0
    assert "dry run" in capsys.readouterr().out and not (tmp_path / "dry.onnx").exists()


def test_by_default_a_layer_is_rewritten_only_where_it_was_measured_faster():
    """Fewer MACs often ran slower (issue 19: a 1.31x slower model at 0.27x the MACs; tcn_digits
    1.16x), and `depthwise` kept every rewrite unless given --measure. It now measures by default
    when the shapes are known, like factorize: each rewrite kept ran at most 0.95x the original's
    time in its micro-benchmark, and each one dropped says so."""
    m = oc.load(M.MODELS / "tcn_digits.onnx")
    c = oc.depthwise(m, data=oc.load_data(M.MODELS / "digits_calib.npz", m, num_samples=32))
    result = c.results[0]
    assert result.settings["measure"] is True
    assert len(result.changes) == 4  # the four convs
    for change in result.changes:  # (on this machine all three candidates ran 1.07-1.33x slower)
        if change.skipped:
            assert "not faster" in change.reason or "would not drop" in change.reason, change.reason
        else:
            assert change.detail["latency_ratio"] <= 0.95
    quiet = oc.depthwise(m, data=oc.load_data(M.MODELS / "digits_calib.npz", m, num_samples=32), measure=False)
    assert len(quiet.results[0].applied) == 3 and quiet.results[0].settings["measure"] is False
