"""Odd but valid graphs through every command; no data loss; interrupts; -o onto the input.

Every writing command runs on each kind of model real exporters produce (opsets 7-21, fp16,
If/Loop subgraphs, already-quantized weights, dynamic dims, Constant-node and shared weights,
initializers listed as inputs, nothing to compress, zero-size tensors, NaN weights) and must exit
0 with an output onnxruntime loads, the input byte-identical, and nothing else left in the
folder. The behaviour for each is listed in docs/bad_inputs.md.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

from onnxcomp.cli import main

from . import models as M

COMMANDS = {
    "prune": ["prune", "--sparsity", "0.5", "--min-params", "1"],
    "structured": ["prune", "--structured", "--ratio", "0.5", "--round-to", "1"],
    "cluster": ["cluster", "--bits", "2", "--min-params", "1"],
    "factorize": ["factorize", "--min-params", "1"],
    "depthwise": ["depthwise", "--multiplier", "1", "--min-params", "1"],
    "compress": ["compress", "--prune", "0.5", "--bits", "2"],
}
WRITERS = sorted(COMMANDS)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return code, cap.out, cap.err


def write_and_check(capsys, model: onnx.ModelProto, folder: Path, command: str,
                    extra: tuple[str, ...] = ()) -> str:
    """Run ``command`` on ``model``: exit 0, output loads in onnxruntime, input untouched."""
    src = folder / "in.onnx"
    onnx.save_model(model, str(src))
    before = sha(src)
    out = folder / f"out_{command}.onnx"
    code, stdout, err = run(capsys, [*COMMANDS[command][:1], str(src), *COMMANDS[command][1:],
                                     "--num-samples", "2", *extra, "-o", str(out)])
    assert code == 0, err
    assert err == "" or err.startswith("warning: the output disagrees")  # random data on a tiny random model
    assert sha(src) == before
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(["in.onnx", out.name])
    return stdout


# --- opsets 7-21 ----------------------------------------------------------------------------------

def small_cnn(opset: int) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (C given: required before opset 11)."""
    r = M.rng(opset)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    inits = [M.init("w", r.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
             M.init("b", r.normal(0, 0.1, 8).astype(np.float32)),
             M.init("w2", r.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
             M.init("fc", r.normal(0, 0.3, (5, 8)).astype(np.float32)),
             M.init("fcb", r.normal(0, 0.1, 5).astype(np.float32))]
    return M.make(nodes, [M.vi("x", [1, 3, 6, 6])], [M.vi("y", [1, 5])], inits, opset=opset)


@pytest.mark.parametrize("opset", range(7, 22))
def test_every_command_at_every_opset(capsys, tmp_path, opset):
    model = small_cnn(opset)
    for command in WRITERS:
        folder = tmp_path / command
        folder.mkdir()
        write_and_check(capsys, model, folder, command)
    assert run(capsys, ["inspect", str(tmp_path / "prune" / "in.onnx")])[0] == 0


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_zoo_squeezenet_converted(capsys, tmp_path, opset):
    """The ONNX zoo's squeezenet (ConstantOfShape weights), moved to other opsets by onnx itself."""
    model = onnx.load(str(M.LIGHT / "light_squeezenet.onnx"))
    if opset != 9:
        model = version_converter.convert_version(model, opset)
    out = write_and_check(capsys, model, tmp_path, "prune", ("--min-params", "1024"))
    assert "one repeated value (ConstantOfShape)" in out  # left alone, at every opset


def test_zoo_opsets_below_9_refused_by_converter():
    """onnx cannot move the zoo models below 9 (ConstantOfShape exists from 9): small_cnn covers 7-8."""
    model = onnx.load(str(M.LIGHT / "light_squeezenet.onnx"))
    with pytest.raises(Exception):
        version_converter.convert_version(model, 8)


# --- fp16 -----------------------------------------------------------------------------------------

def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast every float initializer and the graph's float inputs/outputs to float16."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(out.graph.input) + list(out.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    del out.graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("command", WRITERS)
def test_fp16_model(capsys, tmp_path, command):
    write_and_check(capsys, to_fp16(M.conv_bn_relu(c_mid=8)), tmp_path, command)


# --- If / Loop subgraphs --------------------------------------------------------------------------

def if_model() -> onnx.ModelProto:
    """A main-graph conv whose weight an If branch reads too, and a weight stored inside a branch."""
    r = M.rng(21)
    w = r.normal(size=(8, 4, 3, 3)).astype(np.float32)
    shared = r.normal(size=(8, 8, 3, 3)).astype(np.float32)
    inner = r.normal(size=(8, 8, 3, 3)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("Conv", ["c", "shared"], ["t"], name="then_conv", pads=[1] * 4)],
                               "then", [], [M.vi("t", [1, 8, 6, 6])])
    else_g = helper.make_graph([helper.make_node("Conv", ["c", "inner"], ["e"], name="else_conv", pads=[1] * 4)],
                               "else", [], [M.vi("e", [1, 8, 6, 6])], initializer=[M.init("inner", inner)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["c"], name="relu0"),
             helper.make_node("Conv", ["c", "shared"], ["c2"], name="conv_main", pads=[1] * 4),
             helper.make_node("ReduceSum", ["c2"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    inits = [M.init("w", w), M.init("shared", shared), M.init("zero", np.array(0, np.float32))]
    return M.make(nodes, [M.vi("x", [1, 4, 6, 6])], [M.vi("y", [1, 8, 6, 6])], inits)


def loop_model() -> onnx.ModelProto:
    """A Loop body applying a MatMul with an outer-scope weight, after a main-graph MatMul using it."""
    r = M.rng(22)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "wl"], ["h_mm"], name="body_mm"),
         helper.make_node("Relu", ["h_mm"], ["h_out"], name="body_relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [M.vi("i", [], TensorProto.INT64), M.vi("cond_in", [], TensorProto.BOOL), M.vi("h_in", [1, 16])],
        [M.vi("cond_out", [], TensorProto.BOOL), M.vi("h_out", [1, 16])])
    nodes = [helper.make_node("MatMul", ["x", "wl"], ["h0"], name="mm0"),
             helper.make_node("MatMul", ["h0", "w_free"], ["h1"], name="mm1"),
             helper.make_node("Loop", ["n", "t", "h1"], ["y"], name="loop", body=body)]
    inits = [M.init("wl", r.normal(0, 0.25, (16, 16)).astype(np.float32)),
             M.init("w_free", r.normal(0, 0.25, (16, 16)).astype(np.float32)),
             M.init("n", np.array(3, np.int64)), M.init("t", np.array(True))]
    return M.make(nodes, [M.vi("x", [1, 16])], [M.vi("y", [1, 16])], inits)


VALUE_ONLY = ("prune", "cluster", "compress")  # change values only: they take the bodies' weights too
# (compress runs the same two passes; its default --min-params leaves these small weights out)


def _else_branch(m: onnx.ModelProto) -> onnx.GraphProto:
    return next(a.g for n in m.graph.node if n.op_type == "If" for a in n.attribute if a.name == "else_branch")


@pytest.mark.parametrize("command", sorted(set(WRITERS) - set(VALUE_ONLY)))
@pytest.mark.parametrize("builder", [if_model, loop_model])
def test_subgraph_weights_left_alone(capsys, tmp_path, command, builder):
    """Weights inside or read by subgraphs are never rewritten by the passes that rewrite their
    consumer nodes: bit-exact in the output."""
    model = builder()
    protected = {"if_model": ["shared"], "loop_model": ["wl"]}[builder.__name__]
    write_and_check(capsys, model, tmp_path, command)
    out = onnx.load(str(tmp_path / f"out_{command}.onnx"))
    before = {t.name: t for t in model.graph.initializer}
    after = {t.name: t for t in out.graph.initializer}
    for name in protected:
        assert name in after and after[name] == before[name], f"{command} changed {name}"
    if builder is if_model:
        assert _else_branch(out).initializer[0] == _else_branch(model).initializer[0]


@pytest.mark.parametrize("command", ["prune", "cluster"])
@pytest.mark.parametrize("builder", [if_model, loop_model])
def test_subgraph_weights_compressed_by_value_passes(capsys, tmp_path, command, builder):
    """prune, cluster and compress change only values, so the weights bodies read (and those a
    body stores, moved to the main graph, which the body reads from the outer scope as ONNX
    allows) are compressed like any other: silero-vad's kernels, all inside an If, were left
    alone (1.000x). The output computes what the compressed weights say, on both branches."""
    model = builder()
    write_and_check(capsys, model, tmp_path, command, ("--encoding", "dense"))
    out = onnx.load(str(tmp_path / f"out_{command}.onnx"))
    names = {"if_model": ["shared", "inner"], "loop_model": ["wl"]}[builder.__name__]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    if builder is if_model:
        before["inner"] = numpy_helper.to_array(_else_branch(model).initializer[0])
        assert len(_else_branch(out).initializer) == 0  # moved out of the branch, under a free name
        got["inner"] = got.pop(_else_branch(out).node[0].input[1])
    for name in names:
        after = got[name]
        assert after.shape == before[name].shape and not np.array_equal(after, before[name]), f"{command}: {name}"
        if command != "cluster":
            assert np.mean(after == 0) >= 0.45, f"{command} did not prune {name}"
        if command != "prune":
            assert len(np.unique(after)) <= 4 * max(after.shape[0], after.shape[-1]), f"{command}: {name} not clustered"


def test_subgraph_weights_reported(capsys, tmp_path):
    onnx.save_model(if_model(), str(tmp_path / "m.onnx"))
    code, out, _ = run(capsys, ["inspect", str(tmp_path / "m.onnx")])
    assert code == 0 and "subgraphs are left alone by the layer rewrites (prune and cluster, which change values only, take them): shared, inner" in out


# --- already quantized ----------------------------------------------------------------------------

def qoperator_model() -> onnx.ModelProto:
    """QLinearConv (QOperator format) followed by a float conv."""
    r = M.rng(23)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd"], name="dq"),
             helper.make_node("Conv", ["yd", "wf"], ["y"], name="fconv")]
    inits = [M.init("xs", np.array(0.05, np.float32)), M.init("xz", np.array(0, np.uint8)),
             M.init("wq", r.integers(0, 255, (4, 2, 1, 1)).astype(np.uint8)),
             M.init("ws", np.array(0.01, np.float32)), M.init("wz", np.array(128, np.uint8)),
             M.init("ys", np.array(0.1, np.float32)), M.init("yz", np.array(0, np.uint8)),
             M.init("wf", r.normal(size=(3, 4, 1, 1)).astype(np.float32))]
    return M.make(nodes, [M.vi("x", [1, 2, 4, 4])], [M.vi("y", [1, 3, 4, 4])], inits, opset=13)


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("builder", [M.qdq_weight, M.qdq_float_weight, qoperator_model])
def test_quantized_weights_untouched(capsys, tmp_path, command, builder):
    model = builder()
    write_and_check(capsys, model, tmp_path, command)
    out = {t.name: t for t in onnx.load(str(tmp_path / f"out_{command}.onnx")).graph.initializer}
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8) or t.name == "w" and builder is M.qdq_float_weight:
            assert out[t.name] == t, f"{command} changed quantized tensor {t.name}"


