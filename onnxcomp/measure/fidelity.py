"""Fidelity of a candidate model against the original on the same inputs, streamed over batches.

Per output: top-1 agreement and top-5 overlap (class-score outputs only: rank 2 ``[N, C]`` with
C >= 2), mean per-sample cosine similarity, relative L2 error ``||a-b|| / ||a||``, SQNR in dB
(``10 log10(sum a^2 / sum (a-b)^2)``, inf when equal), max abs error; task accuracy of both
models when labels are given. ``per_layer`` also compares every intermediate tensor present in
both graphs with the same shape, in graph order, and names where fidelity is lost first.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxcomp.measure.capture import Capturer, plan_groups
from onnxcomp.graph.subgraph import activation_tensors
from onnxcomp.data.calibration import RANDOM_NOTE, load_data, load_labels
from onnxcomp.errors import DataError, UnsupportedModelError

DEGRADED_SQNR_DB = 40.0  # below this (1 % relative L2 error) a tensor counts as degraded
PER_LAYER_BYTES = 256 << 20  # per-layer mode splits batches to keep captured tensors below this
HELD_BYTES = 256 << 20  # the original's results kept while its session is dropped and the candidate's runs


class _Metrics:
    """Streaming accumulators for one tensor pair."""

    def __init__(self) -> None:
        self.n = 0
        self.ref2 = self.err2 = self.cos = self.cos2 = self.top5 = 0.0
        self.max_abs = 0.0
        self.new_nonfinite = 0  # values NaN/Inf in the candidate where the original's are finite
        self.ref_nonfinite = 0  # values NaN/Inf in the original
        self.top1 = 0
        self.classification: bool | None = None
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
        na, nb = np.linalg.norm(fa, axis=1), np.linalg.norm(fb, axis=1)
        dot = (fa * fb).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where((na == 0) & (nb == 0), 1.0, dot / (na * nb))
        cos = np.nan_to_num(cos, nan=0.0)
        self.cos += float(cos.sum())
        self.cos2 += float((cos * cos).sum())
        self.shape = (None,) + tuple(a.shape[1:])
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
                "top5_overlap": self.top5 / self.n if cls and self.n else None,
                "cosine": self.cos / self.n if self.n else None, "rel_l2": rel, "sqnr_db": sqnr,
                "cosine_sd": math.sqrt(max(self.cos2 / self.n - (self.cos / self.n) ** 2, 0.0)) if self.n else None,
                "max_abs": self.max_abs, "new_nonfinite": self.new_nonfinite,
                "ref_nonfinite": self.ref_nonfinite}


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
    output: str | None = None  # the output the headline looks at (None: the first)

    @property
    def judged(self) -> dict[str, Any]:
        """The output the headline and the gates look at."""
        return next((o for o in self.outputs if o["name"] == self.output), self.outputs[0])

    @property
    def headline(self) -> tuple[str, float | None]:
        """(metric, value): top-1 agreement of class scores, else cosine (or as ``metric`` says)."""
        o = self.judged
        if self.metric == "top1" or (self.metric == "auto" and o.get("top1_agreement") is not None):
            return "top1_agreement", o.get("top1_agreement")
        return "cosine", o.get("cosine")

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
        parts = [] if len(self.outputs) == 1 else [f"output {o['name']}:"]
        if o.get("top1_agreement") is not None and self.metric != "cosine":
            parts.append(f"top-1 agreement {100 * o['top1_agreement']:.2f} % "
                         f"(top-5 overlap {100 * o['top5_overlap']:.2f} %)")
        parts.append(f"cosine {o['cosine']:.5f}, SQNR {_db(o['sqnr_db'])}, max abs err {o['max_abs']:.3g}")
        if self.accuracy:
            a = self.accuracy
            parts.append(f"accuracy {100 * a['original']:.2f} % -> {100 * a['candidate']:.2f} % "
                         f"(drop {100 * a['drop']:.2f} pts)")
        return "; ".join(parts)

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


def _pair_outputs(a: list[str], b: list[str], notes: list[str]) -> list[tuple[str, str]]:
    if set(a) == set(b):
        return [(n, n) for n in a]
    if len(a) == len(b):
        notes.append("output names differ; outputs matched by position")
        return list(zip(a, b))
    raise UnsupportedModelError(f"the original has outputs {a} but the candidate has {b}",
                                "compare models with the same outputs")


class _Run:
    """State of one comparison: accumulators filled pass by pass (pass 0 also takes the outputs)."""

    def __init__(self, a: Any, b: Any, pairs: list[tuple[str, str]], layers: list[str],
                 labels: np.ndarray | None, threads: int | None, progress: Any = None) -> None:
        self.a, self.b, self.pairs, self.labels, self.threads = a, b, pairs, labels, threads
        self.progress = progress or (lambda *args: None)
        self.pass_index, self.pass_count = 0, 1
        self.out_m = {p: _Metrics() for p in pairs}
        self.layer_m = {t: _Metrics() for t in layers}
        self.skipped: set[str] = set()
        self.correct = np.zeros(2, np.int64)
        self.samples = 0

    def run_pass(self, data: Any, layers: list[str], outputs: bool, chunk: int | None) -> None:
        """One pass over the data capturing ``layers`` (and the outputs), ``chunk`` samples a run.

        The two models never hold memory at once: the original runs first on a stretch of the
        data (its results kept up to HELD_BYTES) and its session is dropped before the
        candidate's is made and runs on the same stretch. Usually the whole data is one stretch.
        """
        parts = iter(self._parts(data, chunk))
        offset, more = 0, True
        while more:
            cap_a = Capturer(self.a, layers, threads=self.threads, include_outputs=outputs, label="the original")
            held, size, more = [], 0, False
            for part in parts:
                ra = cap_a.run(part)
                held.append((part, ra))
                size += sum(v.nbytes for v in ra.values())
                if size >= HELD_BYTES:
                    more = True
                    break
            del cap_a
            if not held:
                break
            cap_b = Capturer(self.b, layers, threads=self.threads, include_outputs=outputs, label="the candidate")
            for part, ra in held:
                m = len(next(iter(part.values())))
                self._take(ra, cap_b.run(part), layers, outputs, offset, m)
                offset += m
                self.progress(offset, self.pass_index, self.pass_count)
            del cap_b, held
        if outputs:
            self.samples = offset

    @staticmethod
    def _parts(data: Any, chunk: int | None):
        from onnxcomp.data.sampling import batch_len, whole

        chunk = whole(chunk, data.unit) if chunk else None  # whole batches of a fixed batch
        for batch in data:
            n = batch_len(batch)
            for start in range(0, n, chunk or n):
                yield {k: v[start:start + (chunk or n)] for k, v in batch.items()}

    def _take(self, ra: dict, rb: dict, layers: list[str], outputs: bool, offset: int, m: int) -> None:
        if outputs:
            self._outputs(ra, rb, offset, m)
        for t in layers:
            if t in self.skipped or ra[t].shape != rb[t].shape or ra[t].dtype.kind != "f":
                self.skipped.add(t)
            else:
                self.layer_m[t].update(ra[t], rb[t])

    def _outputs(self, ra: dict, rb: dict, offset: int, m: int) -> None:
        for (na, nb), acc in self.out_m.items():
            if ra[na].shape != rb[nb].shape:
                raise UnsupportedModelError(
                    f"output {na!r} is {'x'.join(map(str, ra[na].shape))} in the original but "
                    f"{'x'.join(map(str, rb[nb].shape))} in the candidate", "compare models with the same outputs")
            acc.update(ra[na], rb[nb])
        if self.labels is not None:
            self.correct += _correct(ra[self.pairs[0][0]], rb[self.pairs[0][1]], self.labels, offset, m)

    def layer_rows(self, degraded_db: float) -> list[dict[str, Any]]:
        rows = []
        for t, acc in self.layer_m.items():
            if t in self.skipped or not acc.n:
                continue
            r = acc.result()
            rows.append({"tensor": t, **{k: r[k] for k in ("cosine", "rel_l2", "sqnr_db", "max_abs")},
                         "degraded": r["sqnr_db"] < degraded_db})
        return rows


def _common_layers(a: Any, b: Any, pairs: list[tuple[str, str]]) -> list[str]:
    in_b = set(activation_tensors(b.proto))
    outs = {p[0] for p in pairs}
    return [t for t in activation_tensors(a.proto) if t in in_b and t not in outs]


def _model(model: Any) -> Any:
    """A Model (a path is loaded lazily: onnxruntime reads its big tensors from their files)."""
    from onnxcomp.io.model import as_model
    from onnxcomp.io.sessions import Written

    return model if isinstance(model, Written) else as_model(model)


def compare(original: Any, candidate: Any, data: Any = None, *, labels: Any = None,
            per_layer: bool = False, threads: int | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 16,
            num_samples: int | None = None, degraded_db: float = DEGRADED_SQNR_DB,
            progress: Any = None, metric: str = "auto", output: str | None = None) -> FidelityReport:
    """Run both models on the same inputs and measure how far the candidate's outputs moved.

    With ``per_layer``, intermediate tensors are captured in groups (one pass over the data
    each) and batches are split, so captured tensors stay within ~PER_LAYER_BYTES.
    ``progress(samples_done, pass_index, pass_count)`` is called after every run. ``metric`` and
    ``output`` choose the headline (see :class:`FidelityReport`).
    """
    a, b = _model(original), _model(candidate)
    data = load_data(data, a.proto, input_shapes=input_shapes, batch_size=batch_size,
                     num_samples=num_samples)
    labels = data.labels if labels is None and not data.random else labels
    if labels is not None:
        if data.random:
            raise DataError("labels were given with random data", "pass the labelled samples with --data")
        labels = load_labels(labels)
    notes: list[str] = []
    pairs = _pair_outputs([o.name for o in a.graph.output], [o.name for o in b.graph.output], notes)
    layers = _common_layers(a, b, pairs) if per_layer else []
    run = _Run(a, b, pairs, layers, labels, threads, progress)
    from onnxcomp.io.sessions import low_memory_sessions

    with low_memory_sessions(a.proto, b.proto):  # both sessions alike; big ones without constant folding
        if not layers:
            run.run_pass(data, [], True, None)
        else:
            first = next(iter(data), None)
            shapes = {k: v.shape for k, v in (first or {}).items()}
            budget = PER_LAYER_BYTES // 2  # per model
            groups = plan_groups(a.proto, layers, shapes, budget)
            run.pass_count = len(groups)
            for i, (group, size) in enumerate(groups):
                run.pass_index = i
                run.run_pass(data, group, i == 0, max(1, budget // max(1, size)))
    if run.samples == 0:
        raise DataError(f"{data.origin} yielded no samples", "give data with at least one sample")
    outputs = [{"name": na, "shape": list(acc.shape or ()), **acc.result()} for (na, _), acc in run.out_m.items()]
    accuracy = None
    if labels is not None and outputs[0]["top1_agreement"] is not None:
        acc_a, acc_b = run.correct / run.samples
        accuracy = {"output": outputs[0]["name"], "original": float(acc_a), "candidate": float(acc_b),
                    "drop": float(acc_a - acc_b), "n": run.samples}
    elif labels is not None:
        notes.append("labels ignored: the first output is not class scores [N, C]")
    rows = run.layer_rows(degraded_db) if per_layer else None
    if run.skipped:
        notes.append(f"{len(run.skipped)} intermediate tensor(s) skipped (shape or dtype differs)")
    if output is not None and output not in {o["name"] for o in outputs}:
        raise DataError(f"the model has no output {output!r} to judge",
                        f"choose one of: {', '.join(o['name'] for o in outputs)}")
    report = FidelityReport(original=str(a.path or "original"), candidate=str(b.path or "candidate"),
                            data=data.description, num_samples=run.samples, random_data=data.random,
                            outputs=outputs, accuracy=accuracy, per_layer=rows, notes=notes, metric=metric,
                            output=output)
    if report.headline[1] is None:
        raise DataError(f"output {report.judged['name']!r} is not class scores [N, C], so it has no top-1 "
                        "agreement", "judge it by --metric cosine")
    return report


def _correct(a: np.ndarray, b: np.ndarray, labels: np.ndarray, offset: int, m: int) -> np.ndarray:
    y = labels[offset:offset + m]
    if len(y) < m:
        raise DataError(f"there are {len(labels)} labels for more samples than that",
                        "give one label per sample")
    return np.array([(a.argmax(1) == y).sum(), (b.argmax(1) == y).sum()])
