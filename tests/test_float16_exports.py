"""float16 exports as users make them.

onnxruntime's float16 converter leaves the nodes out of topological order: onnxruntime runs such
files, so every command takes them (the loader sorts a copy, never the file). onnxruntime 1.32
dies making a session for a float16 Transpose -> MatMul at its default optimization level: the
sessions onnxcomp makes go without that fusion."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxcomp import io
from onnxcomp.cli import main
from onnxcomp.io.order import is_sorted, sort_nodes

from . import models as M


def run(sess_path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(sess_path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def shuffled(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph, its node list reversed (an If reading a name a later node produces)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)[::-1]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def if_reading_outer() -> onnx.ModelProto:
    """A branch that reads ``h`` from the main graph: the If must come after h's producer."""
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [], [M.vi("t", [2, 3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [M.vi("e", [2, 3])])
    nodes = [helper.make_node("Add", ["x", "x"], ["h"], name="add"),
             helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
             helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    return M.make(nodes, [M.vi("x", [2, 3])], [M.vi("y", [2, 3])], [M.init("zero", np.array(0, np.float32))])


def test_sort_nodes_orders_main_graph_and_outer_reads_stably():
    m = shuffled(if_reading_outer())
    assert not is_sorted(m)
    assert sort_nodes(m) == 1
    assert is_sorted(m)
    onnx.checker.check_model(m, full_check=True)
    names = [n.name for n in m.graph.node]
    assert names.index("add") < names.index("if") and names.index("gt") < names.index("if")
    before = [n.name for n in m.graph.node]
    assert sort_nodes(m) == 0 and [n.name for n in m.graph.node] == before  # sorted stays as it is


def test_load_sorts_a_copy_and_keeps_the_file(tmp_path):
    src = M.save(shuffled(if_reading_outer()), tmp_path / "in.onnx")
    before = src.read_bytes()
    with pytest.raises(Exception):
        onnx.checker.check_model(str(src))  # what onnxcomp used to refuse
    model = io.load(src)
    assert is_sorted(model)
    assert src.read_bytes() == before


def fp16_converted(tmp_path: Path) -> Path:
    """models/mobilenet_digits.onnx through onnxruntime's float16 converter (inputs kept float32):
    its input Casts land at the end of the node list."""
    f16 = pytest.importorskip("onnxruntime.transformers.float16")
    model = f16.convert_float_to_float16(onnx.load(str(M.MODELS / "mobilenet_digits.onnx")), keep_io_types=True)
    assert not is_sorted(model)
    return M.save(model, tmp_path / "fp16.onnx")


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5"], ["cluster", "--bits", "4"],
                                  ["prune", "--structured", "--ratio", "0.3"], ["factorize", "--ratio", "0.5"]])
def test_float16_converter_output_is_compressed(capsys, tmp_path, argv):
    src = fp16_converted(tmp_path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    code = main([argv[0], str(src), *argv[1:], "--data", str(M.MODELS / "digits_calib.npz"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    onnx.checker.check_model(str(out), full_check=True)
    test = np.load(M.MODELS / "digits_test.npz")
    x, y = test["input"][:200], test["labels"][:200]
    acc_in = float(np.mean(run(src, x).argmax(1) == y))
    acc_out = float(np.mean(run(out, x).argmax(1) == y))
    assert acc_out >= acc_in - 0.05, (acc_in, acc_out)


def test_float16_converter_output_inspected(capsys, tmp_path):
    src = fp16_converted(tmp_path)
    assert main(["inspect", str(src)]) == 0
    assert "not a valid ONNX model" not in capsys.readouterr().err


def test_a_cycle_is_still_refused(capsys, tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="a"), helper.make_node("Relu", ["a"], ["b"], name="b")]
    graph = helper.make_graph(nodes, "g", [M.vi("x", [2])], [M.vi("b", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "cycle.onnx"
    onnx.save(model, str(src))
    assert main(["prune", str(src), "--sparsity", "0.5", "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_float16_model_quantize_says_why(capsys, tmp_path):
    """quantize's kernels are float32: a float16 layer is skipped with the reason and the way out."""
    src = fp16_converted(tmp_path)
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(src), "--data", str(M.MODELS / "digits_calib.npz"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "float16 weights: the integer kernels take float32 layers" in text
    assert "its input stays float" not in text


def transpose_matmul_fp16(tmp_path: Path) -> Path:
    """[L, N, 64] -> Transpose(1, 0, 2) -> MatMul by a float16 [64, 96] weight -> Add (as
    nn.MultiheadAttention's in-projection is exported), a trained-like weight scale."""
    r = M.rng(3)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[1, 0, 2]),
             helper.make_node("MatMul", ["t", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    inits = [M.init("w", (r.normal(size=(64, 96)) / 8).astype(np.float16)),
             M.init("b", r.normal(size=96).astype(np.float16))]
    model = M.make(nodes, [M.vi("x", [8, "N", 64], TensorProto.FLOAT16)], [M.vi("y", ["N", 8, 96], TensorProto.FLOAT16)],
                   inits, opset=20)
    return M.save(model, tmp_path / "tmm.onnx")


def test_float16_transpose_matmul_runs_in_onnxcomp_sessions(tmp_path):
    """In a child: the parent would die with it (onnxruntime 1.32: SIGSEGV without the workaround)."""
    src = transpose_matmul_fp16(tmp_path)
    code = ("import numpy as np; from onnxcomp.io.sessions import session; "
            f"s = session({str(src)!r}); "
            "print(s.run(None, {'x': np.ones((8, 2, 64), np.float16)})[0].shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "(2, 8, 96)"


def test_float16_transpose_matmul_pruned_with_data(tmp_path):
    src = transpose_matmul_fp16(tmp_path)
    data = tmp_path / "calib.npz"
    np.savez(data, x=M.rng(4).normal(size=(16, 8, 64)).astype(np.float32))
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, "-m", "onnxcomp", "prune", str(src), "--sparsity", "0.5", "--min-params", "1",
                           "--data", str(data), "--batch-size", "4", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert "w       MatMul  64x96    50.0 %" in done.stdout
    assert "cosine 0.9" in done.stdout  # measured in onnxcomp's own sessions on the float16 model
