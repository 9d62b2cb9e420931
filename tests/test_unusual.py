"""Regressions for valid-but-unusual models (issue 22): finite numerics, grouped ConvTranspose,
local functions and subgraph scopes, old opsets, fixed batches, models without inputs, outputs
never larger than the input. Each case here once crashed, wrote NaN, or was refused; the
generated models of tests/test_graphgen.py cover the same classes in other forms."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxcomp.cli import main

from . import models as M


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return code, cap.out, cap.err


def outputs(path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def calib(folder, shape, n: int = 8, seed: int = 5):
    x = M.rng(seed).normal(size=(n, *shape)).astype(np.float32)
    path = folder / "calib.npz"
    np.savez(path, x=x)
    return path, x


# --- silent NaN: weights whose scale breaks float16 tables, overflows, denormals ---------------------

def extreme_channels() -> onnx.ModelProto:
    """conv_bn_relu whose w2 has one output channel of denormals (1e-41) and one of 1e30 weights."""
    model = M.conv_bn_relu(c_mid=16)
    t = next(t for t in model.graph.initializer if t.name == "w2")
    a = numpy_helper.to_array(t).copy()
    a[3] = np.sign(a[3]) * np.float32(1e-41)
    a[5] *= np.float32(1e30)
    t.CopyFrom(numpy_helper.from_array(a, "w2"))
    return model


@pytest.mark.parametrize("argv", [["cluster", "--bits", "2", "--min-params", "1"],
                                  ["cluster", "--bits", "8", "--min-params", "1", "DATA"],
                                  ["compress", "--sparsity", "0.5"], ["compress", "DATA"]])
def test_extreme_channels_never_become_nan(capsys, tmp_path, argv):
    """cluster/compress once wrote NaN into w2 (a float16 scale overflowed) and reported SQNR inf."""
    src = M.save(extreme_channels(), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (3, 8, 8))
    argv = [str(data) if a == "DATA" else a for a in argv]
    if str(data) in argv:
        argv.insert(argv.index(str(data)), "--data")
    code, out, err = run(capsys, [argv[0], str(src), *argv[1:], "--json", "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()
    if argv[:3] == ["cluster", "--bits", "2"]:  # 4 values per channel cannot be exact: a finite SQNR
        report = json.loads(out)
        w2 = next(c for p in report["passes"] for c in p["changes"] if c["name"] == "w2")
        assert w2["action"] == "clustered" and math.isfinite(w2["detail"]["sqnr_db"])


@pytest.mark.parametrize("granularity", ["tensor", "channel", "shared", "grid"])
@pytest.mark.parametrize("k", [4, 16, 256])
def test_cluster_fit_is_finite_at_any_scale(granularity, k):
    from onnxcomp.encode.tables import Layout
    from onnxcomp.passes.cluster.fit import fit

    a = M.rng(1).normal(size=(8, 4, 3, 3)).astype(np.float32)
    a[1] = np.sign(a[1]) * np.float32(1e-41)
    a[2] = np.clip(a[2], -1, 1) * np.float32(3e38)
    a[3] *= np.float32(1e-30)
    f = fit(a.reshape(-1), Layout.of(a.shape, 0), k, granularity)
    assert np.isfinite(f.values).all() and math.isfinite(f.sse) and math.isfinite(f.rel_error)
    assert np.abs(f.values.reshape(a.shape)[2]).max() > 1e37  # the big channel keeps its scale


def test_kmeans_takes_finite_values_only():
    from onnxcomp.algo.kmeans import kmeans_rows

    with pytest.raises(ValueError):
        kmeans_rows(np.array([[1.0, np.nan, 2.0]]), 2)
    big = np.array([[1e30, -2e30, 3e30, 0.5]], np.float32)  # float16 rounding would be inf
    r = kmeans_rows(big, 3, snap=lambda c: c.astype(np.float16).astype(np.float64))
    assert np.isfinite(r.centroids).all()


def test_numeric_problem():
    from onnxcomp.algo.numeric import keep_finite, numeric_problem

    assert numeric_problem(np.array([1.0, np.nan], np.float32)) == "contains NaN or Inf"
    assert numeric_problem(np.array([1.0, -np.inf], np.float16)) == "contains NaN or Inf"
    assert "float32 range" in numeric_problem(np.array([1e300, 1.0]))
    assert numeric_problem(np.array([3e38, 1e-41], np.float32)) is None
    assert keep_finite(np.array([1.0, np.inf, np.nan]), np.array([5.0, 6.0, np.nan])).tolist()[:2] == [1.0, 6.0]


def test_solvers_never_write_nan():
    """GPTQ/OBS on statistics that are not finite, or on weights whose updates overflow float32."""
    from onnxcomp.algo.obs import assign_gptq, prune_obs

    r = M.rng(2)
    w = r.normal(size=(4, 6)).astype(np.float32)
    bad_h = np.full((6, 6), np.nan)
    assert np.isfinite(prune_obs(w, bad_h, 0.5)).all()
    table = np.sort(r.normal(size=(4, 3)), axis=1)
    assert np.isfinite(assign_gptq(w, bad_h, table)).all()
    huge = (np.clip(w, -1, 1) * np.float32(3e38)).astype(np.float32)  # finite, near float32 max
    h = r.normal(size=(6, 6))
    out = prune_obs(huge, h @ h.T, 0.5)
    assert np.isfinite(out).all()


def test_statistics_of_nonfinite_inputs_are_dropped():
    from onnxcomp.measure.stats import StatsRequest, accumulate

    x = M.rng(3).normal(size=(4, 6)).astype(np.float32)
    req = StatsRequest("w", "x", "matrix")
    assert accumulate([x], None, req, samples=4) is not None
    x[1, 2] = np.inf
    assert accumulate([x], None, req, samples=4) is None


def test_correction_leaves_nonfinite_channels_alone():
    from onnxcomp.passes.correction import fit

    x = M.rng(4).normal(size=(3, 50))
    y = 2 * x + 1
    x[1, 7] = np.inf
    a, b = fit(x, y, "affine")
    assert (a[1], b[1]) == (1.0, 0.0) and np.isfinite(a).all() and np.isfinite(b).all()
    assert a[0] > 1.5 and b[0] > 0.5


def test_gemm_with_beta_zero_is_not_shifted(capsys, tmp_path):
    """The output correction divided its shift by beta: C became inf and 0 * inf NaN."""
    r = M.rng(6)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g", transB=1, beta=0.0)]
    model = M.make(nodes, [M.vi("x", ["N", 16])], [M.vi("y", ["N", 16])],
                   [M.init("w", r.normal(0, 0.3, (16, 16)).astype(np.float32)), M.init("c", np.ones(16, np.float32))])
    src = M.save(model, tmp_path / "m.onnx")
    data, x = calib(tmp_path, (16,))
    code, _, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "--data", str(data),
                                "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()
    c = next(t for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer if t.name == "c")
    assert np.isfinite(numpy_helper.to_array(c)).all()


def test_nan_in_the_written_model_is_an_error(tmp_path):
    """The last line of defence: outputs NaN where the input's are finite -> one-line error, no file."""
    from onnxcomp.errors import UnsupportedModelError
    from onnxcomp.pipeline.write import finish

    src = M.save(M.conv_bn_relu(c_mid=8), tmp_path / "m.onnx")
    bad = M.conv_bn_relu(c_mid=8)
    t = next(t for t in bad.graph.initializer if t.name == "w2")
    a = numpy_helper.to_array(t).copy()
    a[0, 0, 0, 0] = np.nan
    t.CopyFrom(numpy_helper.from_array(a, "w2"))
    with pytest.raises(UnsupportedModelError, match="computes NaN or Inf in output 'y'"):
        finish(src, bad, tmp_path / "o.onnx", command="prune", data=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_nan_check_tells_overflow_from_a_bug():
    """Weights near the float range: the input already overflows on the data, a changed weight
    overflows elsewhere; that is said so, and only an input that stays finite is called a bug."""
    from types import SimpleNamespace

    from onnxcomp.errors import UnsupportedModelError
    from onnxcomp.io.model import Model
    from onnxcomp.pipeline.write import check_finite

    original = Model(M.conv_bn_relu(c_mid=8))
    report = SimpleNamespace(outputs=[{"name": "y", "new_nonfinite": 2, "ref_nonfinite": 5}])
    with pytest.raises(UnsupportedModelError, match="the input itself overflows"):
        check_finite(report, original)
    report.outputs[0]["ref_nonfinite"] = 0
    with pytest.raises(UnsupportedModelError, match="a bug in onnxcomp"):
        check_finite(report, original)
    report.outputs[0]["new_nonfinite"] = 0
    check_finite(report, original)


def test_importance_of_gemms_reading_transposed_inputs(capsys, tmp_path):
    """Calibration importance cut captured tensors to the sample count on axis 0, which is the
    features of a transA Gemm's input: a broadcast error."""
    r = M.rng(21)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="t0", perm=[1, 0]),
             helper.make_node("Gemm", ["xt", "w1", "b1"], ["h"], name="g1", transA=1, transB=1),
             helper.make_node("Transpose", ["h"], ["ht"], name="t1", perm=[1, 0]),
             helper.make_node("Gemm", ["ht", "w2", "b2"], ["y"], name="g2", transA=1)]
    inits = [M.init("w1", r.normal(size=(6, 7)).astype(np.float32)), M.init("b1", np.zeros(6, np.float32)),
             M.init("w2", r.normal(size=(6, 3)).astype(np.float32)), M.init("b2", np.zeros(3, np.float32))]
    src = M.save(M.make(nodes, [M.vi("x", ["N", 7])], [M.vi("y", ["N", 3])], inits, opset=13), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (7,))
    code, out, err = run(capsys, ["cluster", str(src), "--bits", "2", "--min-params", "1", "--data", str(data),
                                  "--encoding", "dense", "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert "weighted by calibration importance (E[x^2] per input) on 2 weight(s)" in out


# --- channel / group arithmetic: grouped ConvTranspose -----------------------------------------------

def grouped_convtranspose(group: int = 2) -> onnx.ModelProto:
    r = M.rng(7)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["h"], name="relu"),
             helper.make_node("ConvTranspose", ["h", "wt"], ["t"], name="up", group=group, strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["y"], name="relu2")]
    inits = [M.init("w0", r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
             M.init("wt", r.normal(0, 0.3, (8, 6 // group, 3, 3)).astype(np.float32))]
    return M.make(nodes, [M.vi("x", ["N", 3, 6, 6])], [M.vi("y", ["N", 6, 13, 13])], inits)


def test_depthwise_convtranspose_is_left_alone_like_a_depthwise_conv(capsys, tmp_path):
    """A UNet's upsampler ConvTranspose(groups = channels), kernel [C, 1, 4, 4]: 16 weights per
    channel, as fragile as a depthwise conv's 9, was pruned by magnitude (2:4 on it alone cost a
    torch-exported UNet 0.014 of its output cosine) while depthwise convs are left alone."""
    from onnxcomp.graph.weights import find_weights

    r = M.rng(7)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("ConvTranspose", ["c", "wt"], ["y"], name="up", group=8, strides=[2, 2], pads=[1] * 4)]
    model = M.make(nodes, [M.vi("x", ["N", 3, 6, 6])], [M.vi("y", ["N", 8, 12, 12])],
                   [M.init("w0", r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
                    M.init("wt", r.normal(0, 0.3, (8, 1, 4, 4)).astype(np.float32))])
    assert find_weights(model).by_name()["wt"].is_depthwise and not find_weights(model).by_name()["w0"].is_depthwise
    src = M.save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "--encoding", "dense",
                                  "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert "depthwise kernel" in out
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    assert np.array_equal(after["wt"], numpy_helper.to_array(model.graph.initializer[1]))
    assert np.mean(after["w0"] == 0) >= 0.45


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5", "--min-params", "1"],
                                  ["cluster", "--bits", "3", "--min-params", "1"],
                                  ["auto", "--target-size", "0.7", "--max-drop", "1"]])
def test_grouped_convtranspose_with_data(capsys, tmp_path, argv):
    """The correction scaled [C_in, C_out/g, k, k] kernels by C_out values: a crash."""
    src = M.save(grouped_convtranspose(), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (3, 6, 6))
    code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "--data", str(data), "-o", str(tmp_path / "o.onnx")])
    assert code in (0, 3), err  # auto may miss its size target on a model this small
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()


def test_per_output_channel_scale_of_a_grouped_convtranspose():
    """Scaling the kernel by per_out_channel(w, a) scales output channel c by a[c]."""
    from onnxcomp.graph.axes import out_channels, per_out_channel
    from onnxcomp.graph.weights import find_weights

    model = grouped_convtranspose(group=2)
    w = find_weights(model).by_name()["wt"]
    assert out_channels(w) == 6
    a = np.arange(1, 7, dtype=np.float32)
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    t = next(t for t in scaled.graph.initializer if t.name == "wt")
    t.CopyFrom(numpy_helper.from_array((w.values() * per_out_channel(w, a)).astype(np.float32), "wt"))
    for m in (model, scaled):  # compare before the Relu
        m.graph.output[0].name = "t"
    x = M.rng(8).normal(size=(2, 3, 6, 6)).astype(np.float32)
    base = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(scaled.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, base * a[None, :, None, None], rtol=1e-4, atol=1e-4)


# --- sub-models keep functions; If/Loop bodies read the outer scope --------------------------------

def body_scopes() -> onnx.ModelProto:
    """MatMul -> Loop (body: MatMul by an outer weight only the body reads) -> If (branches with
    their own nodes and an inner weight) -> MatMul."""
    r = M.rng(9)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w_loop"], ["h_mm"], name="body_mm"),
         helper.make_node("Relu", ["h_mm"], ["h_out"], name="body_relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [M.vi("i", [], onnx.TensorProto.INT64), M.vi("cond_in", [], onnx.TensorProto.BOOL),
                 M.vi("h_in", ["N", 16])],
        [M.vi("cond_out", [], onnx.TensorProto.BOOL), M.vi("h_out", ["N", 16])])
    then_g = helper.make_graph([helper.make_node("MatMul", ["l", "w_in"], ["t_mm"], name="then_mm"),
                               helper.make_node("Relu", ["t_mm"], ["t"], name="then_relu")], "then", [],
                              [M.vi("t", ["N", 16])], initializer=[M.init("w_in", r.normal(0, 0.3, (16, 16)).astype(np.float32))])
    else_g = helper.make_graph([helper.make_node("Neg", ["l"], ["e"], name="else_neg")], "else", [], [M.vi("e", ["N", 16])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Loop", ["trip", "keep", "h"], ["l"], name="loop", body=body),
             helper.make_node("ReduceSum", ["l"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["b"], name="if", then_branch=then_g, else_branch=else_g),
             helper.make_node("MatMul", ["b", "w2"], ["y"], name="mm2")]
    inits = [M.init("w1", r.normal(0, 0.3, (16, 16)).astype(np.float32)),
             M.init("w_loop", r.normal(0, 0.3, (16, 16)).astype(np.float32)),
             M.init("w2", r.normal(0, 0.3, (16, 16)).astype(np.float32)),
             M.init("trip", np.array(2, np.int64)), M.init("keep", np.array(True)), M.init("zero", np.array(0, np.float32))]
    return M.make(nodes, [M.vi("x", ["N", 16])], [M.vi("y", ["N", 16])], inits)


def test_subgraph_inputs_are_the_outer_scope_only():
    from onnxcomp.graph.nested import subgraph_inputs

    nodes = {n.name: n for n in body_scopes().graph.node}
    assert subgraph_inputs(nodes["loop"]) == {"w_loop"}  # not the body's own cond_in, h_in, h_mm
    assert subgraph_inputs(nodes["if"]) == {"l"}  # not t_mm, nor the inner weight w_in


@pytest.mark.parametrize("argv", [["prune", "--structured", "--ratio", "0.5", "--round-to", "1"],
                                  ["prune-channels", "--ratio", "0.5", "--round-to", "1"],
                                  ["cluster", "--bits", "3", "--min-params", "1"],
                                  ["factorize", "--min-params", "1", "--rank", "4"],
                                  ["prune", "--sparsity", "0.5", "--min-params", "1"]])
def test_bodies_reading_the_outer_scope(capsys, tmp_path, argv):
    """Structured pruning dropped w_loop (only the Loop body reads it); the streaming engine fed
    segments with the bodies' own tensors (KeyError 'cond_in')."""
    src = M.save(body_scopes(), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (16,))
    code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "--data", str(data), "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    out = onnx.load(str(tmp_path / "o.onnx"))  # (prune and cluster may store it behind a decoder)
    assert "w_loop" in {t.name for t in out.graph.initializer} | {o for n in out.graph.node for o in n.output}
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()


def function_model() -> onnx.ModelProto:
    """MatMul -> a local function (its own Constant weight) -> MatMul."""
    r = M.rng(10)
    fn = helper.make_function("local", "Block", ["X"], ["Y"], [
        helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(r.normal(0, 0.3, (16, 16)).astype(np.float32))),
        helper.make_node("MatMul", ["X", "K"], ["Z"]), helper.make_node("Relu", ["Z"], ["Y"])],
        [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Block", ["h"], ["b"], domain="local", name="blk"),
             helper.make_node("MatMul", ["b", "w2"], ["y"], name="mm2")]
    inits = [M.init("w1", r.normal(0, 0.3, (16, 16)).astype(np.float32)),
             M.init("w2", r.normal(0, 0.3, (16, 8)).astype(np.float32))]
    graph = helper.make_graph(nodes, "fn", [M.vi("x", ["N", 16])], [M.vi("y", ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[fn])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_sub_models_keep_local_functions():
    """truncate() dropped the model's functions (onnxruntime: no op Block); expose() typed the
    tensors after a function call only when its skeleton kept them."""
    from onnxcomp.graph.subgraph import elem_types, truncate

    model = function_model()
    sub = truncate(model, ["y"])
    assert [f.name for f in sub.functions] == ["Block"]
    x = M.rng(11).normal(size=(2, 16)).astype(np.float32)
    got = ort.InferenceSession(sub.SerializeToString()).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x})[0])
    assert elem_types(model).get("b") == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5", "--min-params", "1"],
                                  ["cluster", "--bits", "4", "--min-params", "1"],
                                  ["prune", "--structured", "--ratio", "0.5", "--round-to", "1"],
                                  ["sensitivity", "--min-params", "1"]])