def test_quantized_reported_by_inspect(capsys, tmp_path):
    onnx.save_model(M.qdq_weight(), str(tmp_path / "m.onnx"))
    code, out, _ = run(capsys, ["inspect", str(tmp_path / "m.onnx")])
    assert code == 0 and "already quantized, left alone: 3 tensor(s)" in out  # wq and its scale, zero point


def test_integer_kernels_are_named_by_every_pass(capsys, tmp_path):
    """Weights integer kernels read (QOperator QLinearConv, quantize_dynamic's ConvInteger and
    MatMulInteger, MatMulNBits) are named with the way out; before, a prune of such a model said
    only "no prunable weights selected"."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save_model(qoperator_model(), str(tmp_path / "qop.onnx"))
    onnx.save_model(M.chan_mlp(), str(tmp_path / "mlp.onnx"))
    quantize_dynamic(str(tmp_path / "mlp.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    assert run(capsys, ["quantize", str(tmp_path / "mlp.onnx"), "--weights", "int4", "--activations", "none",
                        "--min-params", "1", "-o", str(tmp_path / "nbits.onnx")])[0] == 0
    nbits = onnx.load(str(tmp_path / "nbits.onnx"))
    assert any(n.op_type == "MatMulNBits" for n in nbits.graph.node)
    for name, kernels in (("qop", "QLinearConv"), ("dyn", "ConvInteger, MatMulInteger"),
                          ("nbits", "com.microsoft:MatMulNBits")):
        code, out, _ = run(capsys, ["prune", str(tmp_path / f"{name}.onnx"), "--sparsity", "0.5", "--min-params", "1",
                                    "-o", str(tmp_path / f"{name}_p.onnx")])
        assert code == 0
        assert f"are already quantized ({kernels}) and left alone by every pass" in out, out
        assert "to compress further, start from the float model" in out
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32))
    code, out, _ = run(capsys, ["prune", "--structured", str(tmp_path / "dyn.onnx"), "--data", str(tmp_path / "d.npz"),
                                "-o", str(tmp_path / "dyn_s.onnx")])
    assert code == 0 and "no channel groups: no Conv, ConvTranspose, Gemm or MatMul has a float weight" in out
    assert "importance activation," in out  # nothing to prune: the two orders are not both tried


# --- dynamic dims ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", WRITERS)
def test_dynamic_batch_and_spatial_dims(capsys, tmp_path, command):
    model = M.conv_bn_relu(batch="N", c_mid=8)
    for i in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = "HW"[i - 2]
    write_and_check(capsys, model, tmp_path, command, ("--input-shape", "x=2x3x8x8"))


@pytest.mark.parametrize("command", WRITERS)
def test_dynamic_dims_without_data_write_a_verified_model_and_say_how_to_measure_it(capsys, tmp_path, command):
    """A data-free command on a model whose inputs have dynamic dims beyond the batch still writes
    (checker + onnxruntime load), and says in one line that the fidelity was not measured and how."""
    model = M.conv_bn_relu(batch="N", c_mid=8)
    for i in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = "HW"[i - 2]
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save_model(model, str(src))
    code, stdout, err = run(capsys, [*COMMANDS[command][:1], str(src), *COMMANDS[command][1:], "-o", str(out)])
    assert code == 0, err
    assert "fidelity: not measured" in stdout and "--input-shape x=1x3x64x64" in stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].shape[0] == 1
    gated = run(capsys, [*COMMANDS[command][:1], str(src), *COMMANDS[command][1:], "-o", str(out), "--force",
                         "--max-drop", "0.01"])
    assert gated[0] == 2 and "quality gates need outputs to compare" in gated[2]


# --- where the weights live -----------------------------------------------------------------------

def initializers_as_inputs() -> onnx.ModelProto:
    """Older exporters (IR 3) list every initializer among the graph inputs too."""
    model = M.conv_bn_relu(c_mid=8)
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return model


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("builder", [M.constant_node_weights, M.shared_weight, M.constant_of_shape_weights,
                                     initializers_as_inputs])
def test_weight_storage_kinds(capsys, tmp_path, command, builder):
    out = write_and_check(capsys, builder(), tmp_path, command)
    assert "cosine" in out


def test_initializers_as_inputs_are_weights_not_data(capsys, tmp_path):
    """Random data is made for the real input only: pruning nothing keeps the outputs exact."""
    onnx.save_model(initializers_as_inputs(), str(tmp_path / "m.onnx"))
    code, out, err = run(capsys, ["prune", str(tmp_path / "m.onnx"), "--sparsity", "0.0", "--min-params", "1",
                                  "-o", str(tmp_path / "o.onnx")])
    assert code == 0, err
    assert "SQNR inf dB" in out and "x[" in out and "w1[" not in out


# --- nothing to compress, zero-size tensors, NaN ----------------------------------------------------

def nothing_model() -> onnx.ModelProto:
    return M.make([helper.make_node("Relu", ["x"], ["y"], name="relu")], [M.vi("x", ["N", 4])], [M.vi("y", ["N", 4])])


@pytest.mark.parametrize("command", WRITERS)
def test_nothing_to_compress(capsys, tmp_path, command):
    """Exit 0, an output with the same graph and weights, and a note saying so."""
    model = nothing_model()
    out = write_and_check(capsys, model, tmp_path, command)
    written = onnx.load(str(tmp_path / f"out_{command}.onnx"))
    assert written.graph == model.graph
    if command != "compress":
        assert "nothing to compress" in out


def zero_size_model() -> onnx.ModelProto:
    """An empty initializer concatenated on the feature axis, then a MatMul weight."""
    r = M.rng(24)
    nodes = [helper.make_node("Concat", ["x", "empty"], ["xc"], name="cat", axis=1),
             helper.make_node("MatMul", ["xc", "w"], ["y"], name="mm")]
    inits = [M.init("empty", np.zeros((1, 0), np.float32)),
             M.init("w", r.normal(size=(8, 8)).astype(np.float32))]
    return M.make(nodes, [M.vi("x", [1, 8])], [M.vi("y", [1, 8])], inits)


@pytest.mark.parametrize("command", WRITERS)
def test_zero_size_tensors(capsys, tmp_path, command):
    write_and_check(capsys, zero_size_model(), tmp_path, command)


def nan_model() -> onnx.ModelProto:
    model = M.conv_bn_relu(c_mid=16)  # w2: 2304 weights, above compress's --min-params
    t = next(t for t in model.graph.initializer if t.name == "w2")
    a = numpy_helper.to_array(t).copy()
    a[0, 0, 0, 0], a[1, 1, 1, 1] = np.nan, np.inf
    t.CopyFrom(numpy_helper.from_array(a, "w2"))
    return model


@pytest.mark.parametrize("command", WRITERS)
def test_nan_weights_skipped_with_reason(capsys, tmp_path, command):
    model = nan_model()
    out = write_and_check(capsys, model, tmp_path, command)
    assert "contains NaN or Inf" in out
    after = {t.name: t for t in onnx.load(str(tmp_path / f"out_{command}.onnx")).graph.initializer}
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    if command == "structured":  # its output channels are kept; its inputs follow conv1's group
        assert after["w2"].dims[0] == w2.dims[0]
    else:
        assert after["w2"] == w2


# --- no data loss: -o onto the input, --force, interrupts ---------------------------------------------

WRITING_ARGV = {**{k: v for k, v in COMMANDS.items()}, "prune-channels": ["prune-channels", "--ratio", "0.5"],
                "pack": ["pack"], "auto": ["auto", "--target-size", "1.0", "--max-drop", "1", "--data", "{data}"]}


def writing_argv(command: str, folder: Path) -> list[str]:
    """The command's argv; ``auto`` needs real calibration data, written next to the model."""
    argv = WRITING_ARGV[command]
    if "{data}" in argv:
        data = folder.parent / f"{folder.name}_calib.npz"
        np.savez(data, x=M.rng(26).normal(size=(8, 3, 8, 8)).astype(np.float32))
        argv = [str(data) if a == "{data}" else a for a in argv]
    return argv


