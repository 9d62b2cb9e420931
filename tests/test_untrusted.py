"""Untrusted files: no reads outside the model's folder, no absurd allocations, nothing executed.

A model file may come from anywhere: its external-data locations must not reach outside its
folder (``..``, absolute paths, symlinked files or folders), declared sizes are checked before
anything is allocated, and nothing in its metadata is ever evaluated.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp import io
from onnxcomp.errors import ModelLoadError, ModelSaveError
from onnxcomp.io import checks as modelcheck
from onnxcomp.cli import main

from . import models as M


def one_line(capsys, argv: list[str], expect: str, code: int = 2) -> str:
    got = main(argv)
    cap = capsys.readouterr()
    assert got == code, cap
    assert cap.err.count("\n") == 1 and cap.err.startswith("error: "), cap.err
    assert expect in cap.err, cap.err
    return cap.err


def external_model(folder: Path, location: str = "w.data") -> Path:
    """conv_bn_relu saved with every tensor in one external file named ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(M.conv_bn_relu(c_mid=32), str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.data", size_threshold=0)
    if location != "w.data":
        relocate(folder / "m.onnx", location)
    return folder / "m.onnx"


def relocate(model_path: Path, location: str) -> None:
    """Point every external tensor of the model file at ``location`` (the data is not moved)."""
    m = onnx.load(str(model_path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(m, str(model_path))


def test_dotdot_location_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub", "../w.data")
    (tmp_path / "sub" / "w.data").rename(tmp_path / "w.data")
    one_line(capsys, ["inspect", str(model)], "outside its folder")


def test_nested_dotdot_location_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub", "inner/../../w.data")
    (tmp_path / "sub" / "inner").mkdir()
    (tmp_path / "sub" / "w.data").rename(tmp_path / "w.data")
    one_line(capsys, ["prune", str(model), "--sparsity", "0.5"], "outside its folder")
    assert not (tmp_path / "sub" / "m.prune.onnx").exists()


def test_absolute_location_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub")
    relocate(model, str(tmp_path / "sub" / "w.data"))  # absolute, even though it is inside
    one_line(capsys, ["inspect", str(model)], "absolute path")


def test_device_location_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub")
    relocate(model, "/dev/zero")
    one_line(capsys, ["inspect", str(model)], "absolute path")


def test_symlinked_data_file_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub")
    outside = tmp_path / "secret.data"
    (tmp_path / "sub" / "w.data").rename(outside)
    (tmp_path / "sub" / "w.data").symlink_to(outside)
    one_line(capsys, ["inspect", str(model)], "outside its folder")


def test_symlink_inside_folder_refused(capsys, tmp_path):
    """Even a symlink to a file in the same folder is refused: the link itself is the risk."""
    model = external_model(tmp_path / "sub")
    (tmp_path / "sub" / "w.data").rename(tmp_path / "sub" / "real.data")
    (tmp_path / "sub" / "w.data").symlink_to(tmp_path / "sub" / "real.data")
    one_line(capsys, ["inspect", str(model)], "symlink")


def test_symlinked_folder_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub", "linked/w.data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "sub" / "w.data").rename(elsewhere / "w.data")
    (tmp_path / "sub" / "linked").symlink_to(elsewhere, target_is_directory=True)
    one_line(capsys, ["cluster", str(model), "--bits", "4"], "outside its folder")


def test_model_inside_folder_loads(tmp_path):
    model = external_model(tmp_path / "sub", "nested/w.data")
    (tmp_path / "sub" / "nested").mkdir()
    (tmp_path / "sub" / "w.data").rename(tmp_path / "sub" / "nested" / "w.data")
    assert len(io.load(model).graph.initializer) == 9


def test_null_byte_location_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub")
    relocate(model, "w.data\x00.txt")
    one_line(capsys, ["inspect", str(model)], "invalid location")


def _declare(model_path: Path, name: str, dims: list[int], **entries: int) -> None:
    m = onnx.load(str(model_path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == name)
    del t.dims[:]
    t.dims.extend(dims)
    for e in t.external_data:
        if e.key in entries:
            e.value = str(entries.pop(e.key))
    for key, value in entries.items():
        t.external_data.add(key=key, value=str(value))
    onnx.save_model(m, str(model_path))


def test_huge_dims_with_small_external_file_refused(capsys, tmp_path):
    """10^12 x 4 bytes declared, a few KB on disk: refused by size, nothing allocated."""
    model = external_model(tmp_path / "sub")
    _declare(model, "w2", [10**6, 10**6], length=4 * 10**12)
    one_line(capsys, ["inspect", str(model)], "truncated")


def test_huge_sparse_external_file_refused(capsys, tmp_path):
    """A sparse data file really as large as declared (4 TB): refused before reading it."""
    model = external_model(tmp_path / "sub")
    big = tmp_path / "sub" / "big.data"
    try:
        with open(big, "wb") as f:
            f.truncate(4 * 10**12)
    except OSError:
        pytest.skip("this file system cannot hold a 4 TB sparse file")
    m = onnx.load(str(model), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == "w2")
    del t.dims[:]
    t.dims.extend([10**6, 10**6])
    del t.external_data[:]
    t.external_data.add(key="location", value="big.data")
    onnx.save_model(m, str(model))
    one_line(capsys, ["inspect", str(model)], "more than the")


def test_negative_external_offset_refused(capsys, tmp_path):
    model = external_model(tmp_path / "sub")
    _declare(model, "w2", [32, 32, 3, 3], offset=-8)
    one_line(capsys, ["inspect", str(model)], "external-data")


def test_inline_dims_not_matching_data_refused(capsys, tmp_path):
    m = M.conv_bn_relu()
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([10**6, 10**6])  # the data holds 216 floats
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    one_line(capsys, ["prune", str(tmp_path / "m.onnx"), "--sparsity", "0.5"], "holds 864 bytes")


def constant_of_shape_model(dims: list[int]) -> onnx.ModelProto:
    m = M.constant_of_shape_weights()
    shape = m.graph.initializer[0]
    shape.CopyFrom(numpy_helper.from_array(np.array(dims, np.int64), shape.name))
    return m


@pytest.mark.parametrize("command", [["inspect"], ["prune", "--sparsity", "0.5", "--min-params", "1"],
                                     ["cluster", "--bits", "2", "--min-params", "1"]])
def test_constant_of_shape_beyond_memory_refused(capsys, tmp_path, command):
    """A ConstantOfShape weight asking for 4 TB is refused before np.full is ever called."""
    onnx.save_model(constant_of_shape_model([10**6, 10**6, 1, 1]), str(tmp_path / "m.onnx"))
    one_line(capsys, [command[0], str(tmp_path / "m.onnx"), *command[1:]], "more than the")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_constant_of_shape_negative_dims_refused(capsys, tmp_path):
    onnx.save_model(constant_of_shape_model([4, -3, 3, 3]), str(tmp_path / "m.onnx"))
    one_line(capsys, ["inspect", str(tmp_path / "m.onnx")], "negative")


def test_allocation_guard_uses_available_memory(monkeypatch):
    monkeypatch.setattr(modelcheck, "available_memory", lambda: 1000)
    modelcheck.check_allocation(1000, "x")
    with pytest.raises(ModelLoadError, match="more than the"):
        modelcheck.check_allocation(1001, "x")


def test_random_data_for_absurd_input_refused(capsys, tmp_path):
    m = M.conv_bn_relu()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**7
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 10**7
    m.graph.ClearField("value_info")
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    code = main(["compare", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "GB" in err, err


HOSTILE = "__import__('os').system('touch {marker}')"


def test_metadata_is_never_executed(capsys, tmp_path):
    """Code-looking metadata, doc strings and producer names are carried, never evaluated."""
    marker = tmp_path / "pwned"
    m = M.conv_bn_relu(c_mid=32)
    text = HOSTILE.format(marker=marker)
    for key in ("onnxcomp", "preprocess", "calibration", "postprocess"):
        m.metadata_props.add(key=key, value=text)
    m.doc_string = m.producer_name = m.graph.doc_string = text
    m.graph.node[0].doc_string = "$(touch " + str(marker) + ")"
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    for argv in (["inspect", "--json"], ["prune", "--sparsity", "0.5", "-o", str(tmp_path / "o.onnx")],
                 ["cluster", "--bits", "4", "-o", str(tmp_path / "c.onnx")],
                 ["compress", "--prune", "0.5", "--bits", "4", "--pack", "-o", str(tmp_path / "z.onnx")]):
        assert main([argv[0], str(tmp_path / "m.onnx"), *argv[1:]]) == 0
    capsys.readouterr()
    assert not marker.exists()
    kept = {p.key: p.value for p in onnx.load(str(tmp_path / "o.onnx")).metadata_props}
    assert kept.get("preprocess") == text  # carried through as data


def test_model_with_custom_domain_op_fails_cleanly(capsys, tmp_path):
    """An op from a domain onnxruntime does not know: one line, nothing written."""
    m = M.conv_bn_relu()
    m.graph.node[2].domain = "evil.domain"
    m.opset_import.append(helper.make_opsetid("evil.domain", 1))
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    got = main(["prune", str(tmp_path / "m.onnx"), "--sparsity", "0.5", "--min-params", "1"])
    err = capsys.readouterr().err
    assert got == 2 and err.count("\n") == 1 and "onnxruntime" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_output_data_file_never_clobbers_input_data(tmp_path, monkeypatch):
    """-o NAME whose NAME.data is the input's external data file: refused, the input intact."""
    monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", 1000)
    folder = tmp_path / "sub"
    model = external_model(folder, "out.onnx.data")
    (folder / "w.data").rename(folder / "out.onnx.data")
    before = (folder / "out.onnx.data").read_bytes()
    m = io.load(model)
    with pytest.raises(ModelSaveError, match="external data"):
        io.save(m, folder / "out.onnx", input_path=model)
    assert (folder / "out.onnx.data").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "out.onnx.data"]


def test_string_dtype_weight_is_not_a_weight(tmp_path):
    """A STRING initializer (no numeric data) is never decoded as a weight."""
    m = M.conv_bn_relu()
    m.graph.initializer.append(helper.make_tensor("labels", TensorProto.STRING, [2], [b"a", b"b"]))
    onnx.save_model(m, str(tmp_path / "m.onnx"))
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    assert not os.path.exists(tmp_path / "m.inspect.onnx")
