"""The lossless fold the speed rewrites end with: fewer elementwise ops, the same outputs."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.cli import main
from onnxcomp.graph.fold import fold_affine


def _paddle_like(opset: int = 12) -> onnx.ModelProto:
    """What PaddlePaddle exports around its convs: per-channel and scalar Mul/Add (learnable
    affine blocks), hard-swish as x * Clip(x + 3, 0, 6) / 6, an SE gate as Clip(x + 3, 0, 6) / 6,
    a shift before a padded conv (which must stay), a depthwise conv after a scale, a shared kernel."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def c(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def clip(x, out):
        if opset >= 11:
            return n("Clip", [x, c(out + "_lo", 0.0), c(out + "_hi", 6.0)], out)
        return n("Clip", [x], out, min=0.0, max=6.0)

    w = lambda name, *shape: c(name, rng.standard_normal(shape) * 0.3)  # noqa: E731
    y = n("Conv", ["x", w("w1", 8, 3, 3, 3), w("b1", 8)], "c1", pads=[1, 1, 1, 1])
    y = n("Mul", [y, c("s1", rng.uniform(0.5, 1.5, (1, 8, 1, 1)))], "m1")
    y = n("Add", [c("t1", 0.1), y], "a1")  # the constant first: Add is commutative
    h = n("Add", [y, c("three", 3.0)], "h1")
    h = clip(h, "h2")
    h = n("Mul", [y, h], "h3")
    y = n("Div", [h, c("six", 6.0)], "h4")  # hard-swish
    y = n("Mul", [y, c("s2", rng.uniform(0.5, 1.5, (8, 1, 1)))], "m2")
    y = n("Add", [y, c("t2", rng.standard_normal((8, 1, 1)) * 0.1)], "a2")
    y = n("Conv", [y, w("w2", 8, 8, 1, 1)], "c2")  # 1x1, no padding: the shift folds too
    y = n("Mul", [y, c("s3", 1.3)], "m3")  # folds into c2's output
    y = n("Relu", [y], "r3")
    y = n("Mul", [y, c("s4", rng.uniform(0.5, 1.5, (1, 8, 1, 1)))], "m4")  # into the depthwise conv
    y = n("Conv", [y, w("wd", 8, 1, 3, 3)], "dw", group=8, pads=[1, 1, 1, 1])
    y = n("Relu", [y], "r5")
    y = n("Add", [y, c("t5", 0.5)], "a5")  # a shift before padded convs: must stay
    y = n("Mul", [y, c("s6", rng.uniform(0.5, 1.5, (1, 8, 1, 1)))], "m6")  # into c5, whose kernel c6 shares
    z1 = n("Conv", [y, c("wshared", rng.standard_normal((8, 8, 3, 3)) * 0.2)], "c5", pads=[1, 1, 1, 1])
    z2 = n("Conv", [z1, "wshared"], "c6", pads=[1, 1, 1, 1])
    g = n("GlobalAveragePool", [z2], "gap")
    g = n("Add", [g, c("three2", 3.0)], "g1")
    g = clip(g, "g2")
    g = n("Mul", [g, c("sixth", 1.0 / 6.0)], "g3")  # hard-sigmoid gate
    n("Mul", [z2, g], "out")
    graph = helper.make_graph(nodes, "paddle_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [10, 13])
def test_fold_leaves_fewer_ops_and_the_same_outputs(opset):
    model = _paddle_like(opset)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32) * 3
    before = _run(model, x)
    done = fold_affine(model)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert (done.into_outputs, done.into_inputs, done.hard_sigmoid) == (3, 4, 2)
    assert ops["Div"] == 0 and ops["Clip"] == 0 and ops["HardSigmoid"] == 2
    assert ops["Add"] == 1  # only the shift before the padded convs is left
    assert ops["Mul"] == 2  # x * HardSigmoid(x) and the gate
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
    assert len({n.input[1] for n in model.graph.node if n.op_type == "Conv"}) == 5  # shared kernel kept apart


def test_overridable_initializers_are_not_folded():
    model = _paddle_like()
    g = model.graph  # every initializer also a graph input: a caller may feed other values
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer)
    before = model.SerializeToString()
    assert fold_affine(model).total == 0
    assert model.SerializeToString() == before


def test_speed_commands_end_with_the_fold(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_paddle_like(), src)
    assert main(["factorize", str(src), "--ratio", "0.3", "--no-measure", "-o", str(tmp_path / "f.onnx")]) == 0
    out = capsys.readouterr().out
    assert "lossless fold: 7 constant Mul/Add folded" in out
    assert "2 Clip(x+3,0,6)/6 chains now HardSigmoid" in out
    assert Counter(n.op_type for n in onnx.load(tmp_path / "f.onnx").graph.node)["Div"] == 0
    assert main(["prune", "--structured", str(src), "--ratio", "0.5", "--round-to", "1", "--no-fold", "-o",
                 str(tmp_path / "k.onnx")]) == 0
    assert "lossless fold" not in capsys.readouterr().out
    assert Counter(n.op_type for n in onnx.load(tmp_path / "k.onnx").graph.node)["Div"] == 1


def test_a_recipe_step_folds_alone(tmp_path):
    """`auto --target-latency` tries the fold alone first; its recipe (`- fold: {}`) replays it."""
    import onnxcomp as oc
    from onnxcomp.pipeline import recipe

    model = _paddle_like()
    x = np.random.default_rng(2).standard_normal((1, 3, 12, 12)).astype(np.float32)
    result = oc.replay(model, recipe.make([("fold", {})]))
    assert any("lossless fold" in n for r in result.results for n in r.notes)
    path = oc.save(result.model, tmp_path / "f.onnx")
    folded = onnx.load(path)
    assert Counter(n.op_type for n in folded.graph.node)["Clip"] == 0
    before = _run(model, x)
    np.testing.assert_allclose(_run(folded, x), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())
