"""Samples of the calibration data kept out of the compression, to judge the result on them.

A calibrated pass fits the model to its calibration samples (OBS updates, least-squares refits,
codebook refits), so its outputs on those very samples flatter it: fitted on 96 images,
effnet_lite0 pruned to 50 % had a KL divergence to the original of 0.0017 on them and 0.073 on
32 it never saw; after structured pruning at 0.15, 0.00007 and 0.14. The written model's
fidelity and quality gates are honest only on samples the compression did not see.
"""
from __future__ import annotations

from typing import Any

from onnxcomp.data.calibration import CalibrationData, load_labels
from onnxcomp.data.sampling import limit_samples, skip_samples
from onnxcomp.errors import DataError

HOLDOUT = 0.25  # held out by default when a quality gate is given
MIN_SAMPLES = 32  # with fewer samples nothing is held out by default (they are all needed to fit)


def fraction(given: float | None, data: Any, gated: bool) -> float:
    """The fraction to hold out: ``given``, or by default HOLDOUT when a gate judges the model on
    real data of MIN_SAMPLES or more, else 0."""
    if given is not None:
        return given
    if not gated or data is None or getattr(data, "random", True):
        return 0.0
    return HOLDOUT if count(data) >= MIN_SAMPLES else 0.0


def count(data: CalibrationData) -> int:
    """Samples in ``data`` (counted once by iterating when the source does not say)."""
    if data.num_samples is None:
        for _ in data:  # the iteration records the count
            pass
    return int(data.num_samples or 0)


def split(data: CalibrationData, frac: float) -> tuple[CalibrationData, CalibrationData]:
    """(the first samples, to fit; the last ``frac`` of them, held out), in whole batches of the
    model's batch unit. A one-line DataError when either part would be empty."""
    n, unit = count(data), max(1, data.unit)
    held = int(round(n * frac)) // unit * unit
    if held <= 0 or held >= n:
        side = "none to hold out" if held <= 0 else "none to fit"
        raise DataError(f"--holdout {frac:g} of {n} sample(s) leaves {side}"
                        + (f" (whole batches of {unit})" if unit > 1 else ""),
                        "give more samples with --data, or another --holdout (0 measures on the fitted samples)")
    fit = n - held
    labels = data.labels
    common = dict(specs=data.specs, batch_size=data.batch_size, origin=data.origin, layout=data.layout)
    fitted = CalibrationData(lambda: limit_samples(data, fit), description=f"{data.description}; the first {fit} "
                             "fitted", num_samples=fit, labels=None if labels is None else labels[:fit], **common)
    kept = CalibrationData(lambda: skip_samples(data, fit), description=f"{data.description}: the last {held} held "
                           f"out (the compression was fitted to the other {fit})", num_samples=held,
                           labels=None if labels is None else labels[fit:], **common)
    return fitted, kept


def held_labels(source: Any, total: int, held: int) -> Any:
    """The labels of the held-out samples (the last ``held`` of ``total``) from a --labels source."""
    if source is None:
        return None
    labels = load_labels(source, total)
    return labels[total - held: total]
