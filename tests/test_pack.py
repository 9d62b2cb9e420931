"""The .onnxc archive: byte-identical round trip, stream split, clear errors on bad archives."""
from __future__ import annotations

import json

import pytest

from onnxcomp.cli import main
from onnxcomp.encode.pack import find_cuts, pack_bytes, unpack_bytes
from onnxcomp.errors import DataError
from tests.models import MODELS, constant_node_weights, save


def test_round_trip_is_byte_identical_and_smaller(tmp_path):
    src = MODELS / "mobilenet_digits.onnx"
    data = src.read_bytes()
    archive, report = pack_bytes(data)
    assert unpack_bytes(archive) == data
    assert report.archive_bytes == len(archive) < len(data)
    kinds = {s.kind for s in report.streams}
    assert {"skeleton", "cuts", "float32"} <= kinds
    assert all(s.entropy_bytes is not None for s in report.streams if s.kind == "float32")


def test_constant_node_payloads_are_cut_out(tmp_path):
    data = constant_node_weights().SerializeToString()
    cuts = find_cuts(data)
    assert len(cuts) == 2 and all(k == 2 for _, _, k in cuts)  # both float32 Constant tensors
    assert unpack_bytes(pack_bytes(data)[0]) == data


@pytest.mark.parametrize("damage,message", [
    (lambda a: a[:-7], "truncated"), (lambda a: b"XXXXXXXX" + a[8:], "bad magic"),
    (lambda a: a[:200] + bytes([a[200] ^ 0x55]) + a[201:], "corrupted")])
def test_bad_archives_are_refused(damage, message):
    archive, _ = pack_bytes(constant_node_weights().SerializeToString())
    with pytest.raises(DataError, match=message):
        unpack_bytes(damage(archive))


def test_cli_pack_unpack(tmp_path, capsys):
    src = save(constant_node_weights(), tmp_path / "m.onnx")
    assert main(["pack", str(src), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    archive = tmp_path / "m.onnxc"
    assert report["output"] == str(archive) and archive.is_file()
    assert main(["unpack", str(archive), "-o", str(tmp_path / "back.onnx")]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == src.read_bytes()
    archive.write_bytes(archive.read_bytes()[:40])
    assert main(["unpack", str(archive)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated" in err[0]
    assert main(["pack", str(tmp_path / "missing.onnx")]) == 2


def test_a_model_with_external_data_is_refused_with_how_to_make_it_one_file(tmp_path, capsys):
    """A dynamo export keeps its weights in `model.onnx.data`: pack refused it without saying how
    to write the model as one file (the fix now does)."""
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(onnx.load(MODELS / "mobilenet_digits.onnx"), src, save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    code = main(["pack", str(src), "-o", str(tmp_path / "m.onnxc")])
    err = capsys.readouterr().err
    assert code == 2 and "external data file" in err and "onnx.save(onnx.load(path)" in err
    assert err.count("\n") == 1 and not (tmp_path / "m.onnxc").exists()
