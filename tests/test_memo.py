"""A measurement shared across runs (``memo``): auto's trials at several budgets measure each
layer's sensitivity once, and the models they write are the ones separate runs write."""
from __future__ import annotations

from onnxcomp.data.calibration import load_data
from onnxcomp.io import load_model, serialize
from onnxcomp.measure import sensitivity
from onnxcomp.pipeline import recipe as recipes
from tests.models import MODELS

SRC, CALIB = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"


def _cluster(bits: float, memo: dict | None):
    model = load_model(SRC)
    data = load_data(str(CALIB), model.proto, num_samples=32)
    rec = recipes.make([("cluster", {"bits": bits, "allocation": "sensitivity"})], encoding="auto")
    return recipes.apply(model, rec, data=data, memo=memo)


def test_a_second_budget_reuses_the_measurement_and_writes_the_same_model(monkeypatch):
    calls = []
    measure = sensitivity.measure_curves
    monkeypatch.setattr(sensitivity, "measure_curves", lambda *a, **k: calls.append(1) or measure(*a, **k))
    memo: dict = {}
    _cluster(2.5, memo)
    again = _cluster(2.25, memo)  # the same measured width (2 bits) on the same model and data
    assert len(calls) == 1 and "measured once for several budgets" in " ".join(again.result_of("cluster").notes)
    fresh = _cluster(2.25, None)
    assert len(calls) == 2 and "measured once" not in " ".join(fresh.result_of("cluster").notes)
    assert serialize(again.proto) == serialize(fresh.proto)
    _cluster(2.75, memo)  # the next width (3 bits): measured; the one before (2 bits) is kept too
    _cluster(2.4, memo)
    assert len(calls) == 3
