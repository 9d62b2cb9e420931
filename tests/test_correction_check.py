"""The per-channel correction after a calibrated pass is kept only when it brings outputs closer
to the original's on calibration samples it was not fitted on (real mobilenet_digits weights)."""
import numpy as np

import onnxcomp as oc
from tests.models import MODELS


def test_correction_is_checked_on_samples_it_was_not_fitted_on(monkeypatch):
    """The keep-or-drop check of the correction runs on the first calibration samples and the
    correction is fitted on the others: a check on the samples it was fitted on favours keeping it
    (on effnet_lite0 it was kept and moved the held-out answers away)."""
    from onnxcomp.passes import correction as C

    fitted = []
    real = C.correct

    def spy(original, compressed, names, data, **kw):
        fitted.append(sum(len(next(iter(b.values()))) for b in data))
        return real(original, compressed, names, data, **kw)

    monkeypatch.setattr(C, "correct", spy)
    src, calib = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"
    step = oc.cluster(src, 3, data=calib).result_of("correction")
    assert fitted == [128 - C.CHECK_SAMPLES] and step.settings["output_error"]["held_out"]
    few = {"input": np.load(calib)["input"][:48]}  # fewer than twice the check: fitted on all, said so
    step = oc.cluster(src, 3, data=few).result_of("correction")
    assert fitted[-1] == 48 and not step.settings["output_error"]["held_out"]
