"""compress: prune -> cluster -> encode -> pack, with the stage table."""
from __future__ import annotations

import json

import pytest

from onnxcomp.cli import main
from tests.models import MODELS

pytest.importorskip("onnxcomp.passes.prune.prune")
pytest.importorskip("onnxcomp.pipeline.run")


def test_stage_table_and_pack(tmp_path, capsys):
    out = tmp_path / "r.onnx"
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "--prune", "0.9", "--bits", "4", "--pack",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ("original", "pruned 90%", "clustered 4 bits", "packed (lzma)"):
        assert stage in text
    assert (tmp_path / "r.onnxc").is_file()
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "--prune", "0.9", "--bits", "4", "--pack",
                 "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ratios = [s["ratio"] for s in report["stages"]]
    assert ratios[0] == 1.0 and ratios[1] > ratios[2] > ratios[3]
    assert ratios[3] <= 0.05  # >= 20x smaller after prune 90 % + 4 bits + pack
    assert report["stages"][1]["fidelity"]["outputs"]


def test_bad_options(capsys):
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "--sparsity", "1.5"]) == 2
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "--bits", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--sparsity 1.5" in err[0] and "--bits 12" in err[1]
    assert main(["compress", str(MODELS / "resnet_digits.onnx"), "--prune", "1.5"]) == 2  # the old name


def test_fractional_bits_need_a_mixed_allocation(tmp_path, capsys):
    """--bits 2.5 is an average: refused (one line, exit 2) with uniform bits, taken by mixed."""
    src = str(MODELS / "resnet_digits.onnx")
    assert main(["compress", src, "--prune", "0.9", "--bits", "2.5", "-o", str(tmp_path / "u.onnx")]) == 2
    assert "--bits 2.5 is fractional" in capsys.readouterr().err
    out = tmp_path / "m.onnx"
    assert main(["compress", src, "--prune", "0.9", "--bits", "2.5", "--bit-allocation", "mixed",
                 "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["stages"][2]["stage"] == "clustered 2.5 bits"
