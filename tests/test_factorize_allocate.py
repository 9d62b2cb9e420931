"""factorize --allocation error and the speed gate: predicted errors equal the fitted ones, the
budget is spent, a layer that is not faster stays as it is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import onnxcomp as oc
from onnxcomp.config import FactorizeConfig
from onnxcomp.passes.base import Context
from onnxcomp.passes.factorize.allocate import layer_options
from onnxcomp.passes.factorize.plan import evaluate
from onnxcomp.passes.factorize.speed import Speed
from onnxcomp.passes.rewrite import collect_layers
from tests import models as M


@dataclass
class Stats:
    """Layer-input statistics with the same inputs on both sides (no drift)."""

    cov: np.ndarray
    cross: None = None
    ref: None = None

    def target(self, w: np.ndarray) -> np.ndarray:
        return w


@pytest.mark.parametrize("method", ["svd", "spatial", "tucker2"])
def test_predicted_error_curve_equals_fitted_error(method):
    model = M.conv_layer(c_in=16, c_out=24, pads=[1, 1, 1, 1], hw=(8, 8), batch=1)
    cfg = FactorizeConfig(method=method, min_params=0, hooi_iters=0)
    (lay,), _ = collect_layers(model, cfg, Context(input_shapes={"x": (1, 16, 8, 8)}), ("conv",))
    d = 16 * 9
    a = np.random.default_rng(0).normal(size=(d, d))
    stats = [Stats(a @ a.T / d + 0.1 * np.eye(d))]  # correlated inputs: whitening matters
    options = layer_options(lay, [method], stats, 8, 1)
    assert options
    for o in options:
        fitted = evaluate(method, lay, stats, cfg, o.ranks).out_error ** 2
        assert o.error == pytest.approx(fitted, rel=1e-3, abs=1e-6)


def test_both_allocations_remove_the_requested_share_of_macs():
    m = oc.load(M.MODELS / "resnet_digits.onnx")
    data = oc.load_data(M.MODELS / "digits_calib.npz", m, num_samples=32)
    for alloc in ("uniform", "error"):
        c = oc.factorize(m, "spatial", ratio=0.6, data=data, include=["*features.[678]*"], allocation=alloc,
                         measure=False)
        res = c.results[0]
        mine = [ch for ch in res.changes if ch.macs_before and "1x1" not in (ch.reason or "")]  # six 3x3 convs
        assert res.settings["allocation"] == alloc and len(mine) == 6
        before = sum(ch.macs_before for ch in mine)
        after = sum(ch.macs_after for ch in mine)
        assert after <= 0.45 * before  # at most 1 - 0.6 of the MACs, with rank rounding


@pytest.mark.parametrize("ratio, rewritten", [(1.2, False), (0.5, True)])
def test_a_layer_that_is_not_faster_stays(monkeypatch, ratio, rewritten):
    monkeypatch.setattr(Speed, "ratio", lambda self, lay, method, ranks: ratio)
    model = M.conv_layer(c_in=32, c_out=32, pads=[1, 1, 1, 1], hw=(16, 16), batch=1)
    (change,) = oc.factorize(model, "spatial", ratio=0.5, measure=True, min_params=0).results[0].changes
    assert change.detail["latency_ratio"] == ratio
    assert change.skipped is not rewritten
    if not rewritten:
        assert "not faster" in change.reason


def test_the_default_allocation_keeps_whichever_moved_the_outputs_least():
    """--allocation auto (the default with real data) builds both allocations and keeps the model
    closer to the original: the same model the chosen allocation writes alone; data-free it is
    the uniform allocation."""
    m = oc.load(M.MODELS / "resnet_digits.onnx")
    data = oc.load_data(M.MODELS / "digits_calib.npz", m, num_samples=32)
    kw = dict(ratio=0.6, include=["*features.[678]*"], measure=False)
    auto = oc.factorize(m, "spatial", data=data, **kw)
    res = auto.results[0]
    errors = res.settings["allocation_errors"]
    chosen = min(errors, key=errors.get)
    assert res.settings["allocation"] == f"auto: {chosen}" and set(errors) == {"uniform", "error"}
    assert any(f"allocation {chosen}: the outputs moved least" in n for n in res.notes)
    alone = oc.factorize(m, "spatial", data=data, allocation=chosen, **kw)
    assert auto.proto.SerializeToString() == alone.proto.SerializeToString()
    assert [w["walk"] for w in res.settings["engine"]] == [  # the report counts what both cost
        "factorize: fit (uniform)", "factorize: error curves (error)", "factorize: fit (error)"]
    free = oc.factorize(m, "spatial", ratio=0.6, include=["*features.[678]*"], measure=False)
    assert free.results[0].settings["allocation"] == "auto: uniform"  # no data: every layer at the ratio
    assert "in every layer" in free.results[0].settings["rank_rule"]