def test_local_functions_with_data(capsys, tmp_path, argv):
    src = M.save(function_model(), tmp_path / "m.onnx")
    data, _ = calib(tmp_path, (16,))
    out = [] if argv[0] == "sensitivity" else ["-o", str(tmp_path / "o.onnx")]
    code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "--data", str(data), *out])
    assert code == 0, err


@pytest.mark.parametrize("allocation", ["mixed", "sensitivity"])
def test_mixed_bits_on_channels_beyond_float16(capsys, tmp_path, allocation):
    """A grid option at half bits (2.5) on weights no float16 scale holds is fitted as channel
    codebooks; pricing it computed 1 << 2.5 (TypeError)."""
    src = M.save(extreme_channels(), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (3, 8, 8))
    code, _, err = run(capsys, ["cluster", str(src), "--bits", "3", "--allocation", allocation, "--min-params", "1",
                                "--data", str(data), "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()


def test_correction_fit_across_channel_blocks_is_each_channels_least_squares():
    """Wide layers are fitted a block of channels at a time: every channel still gets its own
    least-squares scale and shift, a non-finite one (1, 0), in the blocks after the first too."""
    from onnxcomp.passes.correction import FIT_BLOCK, PRIOR_POSITIONS, fit

    r = M.rng(8)
    c, p = 70, FIT_BLOCK // 50  # 50 channels per block: two blocks
    x = (r.normal(size=(c, p)) * r.uniform(0.5, 2, (c, 1)) + r.normal(size=(c, 1))).astype(np.float32)
    scale, shift = r.uniform(0.5, 1.5, c), r.normal(size=c)
    y = (scale[:, None] * x + shift[:, None] + 0.01 * r.normal(size=(c, p))).astype(np.float32)
    x[60, 3] = np.nan
    a, b = fit(x, y, "affine")
    for i in (0, 49, 50, 69):  # the first and last channel of each block
        xi, yi = x[i].astype(np.float64), y[i].astype(np.float64)
        slope = np.polyfit(xi, yi, 1)[0]
        slope = (p * slope + PRIOR_POSITIONS) / (p + PRIOR_POSITIONS)  # the prior toward no change
        assert np.isclose(a[i], slope, rtol=1e-9) and np.isclose(b[i], yi.mean() - slope * xi.mean(), rtol=1e-9)
    assert (a[60], b[60]) == (1.0, 0.0)
