"""The figures fidelity reports: per-output metrics accumulated over batches, and the report."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxcomp.data.calibration import RANDOM_NOTE
from onnxcomp.measure.outputs import slice_axis, slice_floor


DEGRADED_SQNR_DB = 40.0  # below this (1 % relative L2 error) a tensor counts as degraded


class OutputMetrics:
    """Streaming accumulators for one tensor pair.

    ``parts``: the output concatenates heads (:func:`onnxcomp.measure.outputs.output_parts`); its
    cosine is then the mean, over the slices along the concatenated axis that carry signal (energy
    at least their part's median slice energy), of each slice's cosine over all samples, so class
    scores beside box coordinates in pixels are not drowned out (the whole tensor's is kept as
    ``cosine_whole``). ``features``: the output is a feature vector, not class scores
    (:func:`onnxcomp.measure.outputs.feature_outputs`), so no top-1 agreement is counted.
    """

    def __init__(self, parts: tuple | None = None, features: bool = False) -> None:
        self.parts = parts
        self.axis: int | None = None
        self.slices: np.ndarray | None = None  # [3, S]: sum a*b, sum a^2, sum b^2 per slice
        self.n = 0
        self.ref2 = self.err2 = self.cos = self.cos2 = self.top5 = 0.0
        self.max_abs = 0.0
        self.new_nonfinite = 0  # values NaN/Inf in the candidate where the original's are finite
        self.ref_nonfinite = 0  # values NaN/Inf in the original
        self.top1 = 0
        self.scalar = np.zeros(3)  # sum a*b, a^2, b^2 over every sample of a one-value output
        self.scalar_n = 0
        self.classification: bool | None = False if features else None
        self.shape: tuple | None = None

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        finite = np.isfinite(a64)
        self.new_nonfinite += int((finite & ~np.isfinite(b64)).sum())
        self.ref_nonfinite += int(finite.size - finite.sum())
        n = a64.shape[0] if a64.ndim else 1
        fa, fb = a64.reshape(n, -1), b64.reshape(n, -1)
        d = fa - fb
        self.ref2 += float((fa * fa).sum())
        self.err2 += float((d * d).sum())
        self.max_abs = max(self.max_abs, float(np.abs(d).max(initial=0.0)))
        if fa.shape[1] == 1:  # one value per sample (a probability, a score): a per-sample cosine
            self.scalar += np.array([(fa * fb).sum(), (fa * fa).sum(), (fb * fb).sum()])  # is its sign
            self.scalar_n += n
        else:
            na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
            dot = (fa * fb).sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                cos = np.where((na == 0) & (nb == 0), 1.0, dot / (na * nb))
            cos = np.nan_to_num(cos, nan=0.0)
            self.cos += float(cos.sum())
            self.cos2 += float((cos * cos).sum())
        self.shape = (None,) + tuple(a.shape[1:])
        self.axis = slice_axis(a64, self.parts)
        if self.axis is not None:
            sa, sb = (np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1) for x in (a64, b64))
            sums = np.stack([(sa * sb).sum(1), (sa * sa).sum(1), (sb * sb).sum(1)])
            self.slices = sums if self.slices is None or self.slices.shape != sums.shape else self.slices + sums
        if self.classification is None:
            self.classification = a.ndim == 2 and a.shape[1] >= 2
        if self.classification:
            self.top1 += int((a64.argmax(1) == b64.argmax(1)).sum())
            k = min(5, a.shape[1])
            ia = np.argpartition(-a64, k - 1, axis=1)[:, :k]
            ib = np.argpartition(-b64, k - 1, axis=1)[:, :k]
            self.top5 += float((ia[:, :, None] == ib[:, None, :]).any(2).sum() / k)
        self.n += n

    def result(self) -> dict[str, Any]:
        rel = math.sqrt(self.err2 / self.ref2) if self.ref2 > 0 else (0.0 if self.err2 == 0 else math.inf)
        ratio = self.ref2 / self.err2 if self.err2 and self.ref2 > 0 else 0.0  # NaN/Inf outputs: -inf
        sqnr = math.inf if self.err2 == 0 else (10 * math.log10(ratio) if ratio > 0 else -math.inf)
        cls = bool(self.classification)
        return {"top1_agreement": self.top1 / self.n if cls and self.n else None,
                # with 5 classes or fewer every top-5 holds them all: nothing to report
                "top5_overlap": self.top5 / self.n if cls and self.n and self.shape[-1] > 5 else None,
                "cosine": self.cos / self.n if self.n else None, "rel_l2": rel, "sqnr_db": sqnr,
                "cosine_sd": math.sqrt(max(self.cos2 / self.n - (self.cos / self.n) ** 2, 0.0)) if self.n else None,
                "max_abs": self.max_abs, "new_nonfinite": self.new_nonfinite,
                "ref_nonfinite": self.ref_nonfinite, **self._sliced(), **self._across()}

    def _across(self) -> dict[str, Any]:
        """One value per sample: the cosine of all samples' values as one vector (each sample's
        own would say only whether the sign held: 1 for any probability)."""
        if not self.scalar_n or self.scalar_n != self.n:
            return {}
        dot, ea, eb = self.scalar
        cos = 1.0 if ea == 0 and eb == 0 else dot / math.sqrt(ea * eb) if ea * eb > 0 else 0.0
        return {"cosine": float(cos), "cosine_sd": None}

    def _sliced(self) -> dict[str, Any]:
        if self.slices is None or not self.n:
            return {}
        dot, ea, eb = self.slices
        signal = (ea >= slice_floor(ea, self.parts[1])) & (ea > 0)
        if not signal.any():
            return {}
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.nan_to_num(dot / np.sqrt(ea * eb), nan=0.0)
        return {"cosine": float(np.mean(cos[signal])), "cosine_whole": self.cos / self.n,
                "sliced_axis": self.axis, "slices_judged": int(signal.sum())}


@dataclass
class FidelityReport:
    """The result of :func:`compare`; ``to_dict`` is the ``--json`` output."""

    original: str
    candidate: str
    data: str
    num_samples: int
    random_data: bool
    outputs: list[dict[str, Any]]
    accuracy: dict[str, Any] | None = None
    per_layer: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    metric: str = "auto"  # auto, top1 or cosine
    output: str | None = None  # the output the headline looks at (None: the worst, see judged)

    @property
    def judged(self) -> dict[str, Any]:
        """The output the headline and the gates look at: the one named, else the one that moved
        most by its own headline metric (every output of a detector's heads or an RNN's state
        must hold, not only the first), else the first (with labels: the one they label)."""
        named = next((o for o in self.outputs if o["name"] == self.output), None)
        if named is not None or self.accuracy is not None or len(self.outputs) == 1:
            return named or self.outputs[0]
        values = [(self._value(o)[1], i) for i, o in enumerate(self.outputs)]
        finite = [(v, i) for v, i in values if v is not None and math.isfinite(v)]
        return self.outputs[min(finite)[1]] if finite else self.outputs[0]

    def _value(self, o: dict[str, Any]) -> tuple[str, float | None]:
        if self.metric == "top1" or (self.metric == "auto" and o.get("top1_agreement") is not None):
            return "top1_agreement", o.get("top1_agreement")
        return "cosine", o.get("cosine")

    @property
    def headline(self) -> tuple[str, float | None]:
        """(metric, value): top-1 agreement of class scores, else cosine (or as ``metric`` says)."""
        return self._value(self.judged)

    @property
    def drop_bound(self) -> float | None:
        """A one-sided 95 % upper bound on 1 - headline for the samples measured (see .holdout)."""
        from onnxcomp.measure.holdout import disagreement_bound, loss_bound

        metric, value = self.headline
        if value is None:
            return None
        if metric == "top1_agreement":
            return disagreement_bound(round(value * self.num_samples), self.num_samples)
        return loss_bound(1.0 - value, self.judged.get("cosine_sd") or 0.0, self.num_samples)

    @property
    def summary(self) -> str:
        """One line: the headline metrics (and accuracy), plus the random-data label when random."""
        text = self.metrics_line()
        return f"{text}; {RANDOM_NOTE}" if self.random_data else text

    def metrics_line(self) -> str:
        o = self.judged
        parts = []
        if o.get("top1_agreement") is not None and self.metric != "cosine":
            parts.append(f"top-1 agreement {100 * o['top1_agreement']:.2f} %" + (
                "" if o.get("top5_overlap") is None else f" (top-5 overlap {100 * o['top5_overlap']:.2f} %)"))
        sliced = "" if o.get("sliced_axis") is None else (
            f" (mean over the {o['slices_judged']} slices of concatenated axis {o['sliced_axis']} that carry "
            f"signal; whole tensor {o['cosine_whole']:.5f})")
        parts.append(f"cosine {o['cosine']:.5f}{sliced}, SQNR {_db(o['sqnr_db'])}, max abs err {o['max_abs']:.3g}")
        if self.accuracy:
            a = self.accuracy
            parts.append(f"accuracy {100 * a['original']:.2f} % -> {100 * a['candidate']:.2f} % "
                         f"(drop {100 * a['drop']:.2f} pts)")
        which = "" if len(self.outputs) == 1 else f"output {o['name']}" + (
            f" (the furthest moved of {len(self.outputs)})" if self.output is None and self.accuracy is None
            else "") + ": "
        return which + "; ".join(parts)

    @property
    def first_degraded(self) -> str | None:
        """The first tensor in graph order whose SQNR falls below DEGRADED_SQNR_DB."""
        return next((e["tensor"] for e in self.per_layer or [] if e["degraded"]), None)

    @property
    def worst(self) -> str | None:
        """The tensor with the lowest SQNR (None when every compared tensor is identical)."""
        rows = [e for e in self.per_layer or [] if e["sqnr_db"] != math.inf]
        return min(rows, key=lambda e: e["sqnr_db"])["tensor"] if rows else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        name, value = self.headline
        d.update(summary=self.summary, headline={"metric": name, "value": value, "drop_bound95": self.drop_bound},
                 first_degraded=self.first_degraded, worst=self.worst)
        return d


def _db(x: float) -> str:
    return "inf dB" if x == math.inf else f"{x:.1f} dB"
