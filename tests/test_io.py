"""Model IO: clear errors for bad files, atomic saves, bit-exact round trips, external data."""
import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp as oc
from onnxcomp import io
from onnxcomp.cli import main

from . import models as M


def one_line_error(capsys, argv, expect: str) -> None:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    assert expect in captured.err


@pytest.fixture
def model_file(tmp_path):
    return M.save(M.conv_bn_relu(), tmp_path / "m.onnx")


def test_missing_file(capsys, tmp_path):
    one_line_error(capsys, ["inspect", str(tmp_path / "nope.onnx")], "does not exist")


def test_not_onnx(capsys, tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("this is a text file, not a model\n")
    one_line_error(capsys, ["inspect", str(p)], "not an ONNX model")


def test_empty_file(capsys, tmp_path):
    p = tmp_path / "e.onnx"
    p.write_bytes(b"")
    one_line_error(capsys, ["inspect", str(p)], "empty")


def test_truncated(capsys, tmp_path, model_file):
    data = model_file.read_bytes()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    one_line_error(capsys, ["inspect", str(p)], "truncated")


def test_folder(capsys, tmp_path):
    one_line_error(capsys, ["inspect", str(tmp_path)], "is a folder")


def test_missing_external_data(capsys, tmp_path):
    model = M.conv_bn_relu(c_mid=32)
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.onnx.data", size_threshold=0)
    os.remove(tmp_path / "ext.onnx.data")
    one_line_error(capsys, ["inspect", str(tmp_path / "ext.onnx")], "ext.onnx.data")


def test_external_data_outside_folder_refused(capsys, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    model = M.conv_bn_relu(c_mid=32)
    onnx.save_model(model, str(sub / "m.onnx"), save_as_external_data=True, location="w.data",
                    size_threshold=0)
    m = onnx.load(str(sub / "m.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.data"
    (sub / "w.data").rename(tmp_path / "w.data")
    onnx.save_model(m, str(sub / "m.onnx"))
    one_line_error(capsys, ["inspect", str(sub / "m.onnx")], "outside its folder")


def test_external_data_loads(tmp_path):
    model = M.conv_bn_relu(c_mid=32)
    expected = oc.inspect(model).total_params
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.onnx.data", size_threshold=0)
    m = oc.load(tmp_path / "ext.onnx")
    assert oc.inspect(m).total_params == expected


@pytest.mark.parametrize("location", ["ext.onnx.data", "weights.bin"])
def test_overwriting_an_external_data_input_leaves_no_orphan(tmp_path, location):
    """prune -o INPUT --force on a model with its tensors in ext.onnx.data writes them inline and
    removes that .data file (nothing refers to it any more); a data file of another name may be
    shared with other models and stays. The result loads and runs either way."""
    model = M.conv_bn_relu(c_mid=32)
    src = tmp_path / "ext.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location=location, size_threshold=0)
    assert main(["prune", str(src), "--sparsity", "0.5", "-o", str(src), "--force"]) == 0
    assert (tmp_path / location).exists() == (location != "ext.onnx.data")
    header = onnx.load(str(src), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    io.verify_file(src)  # onnx.checker and an onnxruntime session on the file as written


def test_opset_too_new(capsys, tmp_path):
    _, max_opset = io.ort_limits()
    model = M.conv_bn_relu()
    model.opset_import[0].version = max_opset + 1
    p = tmp_path / "new.onnx"
    onnx.save_model(model, str(p))
    one_line_error(capsys, ["inspect", str(p)], f"opset {max_opset + 1}")


def test_opset_too_old(capsys, tmp_path):
    model = M.conv_bn_relu()
    model.opset_import[0].version = 5
    p = tmp_path / "old.onnx"
    onnx.save_model(model, str(p))
    one_line_error(capsys, ["inspect", str(p)], "opset 5")


def test_ir_version_lowered_on_save(tmp_path):
    max_ir, _ = io.ort_limits()
    model = M.conv_bn_relu()
    model.ir_version = max_ir + 1
    out = oc.save(model, tmp_path / "o.onnx")
    assert onnx.load(str(out)).ir_version == max_ir


def test_round_trip_bit_exact(tmp_path, model_file):
    m = oc.load(model_file)
    out = oc.save(m, tmp_path / "copy.onnx")
    a, b = onnx.load(str(model_file)), onnx.load(str(out))
    assert a.SerializeToString() == b.SerializeToString()


def test_never_saves_onto_input(tmp_path, model_file):
    before = hashlib.sha256(model_file.read_bytes()).hexdigest()
    m = oc.load(model_file)
    with pytest.raises(oc.ModelSaveError, match="is the input"):
        oc.save(m, model_file)
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() == before


def test_failed_save_leaves_nothing(tmp_path):
    bad = M.conv_bn_relu()
    bad.graph.node[0].input[1] = "does_not_exist"  # onnx.checker rejects it
    with pytest.raises(Exception):
        oc.save(bad, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(oc.ModelSaveError, match="does not exist"):
        oc.save(M.conv_bn_relu(), tmp_path / "no" / "x.onnx")


def test_external_data_threshold(tmp_path, monkeypatch):
    """Above the threshold the tensors go to <name>.data beside the model (same code path as 2 GB)."""
    monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = oc.save(M.conv_bn_relu(c_mid=32), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert oc.inspect(oc.load(out)).total_params > 0


@pytest.mark.slow
def test_model_above_2gb_round_trip(tmp_path):
    """A real > 2 GB model: saved with external data automatically, loaded back, run."""
    rows = (2**31 + 2**24) // 4096  # 2.16 GB of float32, built as external data on disk
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "w.bin", "wb") as f:
        f.write(np.array([1, 2, 3, 4], np.float32).tobytes())
        f.truncate(rows * 4096)  # sparse file: fast to make
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[rows, 1024])
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "big",
                              [M.vi("x", [1, rows])], [M.vi("y", [1, 1024])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(src / "huge.onnx"))
    m = oc.load(src / "huge.onnx")  # > 2 GB in memory now
    assert len(m.proto.graph.initializer[0].raw_data) == rows * 4096
    out = oc.save(m, tmp_path / "huge.onnx")
    del m
    assert (tmp_path / "huge.onnx.data").stat().st_size == rows * 4096
    assert out.stat().st_size < 10_000
    back = oc.load(out)
    assert back.proto.graph.initializer[0].raw_data[:16] == np.array([1, 2, 3, 4], np.float32).tobytes()
