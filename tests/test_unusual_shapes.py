"""Regressions for valid-but-unusual models (issue 22), part two: old opsets, fixed batches and
models without inputs, outputs never larger than the input, structured pruning and low-rank
factors on unusual layers (the helpers and part one: tests/test_unusual.py)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from . import models as M
from .test_unusual import body_scopes, calib, grouped_convtranspose, outputs, run


# --- old opsets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [7, 9, 10, 11])
def test_factorize_gemm_at_old_opsets(capsys, tmp_path, opset):
    """Before opset 11 Gemm's C is required: the first Gemm of an SVD pair once had none and the
    checker refused the output, as a traceback, after all the work."""
    r = M.rng(12)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = M.make(nodes, [M.vi("x", ["N", 64])], [M.vi("y", ["N", 64])],
                   [M.init("w", r.normal(0, 0.1, (64, 64)).astype(np.float32)), M.init("b", np.zeros(64, np.float32))],
                   opset=opset)
    src = M.save(model, tmp_path / "m.onnx")
    code, _, err = run(capsys, ["factorize", str(src), "--rank", "8", "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    out = onnx.load(str(tmp_path / "o.onnx"))
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and out.opset_import[0].version == opset
    assert all(len(n.input) == 3 for n in gemms) if opset < 11 else len(gemms[0].input) == 2
    onnx.checker.check_model(out, full_check=True)


# --- batch and inputs: the same in every command ------------------------------------------------------

FIXED_BATCH_ARGV = {
    "prune": ["prune", "--sparsity", "0.5", "--min-params", "1"],
    "structured": ["prune", "--structured", "--ratio", "0.5", "--round-to", "1"],
    "cluster": ["cluster", "--bits", "4", "--min-params", "1"],
    "factorize": ["factorize", "--min-params", "1"],
    "depthwise": ["depthwise", "--min-params", "1"],
    "compress": ["compress", "--sparsity", "0.5"],
    "auto": ["auto", "--target-size", "0.8", "--max-drop", "1"],
}


@pytest.mark.parametrize("samples", [None, "1"])
@pytest.mark.parametrize("command", sorted(FIXED_BATCH_ARGV))
def test_fixed_batch_in_every_command(capsys, tmp_path, command, samples):
    """A batch fixed at 2 was accepted by prune --data but refused by cluster, factorize,
    prune --structured and auto (activations captured one sample at a time); --samples 1
    gave StopIteration. Every command now feeds whole batches of 2."""
    src = M.save(M.conv_bn_relu(batch=2, c_mid=8), tmp_path / "m.onnx")
    data, x = calib(tmp_path, (3, 8, 8), n=6)
    argv = FIXED_BATCH_ARGV[command]
    extra = ["--data", str(data)] + (["--samples", samples] if samples else [])
    code, _, err = run(capsys, [argv[0], str(src), *argv[1:], *extra, "-o", str(tmp_path / "o.onnx")])
    assert code in ((0, 3) if command == "auto" else (0,)), err
    assert np.isfinite(outputs(tmp_path / "o.onnx", x[:2])[0]).all()
    if command != "auto":  # random data too
        code, _, err = run(capsys, [argv[0], str(src), *argv[1:], *(["--samples", samples] if samples else []),
                                    "-o", str(tmp_path / "o2.onnx")])
        assert code == 0, err


def test_data_smaller_than_the_fixed_batch_is_one_line(capsys, tmp_path):
    src = M.save(M.conv_bn_relu(batch=2, c_mid=8), tmp_path / "m.onnx")
    data, _ = calib(tmp_path, (3, 8, 8), n=1)
    code, _, err = run(capsys, ["cluster", str(src), "--bits", "4", "--data", str(data), "-o", str(tmp_path / "o.onnx")])
    assert code == 2 and err.count("\n") == 1 and "whole batches of 2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx"]


def test_fixed_batch_of_one_with_a_dynamic_width(capsys, tmp_path):
    """A recogniser exported as x[1, 3, 8, W] (ddddocr's): the hint once offered
    --input-shape x=16x3x8x64, which the same command then refused, and with a fitting shape the
    random check ran on 1 sample. The hint keeps the fixed batch, and the check runs on 16 samples,
    one batch of 1 at a time."""
    model = M.conv_bn_relu(batch=1, c_mid=8)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    src, out = M.save(model, tmp_path / "m.onnx"), tmp_path / "o.onnx"
    code, stdout, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "-o", str(out)])
    assert code == 0, err
    hint = stdout.split("--input-shape ")[1].split()[0]
    assert hint == "x=1x3x8x64"
    code, stdout, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "-o", str(out),
                                     "--force", "--input-shape", hint, "--json"])
    assert code == 0, err
    fidelity = json.loads(stdout)["write"]["fidelity"]
    assert fidelity["num_samples"] == 16 and "16 samples, x[1x3x8x64]" in fidelity["data"]


def no_inputs() -> onnx.ModelProto:
    """Outputs computed from constants only (a valid graph with no graph inputs)."""
    r = M.rng(13)
    nodes = [M.const_node("a", r.normal(size=(2, 8)).astype(np.float32)),
             helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")]
    return M.make(nodes, [], [M.vi("y", [2, 8])], [M.init("w", r.normal(size=(8, 8)).astype(np.float32))])


def test_bench_fixed_batch_and_no_inputs(capsys, tmp_path):
    """bench crashed (StopIteration) on both; now it times the model's own batch, and runs a
    model without inputs on an empty feed."""
    fixed = M.save(M.conv_bn_relu(batch=2, c_mid=8), tmp_path / "fixed.onnx")
    none = M.save(no_inputs(), tmp_path / "none.onnx")
    code, out, err = run(capsys, ["bench", str(fixed), str(none), "--runs", "2", "--warmup", "0", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert [e["throughput"] > 0 for e in report["entries"]] == [True, True]
    assert any("fix the batch at 2" in n for n in report["notes"])


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5", "--min-params", "1"], ["cluster", "--bits", "4"],
                                  ["factorize"], ["compare", "SELF"]])
def test_no_inputs_written_unmeasured_or_one_line(capsys, tmp_path, argv):
    src = M.save(no_inputs(), tmp_path / "m.onnx")
    argv = [str(src) if a == "SELF" else a for a in argv]
    out = [] if argv[0] == "compare" else ["-o", str(tmp_path / "o.onnx")]
    code, stdout, err = run(capsys, [argv[0], str(src), *argv[1:], *out])
    if argv[0] == "compare":  # comparing needs data: refused, one line
        assert code == 2 and err.count("\n") == 1 and "no graph inputs" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    else:  # writing needs none: the output is written, and the report says why it was not measured
        assert code == 0, err
        assert "fidelity: not measured" in stdout and "no graph inputs" in stdout
        assert (tmp_path / "o.onnx").stat().st_size <= src.stat().st_size


# --- the size commands never write a larger file --------------------------------------------------------

@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5", "--min-params", "1"],
                                  ["cluster", "--bits", "2", "--min-params", "1"],
                                  ["compress", "--sparsity", "0.5", "--bits", "2"]])
@pytest.mark.parametrize("with_data", [False, True])
def test_size_commands_never_grow_the_file(capsys, tmp_path, argv, with_data):
    """On weights too small for any encoding to pay (here 8x8), the correction's new bias and Add
    made prune's output 1.27x the input; now the input is written unchanged, and the report says why."""
    r = M.rng(14)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="r")]
    model = M.make(nodes, [M.vi("x", ["N", 8])], [M.vi("y", ["N", 8])], [M.init("w", r.normal(size=(8, 8)).astype(np.float32))])
    src = M.save(model, tmp_path / "m.onnx")
    extra = ["--data", str(calib(tmp_path, (8,))[0])] if with_data else []
    code, out, err = run(capsys, [argv[0], str(src), *argv[1:], *extra, "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert (tmp_path / "o.onnx").stat().st_size <= src.stat().st_size
    if "kept as it was" in out:
        assert onnx.load(str(tmp_path / "o.onnx")).graph == model.graph


# --- structured pruning and low-rank factors on unusual layers -------------------------------------------

def test_tucker_ranks_above_what_a_side_has():
    """A [1, 3, 1, 2] kernel unfolds to rank 2 on its input side: asking for 3 crashed a reshape."""
    from onnxcomp.algo.lowrank import Tucker2

    w = M.rng(15).normal(size=(1, 3, 1, 2))
    x = M.rng(16).normal(size=(50, 6))
    for cov in (None, x.T @ x / 50):
        factors = Tucker2(w, cov).factors((3, 1))
        assert Tucker2.approx(factors).shape == w.shape


def shared_across_roles() -> onnx.ModelProto:
    """One [16, 16] weight read by a MatMul (channels on axis 1) and a Gemm with transB (axis 0)."""
    r = M.rng(17)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Gemm", ["hr", "w", "b"], ["y"], name="g", transB=1)]
    inits = [M.init("w", r.normal(0, 0.3, (16, 16)).astype(np.float32)), M.init("b", np.zeros(16, np.float32))]
    return M.make(nodes, [M.vi("x", ["N", 16])], [M.vi("y", ["N", 16])], inits)


def convtranspose_then_conv() -> onnx.ModelProto:
    """Conv -> grouped ConvTranspose (6 output channels in 2 groups) -> Conv reading all 6."""
    model = grouped_convtranspose(group=2)
    r = M.rng(18)
    g = model.graph
    g.node[-1].output[0] = "t_relu"
    g.node.append(helper.make_node("Conv", ["t_relu", "w_after"], ["y"], name="after", pads=[1] * 4))
    g.initializer.append(M.init("w_after", r.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32)))
    g.output[0].CopyFrom(M.vi("y", ["N", 4, 13, 13]))
    onnx.checker.check_model(model, full_check=True)
    return model


def nonfinite_activations() -> onnx.ModelProto:
    """conv_bn_relu whose first conv has an Inf weight: the layers after it see Inf/NaN inputs."""
    model = M.conv_bn_relu(c_mid=8)
    t = next(t for t in model.graph.initializer if t.name == "w1")
    a = numpy_helper.to_array(t).copy()
    a[2, 0, 1, 1] = np.inf
    t.CopyFrom(numpy_helper.from_array(a, "w1"))
    return model


@pytest.mark.parametrize("builder, shape", [(convtranspose_then_conv, (3, 6, 6)), (shared_across_roles, (16,)),
                                            (nonfinite_activations, (3, 8, 8))])
def test_structured_pruning_on_unusual_layers(capsys, tmp_path, builder, shape):
    """Grouped ConvTranspose producers were given C_out/g channel ids for C_out channels, a weight
    shared on two axes was sliced for one of them, and the refit solved on Inf statistics: crashes."""
    model = builder()
    src = M.save(model, tmp_path / "m.onnx")
    data, x = calib(tmp_path, shape)
    code, _, err = run(capsys, ["prune-channels", str(src), "--ratio", "0.5", "--round-to", "1", "--data", str(data),
                                "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    ref, got = outputs(src, x)[0], outputs(tmp_path / "o.onnx", x)[0]
    assert got.shape == ref.shape and np.isfinite(got[np.isfinite(ref)]).all()


def test_float16_consumer_gets_a_float16_bias(capsys, tmp_path):
    """Structured pruning's mean shift gave a bias-less float16 conv a float32 bias: onnxruntime
    refused the output after all the work."""
    from .test_hardening import to_fp16

    src = M.save(to_fp16(M.conv_bn_relu(c_mid=8)), tmp_path / "m.onnx")
    x = M.rng(19).normal(size=(8, 3, 8, 8)).astype(np.float16)
    np.savez(tmp_path / "calib.npz", x=x)
    code, _, err = run(capsys, ["prune-channels", str(src), "--ratio", "0.5", "--round-to", "1", "--no-refit",
                                "--data", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()


def test_inf_inside_the_input_becoming_nan_is_one_line(capsys, tmp_path):
    """Inf activations (from an Inf weight the passes skip) times a pruned zero are NaN where the
    input's Relu gave 0: refused on one line that names the weight, nothing written."""
    r = M.rng(20)
    w_inf = r.normal(size=(4, 16)).astype(np.float32)
    w_inf[0, 3] = np.inf
    nodes = [helper.make_node("MatMul", ["x", "w_inf"], ["h"], name="mm0"), helper.make_node("Relu", ["h"], ["hr"], name="r0"),
             helper.make_node("MatMul", ["hr", "w2"], ["z"], name="mm1"), helper.make_node("Relu", ["z"], ["y"], name="r1")]
    model = M.make(nodes, [M.vi("x", ["N", 4])], [M.vi("y", ["N", 16])],
                   [M.init("w_inf", w_inf), M.init("w2", r.normal(size=(16, 16)).astype(np.float32))])
    src = M.save(model, tmp_path / "m.onnx")
    code, _, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "--encoding", "dense",
                                "-o", str(tmp_path / "o.onnx")])
    assert code == 2 and err.count("\n") == 1 and "NaN/Inf in w_inf" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- exports seen in the wild: names shared by Constant nodes, inputs without a common batch axis ---

def test_constant_nodes_sharing_a_name(capsys, tmp_path):
    """An exporter named every Constant node 'F0::anon' (silero-vad's OpenVINO export):
    onnxruntime folds Constants first and runs it, so onnxcomp once refused an ordinary model. It
    now renames them; other nodes sharing a name are still refused (onnxruntime refuses them)."""
    r = M.rng(3)
    w = helper.make_node("Constant", [], ["w"], name="F0::anon",
                         value=numpy_helper.from_array(r.normal(0, 0.1, (64, 64)).astype(np.float32)))
    b = helper.make_node("Constant", [], ["b"], name="F0::anon",
                         value=numpy_helper.from_array(np.ones(64, np.float32)))
    nodes = [w, b, helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    src = M.save(M.make(nodes, [M.vi("x", ["N", 64])], [M.vi("y", ["N", 64])], []), tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    written = onnx.load(str(tmp_path / "o.onnx"))
    names = [n.name for n in written.graph.node if n.name]
    assert len(set(names)) == len(names) and "F0::anon_1" in names
    x = r.normal(size=(4, 64)).astype(np.float32)
    assert np.isfinite(outputs(tmp_path / "o.onnx", x)[0]).all()

    nodes[2].name = nodes[3].name = "same"
    M.save(M.make(nodes, [M.vi("x", ["N", 64])], [M.vi("y", ["N", 64])], []), src)
    code, _, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "-o", str(tmp_path / "o2.onnx")])
    assert code == 2 and "two nodes are named 'same'" in err and "Traceback" not in err


def test_state_inputs_without_a_common_batch_axis(capsys, tmp_path):
    """An RNN export takes x[1, 64] beside state[2, 1, 8] (layers first): random samples cannot be
    stacked on axis 0. The data-free commands once exited 2 on it and bench refused it; now the
    output is written and verified, the report says the fidelity was not measured and why."""
    r = M.rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Neg", ["state"], ["state_out"], name="neg")]
    model = M.make(nodes, [M.vi("x", [1, 64]), M.vi("state", [2, 1, 8])],
                   [M.vi("y", [1, 64]), M.vi("state_out", [2, 1, 8])],
                   [M.init("w", r.normal(0, 0.1, (64, 64)).astype(np.float32))])
    src = M.save(model, tmp_path / "m.onnx")
    for argv in (["prune", str(src), "--sparsity", "0.5"], ["cluster", str(src), "--bits", "4"]):
        code, out, err = run(capsys, [*argv, "-o", str(tmp_path / f"{argv[0]}.onnx")])
        assert code == 0, err
        assert "fidelity: not measured: random samples cannot be stacked on axis 0" in out
        onnx.checker.check_model(onnx.load(str(tmp_path / f"{argv[0]}.onnx")), full_check=True)
    code, out, err = run(capsys, ["bench", str(src), "--runs", "2", "--warmup", "1"])
    assert code == 0, err


def test_weights_only_subgraphs_read_are_named(capsys, tmp_path):
    """silero-vad's op18 export keeps its 16 kernels in the main graph and reads them inside an If:
    prune said only 'no prunable weights selected', inspect 'no weights found'. inspect and the
    passes that rewrite consumers name them as left alone; prune now prunes them (and w_in, which
    the If branch stores itself)."""
    src = M.save(body_scopes(), tmp_path / "m.onnx")
    for argv in (["inspect", str(src)], ["factorize", str(src), "--ratio", "0.5", "--min-params", "1",
                                         "-o", str(tmp_path / "f.onnx")]):
        code, out, err = run(capsys, argv)
        assert code == 0, err
        note = next(line for line in (out + err).splitlines() if "If/Loop/Scan subgraphs are left alone" in line)
        assert "w_loop" in note and "w_in" in note
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "--encoding", "dense",
                                  "-o", str(tmp_path / "p.onnx")])
    assert code == 0 and "left alone" not in out + err, out + err
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    assert np.mean(pruned["w_loop"] == 0) == 0.5 and any(k.startswith("w_in") and np.mean(v == 0) == 0.5
                                                          for k, v in pruned.items())


def test_weight_read_through_a_transpose_is_a_weight(capsys, tmp_path):
    """torch 2.13's dynamo exporter writes some F.linear weights as MatMul(x, Transpose(W)): W was
    reported as 'computed at load by a decoder (already compressed)' and left alone by every pass.
    It is now stored transposed (the same values where the MatMul reads them, the same bytes) and
    pruned; a tied table (also read by a Gather) keeps its Transpose."""
    from onnx import TensorProto

    r = M.rng(14)
    w, table = r.normal(0, 0.3, (24, 16)).astype(np.float32), r.normal(0, 0.3, (40, 16)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
             helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["e", "Wt"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Transpose", ["E"], ["Et"], name="tie", perm=[1, 0]),
             helper.make_node("MatMul", ["hr", "W"], ["h2"], name="back"),
             helper.make_node("MatMul", ["h2", "Et"], ["y"], name="head")]
    model = M.make(nodes, [M.vi("ids", ["N", 5], TensorProto.INT64)], [M.vi("y", ["N", 5, 40])],
                   [M.init("W", w), M.init("E", table)])
    model.graph.node[5].input[1] = "W2"  # 'back' reads a weight of its own
    model.graph.initializer.append(M.init("W2", r.normal(0, 0.3, (24, 16)).astype(np.float32)))
    src = M.save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "--encoding", "dense",
                                  "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert "already compressed" not in out + err
    got = onnx.load(str(tmp_path / "o.onnx"))
    stored = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
    assert stored["W"].shape == (16, 24) and np.mean(stored["W"] == 0) >= 0.3  # transposed, pruned (LAMP)
    assert [n.input[0] for n in got.graph.node if n.op_type == "Transpose"] == ["E"]  # the tied table's stays


def as_einsum(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` with its MLP MatMuls written as Einsums: up [in, out] as 'bsi,io->bso', down stored
    [out, in] as 'bsi,oi->bso' (the same products), and the weights so written."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and "/mlp/" in node.name and node.input[1] in inits:
            w, eq = inits[node.input[1]], "bsi,io->bso"
            if "mlp.2" in node.name:
                w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name))
                eq = "bsi, oi -> bso"
            node.CopyFrom(helper.make_node("Einsum", list(node.input), list(node.output), name=node.name, equation=eq))
            names.append(w.name)
    return model, names


def test_an_einsum_that_is_a_matmul_is_compressed_as_that_matmul():
    """An Einsum that multiplies by a matrix ('bsi,io->bso', or 'bsi,oi->bso' stored [out, in]; TF
    and einsum-style exports write linear layers so) becomes that MatMul before the passes: every
    command, the rewrites and quantize too, writes what it writes for the MatMul model. Before, no
    pass saw its weight ('no prunable weights'). On vit_mha_digits with its MLP as Einsums."""
    import onnxcomp as oc
    from onnxcomp.data.calibration import load_data

    src = onnx.load(str(M.MODELS / "vit_mha_digits.onnx"))
    ein, names = as_einsum(src)
    assert len(names) == 4
    inspect = oc.inspect(ein)  # the Einsum model as it is: its layers, params and MACs
    assert sum(layer.op == "Einsum" and layer.params > 0 for layer in inspect.layers) == 4
    assert inspect.total_macs == oc.inspect(src).total_macs
    data = load_data(str(M.MODELS / "digits_calib.npz"), src, num_samples=32)
    for compress in (lambda m: oc.prune(m, 0.5, data=data, encoding="dense"), lambda m: oc.factorize(m, ratio=0.5)):
        ref, got = (compress(m).proto for m in (src, ein))
        assert not any(n.op_type == "Einsum" for n in got.graph.node)
        stored = {t.name: numpy_helper.to_array(t) for t in got.graph.initializer}
        assert all(np.array_equal(numpy_helper.to_array(t), stored[t.name]) for t in ref.graph.initializer)


def test_an_einsum_matrix_per_head_is_pruned_and_clustered(capsys, tmp_path):
    """A matrix per head ('bhld,hde->bhle': no single MatMul) is a weight to the passes that change
    values only: pruned and clustered (magnitude masks, plain k-means), the rewrites leave it."""
    r = M.rng(8)
    w = r.normal(0, 0.3, (4, 16, 24)).astype(np.float32)
    model = M.make([helper.make_node("Einsum", ["x", "W"], ["y"], equation="bhld,hde->bhle")],
                   [M.vi("x", ["N", 4, 8, 16])], [M.vi("y", ["N", 4, 8, 24])], [M.init("W", w)])
    src = M.save(model, tmp_path / "m.onnx")
    dense = ["--encoding", "dense"]
    for argv, check in ((["prune", "--sparsity", "0.5", *dense], lambda v: 0.45 <= np.mean(v == 0) <= 0.55),
                        (["cluster", "--bits", "3", *dense], lambda v: max(len(np.unique(c)) for c in v.transpose(2, 0, 1)
                                                                           .reshape(24, -1)) <= 8),
                        (["factorize", "--ratio", "0.5"], lambda v: np.array_equal(v, w))):
        out = tmp_path / f"{argv[0]}.onnx"
        code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "--min-params", "1", "-o", str(out)])
        assert code == 0, err
        got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
        assert check(got["W"]), argv


@pytest.mark.parametrize("equation,slots,macs", [  # (slot, out_axis, in_axis): either operand may be the constant
    ("bsi,io->bso", [(0, 0, 2), (1, 1, 0)], 2 * 3 * 5 * 4), ("bi,oi->bo", [(0, 0, 1), (1, 0, 1)], 2 * 5 * 4),
    ("io,bi->bo", [(0, 1, 0), (1, 0, 1)], 2 * 5 * 4), ("bhqd,bhkd->bhqk", [(0, 2, 3), (1, 2, 3)], None),
    ("bshd,hdk->bshk", [(0, 0, 3), (1, 2, 1)], None), ("bsnh,nhd->bsd", [(0, 0, 3), (1, 2, 1)], None),
    ("bsd,dnh->bsnh", [(0, 0, 2), (1, 1, 0)], None), ("bsd,dk->bs", [(0, 0, 2)], None),
    ("...i,io->...o", [], 2 * 3 * 5 * 4), ("ij,jk", [], 2 * 5 * 4), ("ii,io->io", [], None)])
def test_einsum_matrix_operands_and_macs(equation, slots, macs):
    from onnxcomp.graph import einsum

    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)
    assert [(i, o, s) for i, _, o, s in einsum.roles(node)] == slots
    if macs is not None:
        shapes = {"bsi,io->bso": {"a": (2, 3, 4), "b": (4, 5), "y": (2, 3, 5)},
                  "bi,oi->bo": {"a": (2, 4), "b": (5, 4), "y": (2, 5)},
                  "io,bi->bo": {"a": (4, 5), "b": (2, 4), "y": (2, 5)},
                  "...i,io->...o": {"a": (2, 3, 4), "b": (4, 5), "y": (2, 3, 5)},
                  "ij,jk": {"a": (2, 4), "b": (4, 5), "y": (2, 5)}}[equation]
        assert einsum.macs(node, shapes) == macs


def test_an_einsum_operand_that_is_no_matrix_product_is_named(capsys, tmp_path):
    """An operand summed over an axis of its own ('bsd,dk->bs') is no matrix product: every pass
    leaves it alone and says so (before: not a word, as if the model had no such tensor)."""
    w = M.rng(3).normal(0, 0.3, (16, 8)).astype(np.float32)
    model = M.make([helper.make_node("Einsum", ["x", "W"], ["y"], equation="bsd,dk->bs")],
                   [M.vi("x", ["N", 8, 16])], [M.vi("y", ["N", 8])], [M.init("W", w)])
    src = M.save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.5", "--min-params", "1",
                                  "-o", str(tmp_path / "o.onnx")])
    assert code == 0 and "Einsum operands that are not one matrix product (every pass leaves them alone): W" in out
    assert "1.02 k MACs per sample" in run(capsys, ["inspect", str(src)])[1]  # 8 outputs x 16 x 8 summed


@pytest.mark.parametrize("equation,x", [("bsi,io->bso", "a"), ("bsi,oi->bso", "a"), ("bis,io->bso", None),
                                        ("bsi,io->bo", None), ("bhld,hde->bhle", None)])
def test_einsum_statistics_only_where_it_is_one_matmul(equation, x):
    """OBS/GPTQ statistics are taken on the other operand only where the product is a MatMul of its
    rows: summed over its last axis, nothing else summed (bsi,io->bo sums the rows first)."""
    from onnxcomp.graph import einsum

    assert einsum.activation(helper.make_node("Einsum", ["a", "W"], ["y"], equation=equation), 1) == x


@pytest.mark.parametrize("equation,swap,becomes", [
    ("bsi,io->bso", False, True), ("bsi,oi->bso", False, True), ("io,bsi->bso", True, True),
    ("...i,io->...o", False, True), ("bsi,io->bos", False, False), ("bsi,io->bo", False, False)])
def test_einsum_matmuls_rewrites_only_true_matmuls(equation, swap, becomes):
    from onnxcomp.graph.normalize import einsum_matmuls

    r = M.rng(2)
    w = r.normal(size=(6, 5) if "oi" in equation else (5, 6)).astype(np.float32)
    inputs = ["W", "x"] if swap else ["x", "W"]
    out_shape = {"bsi,io->bos": ["N", 6, 3], "bsi,io->bo": ["N", 6]}.get(equation, ["N", 3, 6])
    model = M.make([helper.make_node("Einsum", inputs, ["y"], equation=equation)], [M.vi("x", ["N", 3, 5])],
                   [M.vi("y", out_shape)], [M.init("W", w)])
    x = r.normal(size=(2, 3, 5)).astype(np.float32)
    before = run_model(model, x)
    assert einsum_matmuls(model) == int(becomes)
    assert [n.op_type for n in model.graph.node] == ["MatMul" if becomes else "Einsum"]
    onnx.checker.check_model(model, full_check=True)
    assert np.allclose(run_model(model, x), before, rtol=1e-5, atol=1e-6)


def run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
