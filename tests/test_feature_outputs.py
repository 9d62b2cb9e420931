"""An output that is a feature vector (a sentence embedding, BERT's pooler, a normalized image
embedding) is judged by cosine, not by a top-1 agreement over its dimensions: a pooled and
normalized [N, 128] embedding read "top-1 agreement 78 %" as the headline of a prune, and gates
and `auto` judged it by that argmax."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxcomp.cli import main
from onnxcomp.measure.outputs import feature_outputs

from . import models as M

VIT = M.MODELS / "vit_digits.onnx"
CALIB = M.MODELS / "digits_calib.npz"
LN = "/norm/LayerNormalization_output_0"  # vit_digits' final LayerNorm, [N, tokens, 64]


def _vit_with(nodes: list[onnx.NodeProto], out: str, inits=()) -> onnx.ModelProto:
    """vit_digits (trained) with ``nodes`` after its final LayerNorm, ``out`` beside its logits."""
    m = onnx.load(VIT)
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    m.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", 64]))
    return m


def _sentence_embedding() -> onnx.ModelProto:
    """Mean pooling over the tokens, then L2 normalization, as sentence-transformers exports it."""
    return _vit_with([helper.make_node("ReduceMean", [LN], ["pooled"], axes=[1], keepdims=0),
                      helper.make_node("ReduceL2", ["pooled"], ["norm"], axes=[1], keepdims=1),
                      helper.make_node("Clip", ["norm", "eps"], ["safe"]),
                      helper.make_node("Div", ["pooled", "safe"], ["embedding"])], "embedding",
                     [M.init("eps", np.array(1e-12, np.float32))])


def test_feature_vectors_are_told_from_class_scores():
    emb = _sentence_embedding()
    assert feature_outputs(emb) == [False, True]  # the logits stay class scores
    cls_token = _vit_with([helper.make_node("Tanh", ["/Gather_1_output_0"], ["pooler"])], "pooler")
    assert feature_outputs(cls_token) == [False, True]  # BERT's pooler: tanh of the CLS token
    x = M.vi("x", ["N", 10])

    def one(nodes, inits=()):
        return feature_outputs(M.make(nodes, [x], [M.vi("y", ["N", 10])], inits))[0]

    one_ = M.init("one", np.array(1.0, np.float32))
    t = M.init("t", np.array(2.0, np.float32))
    assert not one([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("ReduceSum", ["e"], ["s"], keepdims=1),
                    helper.make_node("Div", ["e", "s"], ["y"])])  # a softmax written out
    assert not one([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Exp", ["n"], ["e"]),
                    helper.make_node("Add", ["e", "one"], ["d"]), helper.make_node("Div", ["one", "d"], ["y"])],
                   [one_])  # a sigmoid written out
    assert not one([helper.make_node("Div", ["x", "t"], ["y"])], [t])  # logits over a temperature
    assert one([helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("ReduceSum", ["sq"], ["s"], keepdims=1),
                helper.make_node("Sqrt", ["s"], ["r"]), helper.make_node("Reciprocal", ["r"], ["inv"]),
                helper.make_node("Mul", ["x", "inv"], ["n"]), helper.make_node("Mul", ["n", "t"], ["y"])],
               [t])  # TensorFlow's l2_normalize, then a scale


def test_an_embedding_output_is_judged_by_cosine_and_class_scores_by_top1(tmp_path, capsys):
    src = M.save(_sentence_embedding(), tmp_path / "emb.onnx")
    code = main(["prune", str(src), "--sparsity", "0.5", "--data", str(CALIB), "--samples", "64",
                 "--judge", "embedding", "-o", str(tmp_path / "p.onnx"), "--json", "--quiet"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    fid = json.loads(cap.out)["write"]["fidelity"]
    outs = {o["name"]: o for o in fid["outputs"]}
    assert fid["headline"]["metric"] == "cosine" and fid["headline"]["value"] > 0.99
    assert outs["embedding"]["top1_agreement"] is None
    assert outs["logits"]["top1_agreement"] is not None and outs["logits"]["top1_agreement"] > 0.9
    code = main(["compare", str(src), str(tmp_path / "p.onnx"), "--data", str(CALIB), "--samples", "32",
                 "--judge", "embedding", "--metric", "top1"])  # asked for by name, the argmax is counted
    text = capsys.readouterr().out
    assert code == 0 and "top-1 agreement" in text.splitlines()[-1]


@pytest.mark.parametrize("path", sorted(M.MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_no_classifier_in_models_reads_as_features(path):
    assert not any(feature_outputs(onnx.load(path)))
