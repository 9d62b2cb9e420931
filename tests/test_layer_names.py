"""Weights an exporter named from a counter (torch's legacy `onnx::MatMul_322`, dynamo's `val_111`)
are shown by the layer that reads them, in every per-layer table: a Hugging Face BERT's prune
listed twelve `onnx::MatMul_3xx` rows, and nothing said which layer each was."""
from __future__ import annotations

import json

from onnxcomp.cli import main
from onnxcomp.pipeline.labels import GENERATED

from . import models as M

VIT = M.MODELS / "vit_digits.onnx"
HEAD = "/blocks/blocks.3/mlp/mlp.2/MatMul"  # reads onnx::MatMul_322


def test_generated_names_are_told_from_given_ones():
    for name in ("onnx::MatMul_322", "val_111", "const_fold_opt__429", "294"):
        assert GENERATED.match(name)
    for name in ("head.weight", "conv2d_4.w_0", "functional_1/dense_1/Cast/ReadVariableOp:0", "val_loss"):
        assert not GENERATED.match(name)


def test_tables_name_the_layer_and_json_keeps_both(tmp_path, capsys):
    code = main(["prune", str(VIT), "--sparsity", "0.5", "-o", str(tmp_path / "p.onnx"), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    assert HEAD in text and "onnx::MatMul_322" not in text
    assert "head.weight" in text  # a name the model gave stays
    code = main(["cluster", str(VIT), "--bits", "4", "-o", str(tmp_path / "c.onnx"), "--quiet", "--json",
                 "--exclude", "/blocks/blocks.3/*"])  # a glob on the layer names the table shows
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {c["name"]: c for c in report["passes"][0]["changes"]}
    assert rows["onnx::MatMul_322"]["detail"]["layer"] == HEAD
    assert rows["onnx::MatMul_322"]["action"] == "skipped"


def test_notes_name_the_layer_and_leave_other_text_alone():
    import onnx

    from onnxcomp.graph.weights import find_weights
    from onnxcomp.passes.base import Change, PassResult
    from onnxcomp.pipeline.labels import label_layers

    weights = find_weights(onnx.load(VIT))
    r = PassResult("prune", changes=[Change("onnx::MatMul_322", "MatMul", "pruned")],
                   notes=["output layer(s) held at 0.5: head.weight, onnx::MatMul_322; 322 samples",
                          "onnx::MatMul_3220 is not a weight here"])
    label_layers([r], weights)
    assert r.changes[0].detail["layer"] == HEAD
    assert r.notes[0] == f"output layer(s) held at 0.5: head.weight, {HEAD}; 322 samples"
    assert r.notes[1] == "onnx::MatMul_3220 is not a weight here"  # a longer name is not cut
