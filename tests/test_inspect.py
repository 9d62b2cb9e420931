"""inspect: params and MACs on the ONNX zoo architectures shipped inside the onnx package."""
import json

import pytest

import onnxcomp as oc
from onnxcomp.cli import main

from . import models as M

# (params, Conv params, Gemm params, MACs) from the issue; each must hold within 2 %
ZOO = {
    "light_bvlc_alexnet": (60.97e6, 2.33e6, 58.63e6, 0.655e9),
    "light_vgg19": (143.67e6, None, None, 19.63e9),
    "light_resnet50": (25.50e6, None, None, 4.09e9),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_figures(name):
    params, conv, gemm, macs = ZOO[name]
    r = oc.inspect(oc.load(M.LIGHT / f"{name}.onnx"))
    assert r.total_params == pytest.approx(params, rel=0.02)
    assert r.total_macs == pytest.approx(macs, rel=0.02)
    if conv:
        assert r.by_op["Conv"]["params"] == pytest.approx(conv, rel=0.02)
        assert r.by_op["Gemm"]["params"] == pytest.approx(gemm, rel=0.02)
        assert r.by_op["Gemm"]["params_share"] == pytest.approx(0.96, abs=0.01)


def test_alexnet_groups_are_visible():
    r = oc.inspect(oc.load(M.LIGHT / "light_bvlc_alexnet.onnx"))
    assert [x.groups for x in r.layers if x.op == "Conv"] == [1, 2, 1, 2, 2]
    assert any("groups=2" in n for n in r.notes)


def test_json_output(capsys):
    assert main(["inspect", str(M.LIGHT / "light_bvlc_alexnet.onnx"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"total_params", "total_macs", "by_op", "layers"} <= set(d)
    assert set(d["by_op"]) == {"Conv", "Gemm"} and len(d["layers"]) == 8
    assert d["by_op"]["Gemm"]["params"] == pytest.approx(58.63e6, rel=0.02)


def test_dynamic_dims_are_unknown_not_guessed(tmp_path):
    # batch is dynamic (counted as 1); the spatial dims are dynamic too -> MACs unknown
    model = M.conv_bn_relu(batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    r = oc.inspect(model)
    assert r.total_macs is None and any("--input-shape" in n for n in r.notes)
    r = oc.inspect(model, input_shapes={"x": (1, 3, 8, 8)})
    # conv1: 8*8*8 outputs x 3*9; conv2: 8*8*8 x 8*9; fc: 5*8
    assert r.total_macs == 512 * 27 + 512 * 72 + 40


def test_batch_dim_counts_as_one():
    r = oc.inspect(M.conv_bn_relu(batch="N"))
    assert r.total_macs == 512 * 27 + 512 * 72 + 40


def test_shapes_computed_at_run_time_are_measured():
    """Attention whose reshape targets are computed at run time (nn.MultiheadAttention, legacy
    export): inference cannot size Q·Kᵀ, one run at batch 1 does, so every layer's MACs are known."""
    r = oc.inspect(oc.load(M.MODELS / "vit_mha_digits.onnx"))
    assert not any("MACs unknown" in n for n in r.notes)
    assert r.total_macs == oc.inspect(oc.load(M.MODELS / "vit_sdpa_digits.onnx")).total_macs


def test_sparsity_and_storage_reported():
    model = M.constant_node_weights()
    r = oc.inspect(model)
    assert {x.storage for x in r.layers} == {"constant"}
    assert r.storage == {"constant": 2}


def test_input_shape_for_unknown_input_is_an_error(capsys):
    code = main(["inspect", str(M.LIGHT / "light_bvlc_alexnet.onnx"), "--input-shape", "nope=1x3"])
    err = capsys.readouterr().err
    assert code == 2 and "not a model input" in err and err.count("\n") == 1


def test_one_input_shape_option_may_name_several_inputs():
    """A transformer takes input_ids, attention_mask and token_type_ids: written in one
    --input-shape, the first name took the rest (`--input-shape names 'input_ids=1x32,attention_mask
    =1x32,token_type_ids', which is not a model input`). Dims may still be written with commas."""
    from onnxcomp.graph.shapes import parse_input_shapes

    assert parse_input_shapes(["input_ids=1x32,attention_mask=1x32 token_type_ids=1x32"]) == {
        "input_ids": (1, 32), "attention_mask": (1, 32), "token_type_ids": (1, 32)}
    assert parse_input_shapes(["x=1,3,224,224", "y=2x4"]) == {"x": (1, 3, 224, 224), "y": (2, 4)}
    with pytest.raises(oc.ConfigError, match="bad --input-shape"):
        parse_input_shapes(["x=1x3,y="])


def test_a_compressed_model_reads_like_its_original():
    """A clustered model stores its weights behind decoders that onnxruntime folds at load: inspect
    counts their decoder MatMuls as no MACs (they made auto's macs_ratio 1.12) and shows each
    encoded weight's shape, params and stored bytes (it showed '-' and 0 params)."""
    src = M.MODELS / "mobilenet_digits.onnx"
    before = oc.inspect(oc.load(src))
    clustered = oc.cluster(src, 4)
    after = oc.inspect(clustered.model)
    assert after.total_macs == before.total_macs and after.total_params == before.total_params
    assert [(x.name, x.op, x.weight_shape) for x in after.layers] == \
        [(x.name, x.op, x.weight_shape) for x in before.layers]
    n = sum(1 for x in after.layers if x.storage == "encoded")
    assert n >= 5 and after.storage["encoded"] == n
    assert after.weight_bytes < 0.4 * before.weight_bytes
    assert all(x.sparsity is None for x in after.layers if x.storage == "encoded")


def test_passes_say_why_they_leave_an_encoded_weight_alone(tmp_path, capsys):
    """Pruning an already clustered model changes nothing, and says why: its weights are computed
    at load by decoders (it said only 'nothing to compress')."""
    clustered = M.save(oc.cluster(M.MODELS / "resnet_digits.onnx", 4).model.proto, tmp_path / "c.onnx")
    assert main(["prune", str(clustered), "--sparsity", "0.5", "-o", str(tmp_path / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "15 weight(s) are already compressed" in out and "start from the original model" in out
