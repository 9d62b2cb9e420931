"""Codebook refit after GPTQ, and the allocation's choice of granularity per layer."""
from __future__ import annotations

import numpy as np
import pytest

import onnxcomp as oc
from onnxcomp.passes.cluster.refit import refit_channels
from onnxcomp.encode.tables import GRID8, Layout, factor
from onnxcomp.graph.weights import find_weights
from onnxcomp.algo.obs import assign_gptq
from onnxcomp.passes.cluster import cluster as cluster_pass
from onnxcomp.passes.cluster import costs
from onnxcomp.algo.allocation import allocate
from onnxcomp.passes.cluster.fit import fit
from onnxcomp.passes.prune.obs import _rows, hessians
from onnxcomp.data.calibration import load_data
from onnxcomp.io.sessions import session
from tests.models import MODELS, output_error

SRC, CALIB = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"


@pytest.fixture(scope="module")
def layer():
    """A real pointwise conv of mobilenet_digits, a third of its weights pruned, and its Hessian."""
    model = oc.load(SRC).proto
    w = max((w for w in find_weights(model) if w.role == "conv" and not w.is_depthwise), key=lambda w: w.size)
    (_, groups), = list(hessians(model, [w], load_data(CALIB, model)))
    rows = _rows(w, w.values()).astype(np.float64)
    rows[np.abs(rows) < np.quantile(np.abs(rows), 0.3)] = 0.0
    return rows, np.asarray(groups[0].cov)


def _out_err(v, t, h):
    e = np.asarray(v, np.float64) - t
    return float(((e @ h) * e).sum() / ((t @ h) * t).sum())


def test_refit_lowers_output_error_and_keeps_the_table_format(layer):
    rows, h = layer
    f = fit(rows.astype(np.float32).reshape(-1), Layout.of(rows.shape, 0), 8, "channel",
            importance=np.broadcast_to(np.diag(h), rows.shape).reshape(-1).astype(np.float32))
    assigned = assign_gptq(rows, h, f.table, keep_zero=rows == 0).astype(np.float32)
    refit = refit_channels(rows, assigned, [h], grid=True)
    assert _out_err(refit, rows, h) < 0.97 * _out_err(assigned, rows, h)
    assert np.all(refit[rows == 0] == 0)  # pruned weights stay pruned
    table = np.zeros((len(refit), 8), np.float32)  # <= 8 values besides zero per row
    for i, r in enumerate(refit):
        vals = np.unique(r[r != 0])
        assert len(vals) <= 8
        table[i, :len(vals)] = vals
    assert factor(table, GRID8) is not None  # each row: int8 values times one float16 scale


def test_refit_in_the_pass_moves_outputs_less_at_the_same_bytes(monkeypatch):
    err = output_error(SRC, CALIB)

    refit = oc.cluster(SRC, 4, granularity="channel", data=CALIB, correction="none")  # the refit's tables
    monkeypatch.setattr(cluster_pass, "REFIT", False)
    plain = oc.cluster(SRC, 4, granularity="channel", data=CALIB, correction="none")
    assert sum(e.bytes for e in refit.encodings) <= 1.01 * sum(e.bytes for e in plain.encodings)
    assert err(refit) < 0.95 * err(plain)  # 0.85 at 4 bits; at 3 bits within noise (0.98-1.04 by thread count)


def test_allocate_walks_the_convex_hull_of_mixed_options():
    """(granularity, bits) options: dominated and non-convex points are skipped, budget kept."""
    errors = {"a": {("channel", 2): 1.0, ("channel", 3): 0.9, ("channel", 4): 0.1, ("shared", 3): 0.5},
              "b": {("channel", 2): 0.2, ("channel", 3): 0.19}}
    costs = {"a": {("channel", 2): 200, ("channel", 3): 300, ("channel", 4): 400, ("shared", 3): 310},
             "b": {("channel", 2): 200, ("channel", 3): 300}}
    assert allocate(errors, {"a": 100, "b": 100}, 3.0, costs) == {"a": ("channel", 4), "b": ("channel", 2)}
    assert allocate(errors, {"a": 100, "b": 100}, 2.0, costs) == {"a": ("channel", 2), "b": ("channel", 2)}


@pytest.mark.parametrize("budget", [2.5, 3.5])
def test_auto_granularity_mixed_allocation_is_bit_exact_and_within_budget(budget):
    """mixed bits with granularity auto: the stored bits (each layer's own table kind counted)
    stay within the budget, and the encoded model computes exactly what the clustered weights
    compute (a shared codebook's per-channel scales included)."""
    import onnx

    from onnxcomp.config import ClusterConfig
    from onnxcomp.passes.base import Context

    model = oc.load(SRC).proto
    ctx = Context(data=load_data(CALIB, model))
    result = cluster_pass.ClusterPass(ClusterConfig(bits=budget, allocation="mixed")).run(model, ctx)
    applied = {ch.name: ch for ch in result.applied}
    weights = [w for w in find_weights(model) if w.name in applied]
    stored = sum(costs.storage_bits(w, applied[w.name].detail["granularity"], int(applied[w.name].detail["bits"]))
                 for w in weights)
    assert stored <= budget * sum(w.size for w in weights) + 1
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    choices = oc.encode.encode_weights(model, set(applied))
    assert all(c.kind.startswith("codebook") for c in choices if c.name in applied)
    x = np.load(CALIB)["input"][:16]
    assert np.array_equal(session(dense).run(None, {"input": x})[0], session(model).run(None, {"input": x})[0])
