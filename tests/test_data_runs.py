"""Data the model cannot run on is refused on one line, exit 2, before any work.

An export can fix a size its inputs show as dynamic (a Reshape to the traced batch or sequence
length); calibrated commands used to start their walk and stop with onnxruntime's traceback
wherever the walk reached that node.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxcomp.cli import main

from . import models as M

COMMANDS = {
    "prune": ["prune", "--sparsity", "0.5"],
    "structured": ["prune", "--structured", "--ratio", "0.3"],
    "cluster": ["cluster", "--bits", "4"],
    "factorize": ["factorize", "--ratio", "0.5"],
    "quantize": ["quantize"],
    "compress": ["compress", "--sparsity", "0.5", "--bits", "4"],
    "auto": ["auto", "--target-size", "0.5"],
    "auto-speed": ["auto", "--target-latency", "0.8"],
    "sensitivity": ["sensitivity"],
}


def traced_batch_model():
    """x[N, 32] -> MatMul -> Relu -> Reshape to [4, 32] (the batch the export traced) -> MatMul."""
    r = M.rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Reshape", ["a", "shape"], ["f"], name="fixed"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc2")]
    inits = [M.init("w1", r.normal(0, 0.3, (32, 32)).astype(np.float32)),
             M.init("w2", r.normal(0, 0.3, (32, 32)).astype(np.float32)),
             M.init("shape", np.array([4, 32], np.int64))]
    return M.make(nodes, [M.vi("x", ["N", 32])], [M.vi("y", [4, 32])], inits)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_data_the_model_cannot_run_is_refused_before_the_work(capsys, tmp_path, command):
    src = M.save(traced_batch_model(), tmp_path / "m.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=M.rng(1).normal(size=(16, 32)).astype(np.float32))  # batches of 16, not 4
    argv = [COMMANDS[command][0], str(src), *COMMANDS[command][1:], "--data", str(data)]
    if command != "sensitivity":
        argv += ["-o", str(tmp_path / "out.onnx")]
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2 and "Traceback" not in cap.err, cap.err
    assert cap.err.count("\n") == 1 and "failed to run" in cap.err and "Reshape" in cap.err, cap.err
    assert "--batch-size" in cap.err and "16 samples ran at once" in cap.err, cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx"]


def test_following_the_hint_runs(capsys, tmp_path):
    """The batch the export traced, as the refusal says: the command runs."""
    src = M.save(traced_batch_model(), tmp_path / "m.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=M.rng(1).normal(size=(16, 32)).astype(np.float32))
    code = main(["prune", str(src), "--sparsity", "0.5", "--data", str(data), "--batch-size", "4",
                 "-o", str(tmp_path / "out.onnx")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out.onnx").exists()
