"""Structured pruning of a transformer: attention heads and FFN neurons go as coupled groups, the
consumers are refit, and the test accuracy of vit_digits holds; also on vit_sdpa_digits, whose
attention reads its shapes at run time as transformers' exports do."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxcomp as oc
from onnxcomp.graph.edit import ConstEval

from . import models as M
from .test_channels import run


@pytest.fixture(scope="module")
def vit():
    return M.digits_sets("vit_digits.onnx", 64, 300)


@pytest.mark.parametrize("kw", [{}, pytest.param({"importance": "reconstruction", "allocation": "curves"},
                                                 marks=pytest.mark.slow)],
                         ids=["default", "reconstruction-curves"])
def test_heads_and_ffn_pruned_accuracy_kept(vit, kw):
    model, calib, test = vit
    c = oc.prune_channels(model, 0.5, data={"input": calib}, **kw)
    s, groups = c.results[0].settings, c.results[0].groups
    heads = [g for g in groups if len(g["producers"]) == 3]  # Q, K, V of one block
    assert heads and any(g["status"] == "pruned" for g in groups)
    assert all(g["status"] != "frozen" for g in heads)
    assert s["macs_after"] < 0.75 * s["macs_before"]
    acc = lambda p: float((run(p, test[0]).argmax(1) == test[1]).mean())  # noqa: E731
    assert acc(c.proto) >= acc(model.proto) - 0.02


def literal_counts(model: oc.Model, share: bool = False) -> oc.Model:
    """``model`` with each -1 of a computed (Concat) Reshape target that does not depend on the batch
    replaced by the count it stands for: attention as transformers wrote it before 4.48,
    ``view(x.size()[:-1] + (heads, head_dim))`` and ``view(... + (width,))``, on the same weights.
    ``share``: every head split then reads the first one's Concat, as the dynamo exporter shares
    one shape between layers."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g, ev = proto.graph, ConstEval(proto)
    concats = {n.output[0]: ev.producer[n.input[1]] for n in g.node if n.op_type == "Reshape"
               and ev.value(n.input[1]) is None and ev.producer[n.input[1]].op_type == "Concat"}
    seen = list(dict.fromkeys([*concats, *(i for c in concats.values() for i in c.input)]))
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in seen)
    sess = ort.InferenceSession(probe.SerializeToString())
    x = np.zeros((1, 1, 16, 16), np.float32)
    values = [dict(zip(seen, sess.run(seen, {"input": np.repeat(x, b, 0)}))) for b in (2, 3)]
    for k, (out, concat) in enumerate(concats.items()):
        at = 0
        for slot, name in enumerate(concat.input):
            dims = [v[out].shape[at] if at < v[out].ndim else None for v in values]
            if ev.value(name) is not None and ev.value(name).tolist() == [-1] and dims[0] == dims[1]:
                g.initializer.append(numpy_helper.from_array(np.array([dims[0]], np.int64), f"{name}_{k}_lit"))
                concat.input[slot] = f"{name}_{k}_lit"
            at += values[0][name].size
    if share:
        splits = [(r, c) for r in g.node if r.op_type == "Reshape" for c in [ev.producer.get(r.input[1])]
                  if c is not None and c.op_type == "Concat" and len(c.input) == 4]
        for r, _ in splits:
            r.input[1] = splits[0][1].output[0]
    return oc.Model(proto)


@pytest.mark.parametrize("name,literal", [("vit_sdpa_digits.onnx", False), ("vit_sdpa_digits_dynamo.onnx", False),
                                          ("vit_sdpa_digits.onnx", True), ("vit_sdpa_digits.onnx", "shared"),
                                          ("vit_mha_digits.onnx", False), ("vit_mha_digits_dynamo.onnx", False)],
                         ids=["legacy", "dynamo", "legacy-literal", "legacy-literal-shared", "multihead-legacy",
                              "multihead-dynamo"])
def test_heads_pruned_where_shapes_are_read_at_run_time(name, literal):
    """Heads split by shapes read at run time (``-1`` counts; or, ``literal``, counts written in
    the Concat that builds the target, even one Concat for every layer) are removed, the target
    rewritten where it counts them (for each Reshape alone)."""
    model, calib, test = M.digits_sets(name, 64, 450)
    if literal:
        model = literal_counts(model, share=literal == "shared")
        assert any("_lit" in i for n in model.proto.graph.node for i in n.input)
    c = oc.prune_channels(model, 0.5, data={"input": calib})
    s, groups = c.results[0].settings, c.results[0].groups
    heads = [g for g in groups if g["channels"] == 4]
    assert len(heads) == 2 and all(g["status"] != "frozen" for g in heads) and any(g["kept"] < g["channels"] for g in heads)
    assert s["macs_after"] <= 0.55 * s["macs_before"]  # with frozen heads only 0.68 was reachable
    acc = lambda p, x: run(p, x).argmax(1)  # noqa: E731
    assert (acc(c.proto, test[0]) == test[1]).mean() >= (acc(model.proto, test[0]) == test[1]).mean() - 0.01
    # the pruned graph still computes its shapes: any batch gives what one sample at a time gives
    x = test[0][:5]
    one = np.concatenate([run(c.proto, x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(run(c.proto, x), one, atol=1e-4)
