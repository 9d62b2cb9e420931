"""Verification on every write: save atomically, check, compare with the input, apply the gates.

Every command that writes a model ends with :func:`finish`. The file is saved through
:func:`onnxcomp.io.save` (onnx.checker and an onnxruntime load before the rename), then compared
with the original on the calibration data (random data when none was given, which the report
labels "no quality guarantee"). A missed gate leaves the file written and sets ``gate_failed``;
the CLI then exits 3.

Gates (shared with ``onnxcomp compare``):
  --max-drop D       with labels: task accuracy may drop at most D (a fraction: 0.01 = 1 point);
                     without labels: top-1 agreement (cosine for outputs that are not class
                     scores) must be at least 1 - D.
  --min-agreement A  top-1 agreement (or cosine) must be at least A.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxcomp import io
from onnxcomp.errors import ConfigError
from onnxcomp.measure.fidelity import compare
from onnxcomp.measure.fidelity_report import FidelityReport

_METRIC_LABEL = {"top1_agreement": "top-1 agreement", "cosine": "cosine similarity"}


@dataclass
class WriteResult:
    """What a command wrote and how far its outputs moved; ``to_dict`` is the ``--json`` output."""

    path: Path
    size_before: int
    size_after: int
    fidelity: FidelityReport | None  # None: not measured (``unmeasured`` says why and how)
    gate_failed: str | None = None
    command: str = ""
    unchanged: bool = False  # nothing was compressed: same graph and weights as the input
    unmeasured: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Output size / input size."""
        return self.size_after / self.size_before if self.size_before else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "output": str(self.path), "size_before": self.size_before,
                "size_after": self.size_after, "ratio": self.ratio, "gate_failed": self.gate_failed,
                "unchanged": self.unchanged, "warnings": self.warnings, "fidelity_not_measured": self.unmeasured,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict()}


def check_gate_values(max_drop: float | None, min_agreement: float | None) -> None:
    """Reject out-of-range gate values (the same message from the API and the CLI)."""
    from onnxcomp.config import Gates

    Gates(max_drop=max_drop, min_agreement=min_agreement)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def check_gates(report: FidelityReport, max_drop: float | None = None,
                min_agreement: float | None = None) -> str | None:
    """The reason the first missed gate failed, on one line, or None when every gate passed."""
    check_gate_values(max_drop, min_agreement)
    metric, value = report.headline
    label = _METRIC_LABEL.get(metric, metric)
    value = 0.0 if value is None else value
    if max_drop is not None:
        if report.accuracy is not None:
            drop = report.accuracy["drop"]
            if drop > max_drop:
                return (f"accuracy dropped {100 * drop:.2f} points ({_pct(report.accuracy['original'])} -> "
                        f"{_pct(report.accuracy['candidate'])}), more than --max-drop {100 * max_drop:.2f}")
        elif 1.0 - value > max_drop:
            return (f"{label} {_pct(value)} is more than --max-drop {100 * max_drop:.2f} points below 100 % "
                    "(no labels given)")
    if min_agreement is not None and value < min_agreement:
        return f"{label} {_pct(value)} is below --min-agreement {_pct(min_agreement)}"
    return None


def check_finite(report: FidelityReport, original: Any) -> None:
    """Never a silent NaN: the written model must compute finite values wherever ``original`` (a
    Model) does, on the comparison data; otherwise a one-line error (the caller removes the file)."""
    from onnxcomp.errors import UnsupportedModelError

    bad = [o for o in report.outputs if o.get("new_nonfinite")]
    if not bad:
        return
    o = bad[0]
    what = (f"the compressed model computes NaN or Inf in output {o['name']!r} ({o['new_nonfinite']} value(s)) "
            f"where {original.path or 'the input model'} computes finite values; no output was written")
    held = _nonfinite_tensors(original.proto)
    if held:  # Inf activations times a zeroed or rescaled weight: Inf * 0 is NaN
        raise UnsupportedModelError(f"{what} (the input holds NaN/Inf in {', '.join(held[:3])}: the Inf it computes "
                                    "inside becomes NaN once weights after it change)",
                                    "replace the NaN/Inf weights (re-export the model), or --exclude the layers "
                                    "that read them")
    if any(out.get("ref_nonfinite") for out in report.outputs):  # weights at the edge of the float range
        raise UnsupportedModelError(f"{what} (the input itself overflows to Inf/NaN on this data: its weights are "
                                    "near the float range, and changed ones overflow elsewhere)",
                                    "rescale the model's extreme weights, or --exclude the layers that hold them")
    raise UnsupportedModelError(what, "this is a bug in onnxcomp, please report it; meanwhile --exclude the layer "
                                      "or use other settings")


def _nonfinite_tensors(proto: Any) -> list[str]:
    """Names of the float constants (initializers, Constant nodes, subgraphs too) holding NaN/Inf."""
    import numpy as np
    from onnx.external_data_helper import _get_all_tensors

    if proto is None:
        return []
    out = []
    for t in _get_all_tensors(proto):
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                           onnx.TensorProto.BFLOAT16):
            try:
                a = io.tensor_array(t)
            except Exception:  # noqa: BLE001
                continue
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                out.append(t.name or "a Constant")
    return out


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _original_size(original: Any) -> int:
    """The input's bytes with its tensors counted wherever they are stored (its .onnx file, or
    external data files of any name)."""
    return io.model_bytes(original.proto)


