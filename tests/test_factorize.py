"""factorize: exact at full rank for every geometry, MACs drop at low rank, reasons, data-aware, CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.measure.fidelity import compare
from tests import models as M

FULL = dict(rank=10**6, round_to=1, allow_growth=True, min_params=0)


def run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def rel_err(a: onnx.ModelProto, b: onnx.ModelProto, x: np.ndarray) -> float:
    ra, rb = run(a, x), run(b, x)
    assert list(ra) == list(rb)  # the same graph outputs, in the same order
    return max(float(np.linalg.norm(ra[k] - rb[k]) / np.linalg.norm(ra[k])) for k in ra)


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


GEOMETRIES = {
    "plain": dict(),
    "pads_bias": dict(pads=[1, 1, 1, 1]),
    "stride2_asym_pads": dict(strides=(2, 2), pads=[1, 0, 2, 1], hw=(10, 11)),
    "dilation": dict(dilations=(2, 2), pads=[2, 2, 2, 2], bias=False),
    "rect_kernel_stride": dict(kernel=(3, 5), strides=(2, 1), pads=[1, 2, 1, 2], dilations=(1, 2)),
    "groups": dict(c_in=4, c_out=6, group=2, pads=[1, 1, 1, 1]),
    "same_upper": dict(auto_pad="SAME_UPPER", strides=(2, 2), hw=(10, 9)),
}


@pytest.mark.parametrize("method", ["spatial", "tucker2", "svd"])
@pytest.mark.parametrize("geom", list(GEOMETRIES))
def test_full_rank_conv_is_exact(method, geom):
    model = M.conv_layer(**GEOMETRIES[geom])
    c = oc.factorize(model, method, **FULL)
    (change,) = c.results[0].applied
    assert change.detail["method"] == method
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = M.rng(1).normal(size=[2] + dims).astype(np.float32)
    assert rel_err(model, c.proto, x) < 1e-4
    last = producer(c.proto, "c")  # the original output tensor name is written by the last new node
    assert last.name.startswith("conv_") and last.op_type == "Conv"
    assert not any(t.name == "w" for t in c.proto.graph.initializer)  # old storage removed


@pytest.mark.parametrize("kw", [dict(trans_b=1), dict(trans_b=0),
                                dict(trans_a=1, trans_b=0, alpha=0.5, beta=2.0),
                                dict(trans_b=1, with_c=False, alpha=1.5)])
def test_full_rank_gemm_is_exact(kw):
    model = M.gemm_layer(**kw)
    c = oc.factorize(model, "svd", **FULL)
    x = M.rng(2).normal(size=(12, 5) if kw.get("trans_a") else (5, 12)).astype(np.float32)
    assert rel_err(model, c.proto, x) < 1e-4
    assert [n.name for n in c.proto.graph.node][:2] == ["gemm_a", "gemm_b"]
    assert producer(c.proto, "g").name == "gemm_b"


def test_full_rank_matmul_and_1x1_conv_are_exact():
    model = M.matmul_layer()
    c = oc.factorize(model, "svd", **FULL)
    x = M.rng(3).normal(size=(2, 3, 12)).astype(np.float32)
    assert rel_err(model, c.proto, x) < 1e-4 and producer(c.proto, "y").name == "mm_b"
    conv = M.conv_layer(c_in=6, c_out=8, kernel=(1, 1), strides=(2, 2), pads=[1, 1, 1, 1], group=2)
    c = oc.factorize(conv, "auto", **FULL)
    assert c.results[0].applied[0].detail["method"] == "svd"
    assert rel_err(conv, c.proto, M.rng(4).normal(size=(2, 6, 9, 9)).astype(np.float32)) < 1e-4


def test_constant_node_and_shared_weights_full_rank():
    model = M.constant_node_weights()
    c = oc.factorize(model, "auto", **FULL)
    assert len(c.results[0].applied) == 2
    assert not any(n.op_type == "Constant" for n in c.proto.graph.node)  # storage removed
    assert rel_err(model, c.proto, M.rng(5).normal(size=(1, 2, 4, 4)).astype(np.float32)) < 1e-4
    shared = M.shared_weight()
    c = oc.factorize(shared, "svd", **FULL)
    (change,) = c.results[0].applied
    assert len(change.detail["nodes"]) == 4 and not any(t.name == "w" for t in c.proto.graph.initializer)
    assert rel_err(shared, c.proto, M.rng(6).normal(size=(2, 8)).astype(np.float32)) < 1e-4


def test_low_rank_drops_macs_and_rounds_ranks():
    model = M.conv_layer(c_in=32, c_out=32, pads=[1, 1, 1, 1], hw=(12, 12))
    c = oc.factorize(model, "spatial", ratio=0.7, min_params=0)  # 70 % of the MACs removed
    (change,) = c.results[0].applied
    assert change.macs_after < 0.4 * change.macs_before and change.detail["rank"][0] % 8 == 0
    assert oc.inspect(c.model).total_macs == change.macs_after  # the report matches the graph
    c = oc.factorize(model, "tucker2", energy=0.5, min_params=0, round_to=8)
    r1, r2 = c.results[0].changes[0].detail["rank"]
    assert r1 % 8 == 0 and r2 % 8 == 0 and r1 <= 32 and r2 <= 32


def test_skip_reasons():
    dw = M.conv_layer(c_in=8, c_out=8, group=8, pads=[1, 1, 1, 1])
    (change,) = oc.factorize(dw, "auto", min_params=0).results[0].changes
    assert change.skipped and "depthwise" in change.reason
    small = M.conv_layer(c_in=4, c_out=6)
    (change,) = oc.factorize(small, "tucker2", rank=6, min_params=0).results[0].changes
    assert change.skipped and "would not drop" in change.reason
    (change,) = oc.factorize(M.gemm_layer(), "spatial", min_params=0).results[0].changes
    assert "convs only" in change.reason


def test_data_aware_beats_plain_svd_on_resnet():
    m = oc.load(M.MODELS / "resnet_digits.onnx")
    calib, test = M.MODELS / "digits_calib.npz", M.MODELS / "digits_test.npz"
    errors = {}
    for aware in (False, True):  # six 3x3 convs of the last stages, to keep the test fast
        c = oc.factorize(m, "spatial", ratio=0.7, data=oc.load_data(calib, m, num_samples=32), data_aware=aware,
                         include=["*features.[678]*"], allocation="uniform", measure=False)
        assert len(c.results[0].applied) == 6
        assert c.results[0].settings["data_aware"] is aware
        errors[aware] = compare(m, c.model, test).outputs[0]["rel_l2"]
    assert errors[True] < 0.7 * errors[False]


def test_random_data_never_makes_it_data_aware():
    model = M.conv_layer(c_in=16, c_out=16, pads=[1, 1, 1, 1])
    rand = oc.load_data(None, model, batch_size=4)
    c = oc.factorize(model, "spatial", ratio=0.5, data=rand, min_params=0)
    assert c.results[0].settings["data_aware"] is False
    with pytest.raises(oc.ConfigError, match="real calibration data"):
        oc.factorize(model, "spatial", data=rand, data_aware=True, min_params=0)


def test_measure_reports_latency_or_skips():
    model = M.conv_layer(c_in=32, c_out=32, pads=[1, 1, 1, 1], hw=(16, 16), batch=1)
    (change,) = oc.factorize(model, "spatial", ratio=0.75, measure=True, min_params=0).results[0].changes
    assert change.detail.get("latency_ratio") is not None or "--measure" in (change.reason or "")


@pytest.mark.parametrize("args, text", [(["--rank", "0"], "--rank 0"), (["--energy", "1.5"], "--energy 1.5"),
                                        (["--rank", "4", "--energy", "0.9"], "--rank and --energy"),
                                        (["--ratio", "1.2"], "--ratio")])
def test_bad_options_exit_2_one_line(tmp_path, capsys, args, text):
    path = M.save(M.conv_layer(), tmp_path / "m.onnx")
    assert main(["factorize", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_writes_json_and_gates(tmp_path, capsys):
    path = M.save(M.conv_layer(c_in=16, c_out=16, pads=[1, 1, 1, 1]), tmp_path / "m.onnx")
    assert main(["factorize", str(path), "--method", "spatial", "--rank", "16", "--min-params", "0",
                 "--allow-growth", "--round-to", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passes"][0]["changes"][0]["detail"]["method"] == "spatial"
    assert out["write"]["fidelity"]["random_data"] is True and (tmp_path / "m.factorize-r16.onnx").exists()
    assert main(["factorize", str(path), "--rank", "1", "--round-to", "1", "--min-params", "0",
                 "--min-agreement", "1", "-o", str(tmp_path / "low.onnx")]) == 3
    assert "quality gate" in capsys.readouterr().out


def test_documented_factorization_commands_run(tmp_path, monkeypatch, capsys):
    text = (M.ROOT / "docs" / "factorization.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split()[1:] for line in block.strip().splitlines()]
    assert [c[0] for c in commands] == ["factorize", "depthwise"]
    monkeypatch.chdir(M.ROOT)
    for i, args in enumerate(commands):
        assert main(args + ["-o", str(tmp_path / f"out{i}.onnx")]) == 0, capsys.readouterr().err
    assert (tmp_path / "out0.onnx").exists() and "dry run" in capsys.readouterr().out


def test_sequential_statistics_reduce_to_local_without_drift():
    from onnxcomp.algo.linalg import output_error
    from onnxcomp.measure.stats import LayerStats

    r = M.rng(11)
    x = r.normal(size=(500, 12))
    cov = x.T @ x / 500
    w, approx = r.normal(size=(5, 12)), r.normal(size=(5, 12))
    same = LayerStats(cov, cross=cov, ref=cov, n=500)
    assert np.allclose(same.target(w), w, atol=1e-4)
    assert np.isclose(output_error(w, approx, cov, cov, cov), output_error(w, approx, cov))
    drift = x + 0.3 * r.normal(size=x.shape)  # inputs moved by earlier rewrites
    moved = LayerStats(drift.T @ drift / 500, cross=x.T @ drift / 500, ref=cov, n=500)
    fit = moved.target(w)  # least squares: W x ≈ fit · drift
    assert np.linalg.norm(x @ w.T - drift @ fit.T) < np.linalg.norm(x @ w.T - drift @ w.T)
