"""Structured pruning of a transformer: attention heads and FFN neurons go as coupled groups, the
consumers are refit, and the test accuracy of vit_digits holds."""
import pytest

import onnxcomp as oc

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