@pytest.mark.parametrize("command", sorted(WRITING_ARGV))
def test_output_onto_input_refused_without_force(capsys, tmp_path, command):
    src = M.save(M.conv_bn_relu(c_mid=8), tmp_path / "m.onnx")
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    before = sha(src)
    argv = writing_argv(command, tmp_path)
    for target in (src, link):
        code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "-o", str(target)])
        assert code == 2 and err.count("\n") == 1 and "--force" in err, err
        assert sha(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.onnx", "m.onnx"]


@pytest.mark.parametrize("command", sorted(set(WRITING_ARGV) - {"pack"}))
def test_force_replaces_input_atomically(capsys, tmp_path, command):
    src = M.save(M.conv_bn_relu(c_mid=8), tmp_path / "m.onnx")
    argv = writing_argv(command, tmp_path)
    code, _, err = run(capsys, [argv[0], str(src), *argv[1:], "-o", str(src), "--force", "--num-samples", "2"])
    assert code == 0, err
    ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.onnx", "m.yaml"] if command == "auto" else ["m.onnx"])


def test_unpack_onto_archive_refused(capsys, tmp_path):
    src = M.save(M.conv_bn_relu(c_mid=8), tmp_path / "m.onnx")
    assert run(capsys, ["pack", str(src), "-o", str(tmp_path / "m.onnxc")])[0] == 0
    before = sha(tmp_path / "m.onnxc")
    code, _, err = run(capsys, ["unpack", str(tmp_path / "m.onnxc"), "-o", str(tmp_path / "m.onnxc")])
    assert code == 2 and err.count("\n") == 1
    assert sha(tmp_path / "m.onnxc") == before


def big_chain(path: Path, layers: int = 4, width: int = 1024) -> Path:
    """A MatMul chain with ``layers`` x width^2 random weights (4 x 1024^2 = 17 MB): seconds of work."""
    r = M.rng(25)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        inits.append(M.init(f"w{i}", (r.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    nodes.append(helper.make_node("Relu", [x], ["y"], name="out"))
    onnx.save_model(M.make(nodes, [M.vi("x", [1, width])], [M.vi("y", [1, width])], inits), str(path))
    return path


def _interrupt(tmp_path: Path, sig: int, when: str) -> tuple[int, str]:
    src = big_chain(tmp_path / "big.onnx")
    before = sha(src)
    code = "import sys; from onnxcomp.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "prune", str(src), "--sparsity", "0.7", "--granularity", "tensor",
            "--allocation", "global", "--num-samples", "1", "-o", str(tmp_path / "out.onnx")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    if when == "writing":  # the temp folder of io.save appears: the output is being written/verified
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(".out.onnx.") for p in tmp_path.iterdir()):
                break
            time.sleep(0.005)
    else:  # main() is running once it catches SIGTERM; shortly after, it is loading or pruning
        while time.monotonic() < deadline and proc.poll() is None and not M.catches_sigterm(proc.pid):
            time.sleep(0.005)
        time.sleep(0.3)
    if proc.poll() is not None:
        pytest.skip(f"the command finished before the signal ({when}); machine too fast for this test")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert sha(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"], err
    return proc.returncode, err


@pytest.mark.parametrize("sig, when", [(signal.SIGTERM, "computing"), (signal.SIGTERM, "writing"),
                                       (signal.SIGINT, "writing")])
def test_interrupt_leaves_no_output(tmp_path, sig, when):
    code, err = _interrupt(tmp_path, sig, when)
    assert code == 128 + sig, err
    assert err.strip().splitlines() == ["interrupted; no output written"], err


# --- memory on big models ---------------------------------------------------------------------------

def test_big_models_skip_constant_folding(monkeypatch, capsys, tmp_path):
    """Above runtime.LOW_MEMORY_BYTES sessions run decoders per batch instead of folding them
    (folding peaks at ~8x the decoded weights); a compressed model is sized on its original."""
    from onnxcomp.io import sessions as runtime

    disabled = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = M.conv_bn_relu(c_mid=16)
    assert runtime.session(model).get_session_options().graph_optimization_level != disabled
    monkeypatch.setattr(runtime, "LOW_MEMORY_BYTES", 4000)
    assert runtime.session(model).get_session_options().graph_optimization_level == disabled
    with runtime.low_memory_sessions(model):
        level = runtime.session(nothing_model()).get_session_options().graph_optimization_level
    assert level == disabled
    assert runtime.session(nothing_model()).get_session_options().graph_optimization_level != disabled
    src = M.save(model, tmp_path / "m.onnx")
    code, out, err = run(capsys, ["prune", str(src), "--sparsity", "0.0", "--min-params", "1", "-o",
                                  str(tmp_path / "o.onnx")])
    assert code == 0 and "SQNR inf dB" in out, err  # both sides unfolded alike: still exact


@pytest.mark.parametrize("zoo", ["light_squeezenet.onnx", "light_inception_v1.onnx"])
@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5"], ["cluster", "--bits", "5"],
                                  ["factorize", "--ratio", "0.5"], ["prune", "--structured", "--ratio", "0.3"]])
def test_constant_of_shape_weights_stay_one_value_and_outputs_never_grow(capsys, tmp_path, zoo, argv):
    """The zoo's light models store every weight as ConstantOfShape: they are left alone (or, in
    structured pruning, resized as ConstantOfShape), never written out dense (80-320x larger files)."""
    src, out = M.LIGHT / zoo, tmp_path / "out.onnx"
    code, stdout, err = run(capsys, [argv[0], str(src), *argv[1:], "-o", str(out)])
    assert code == 0, err
    assert out.stat().st_size <= src.stat().st_size
    if argv[1] != "--structured":
        assert "one repeated value (ConstantOfShape)" in stdout
    model = onnx.load(str(out))
    used = {i for n in model.graph.node for i in n.input}
    assert all(t.name in used for t in model.graph.initializer)  # no leftover __SHAPE tensors to warn about