def finish(original: Any, compressed: onnx.ModelProto, output: str | os.PathLike | None, *,
           command: str, data: Any, force: bool = False, max_drop: float | None = None,
           min_agreement: float | None = None, labels: Any = None, threads: int | None = None,
           metric: str = "auto", judged: str | None = None, unmeasured: str | None = None) -> WriteResult:
    """Save ``compressed`` (verified, atomic), compare it with ``original`` on ``data``, apply gates.

    ``output`` defaults to ``<stem>.<command>.onnx`` beside the original. ``data`` is a
    CalibrationData (or any source :func:`onnxcomp.data.calibration.load_data` takes; None = random).
    ``unmeasured`` (why the outputs cannot be compared, e.g. dynamic input dims and no data): the
    file is still written and verified (checker + onnxruntime load), the fidelity is not measured.
    ``metric`` / ``judged``: the headline metric and output the gates look at.
    """
    from onnxcomp.io.model import as_model

    check_gate_values(max_drop, min_agreement)
    original = as_model(original)
    if output is None:
        if original.path is None:
            raise ConfigError("the model has no file path, so there is no default output",
                              "pass an output path (-o)")
        output = io.default_output(original.path, command)
    unchanged = compressed == original.proto  # field-by-field, no serialization
    output = Path(output)
    # -o onto the input (--force): the original's weights left on disk must outlive the files
    # the save replaces, until the comparison is done
    sheltered = io.shelter([original.proto, compressed], [output, output.with_name(output.name + ".data")])
    report = None
    try:
        path = io.save(compressed, output, input_path=original.path, force=force)
        from onnxcomp.io.sessions import Written

        # what was written is compared: onnxruntime reads the file (maps external data), the proto
        # in memory answers questions about the graph (no second copy of a big model in memory)
        try:
            if unmeasured is None:
                io.release()  # what the passes and the save freed: the sessions' tensors are mapped anew
                report = compare(original, Written(compressed, path), data, labels=labels, threads=threads,
                                 metric=metric, output=judged)
                check_finite(report, original)
        except BaseException:  # a failed or interrupted command leaves no output behind
            io.discard(path, keep=original.path)
            raise
    finally:
        if sheltered is not None:
            shutil.rmtree(sheltered, ignore_errors=True)
    out = WriteResult(path=path, size_before=_original_size(original), size_after=_file_size(path),
                      fidelity=report, command=command, unchanged=unchanged, unmeasured=unmeasured)
    if report is not None:
        out.gate_failed = check_gates(report, max_drop, min_agreement)
        out.warnings += disagreement(report) + unresolved(report, max_drop)
    return out


def unresolved(report: FidelityReport, max_drop: float | None) -> list[str]:
    """A warning when the samples cannot tell a drop within ``max_drop`` from one above it."""
    from onnxcomp.measure.holdout import samples_needed

    if max_drop is None or report.accuracy is not None or report.drop_bound is None or report.drop_bound <= max_drop:
        return []
    metric, value = report.headline
    need = samples_needed(max_drop, 1 - value)
    more = f"about {need} for top-1 agreement" if need else "no sample count confirms a drop measured above it"
    return [f"{report.num_samples} samples cannot resolve --max-drop {max_drop:g}: the measured drop "
            f"{1 - value:.4f} may be up to {report.drop_bound:.4f} (95 % bound); compare on more samples ({more})"]


DISAGREE = 0.5  # on random data, below this headline the output disagrees with the original on most samples
MOVED_DB = 6.0  # on random data, below this SQNR an output moved by half its own size (relative L2 error
# >= 0.5): top-1 agreement on random inputs is near-ties on some classifiers (resnet_digits kept 99.8 %
# of its test answers at 50 % on random inputs) and cosine is lenient (0.77 on a text recogniser that
# read nothing after the rewrite); benchmarks/random_check.py measures both rules on real data


def disagreement(report: FidelityReport) -> list[str]:
    """A warning when, on random data, the output disagrees with the original on most samples or
    moved by half its own size."""
    if not report.random_data:
        return []
    metric, value = report.headline
    tail = "random data exaggerates, but such a model is usually broken; compress with --data (real inputs), or less"
    if value is not None and value < DISAGREE:
        label = _METRIC_LABEL.get(metric, metric)
        return [f"the output disagrees with the original on most random inputs ({label} {_pct(value)}): {tail}"]
    moved = [o for o in report.outputs if o.get("sqnr_db") is not None and o["sqnr_db"] < MOVED_DB]
    if not moved:
        return []
    o = min(moved, key=lambda o: o["sqnr_db"])
    which = "" if len(report.outputs) == 1 else f"output {o['name']}, "
    return [f"the output disagrees with the original on random inputs: it moved by half its own size or more "
            f"({which}SQNR {o['sqnr_db']:.1f} dB, relative error {o['rel_l2']:.2f}): {tail}"]
