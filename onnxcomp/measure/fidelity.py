"""Fidelity of a candidate model against the original on the same inputs, streamed over batches.

Per output: top-1 agreement and top-5 overlap (class-score outputs only: rank 2 ``[N, C]`` with
C >= 2), mean per-sample cosine similarity, relative L2 error ``||a-b|| / ||a||``, SQNR in dB
(``10 log10(sum a^2 / sum (a-b)^2)``, inf when equal), max abs error; task accuracy of both
models when labels are given. ``per_layer`` also compares every intermediate tensor present in
both graphs with the same shape, in graph order, and names where fidelity is lost first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from onnxcomp.measure.capture import Capturer, plan_groups
from onnxcomp.graph.subgraph import activation_tensors
from onnxcomp.data.calibration import load_data, load_labels
from onnxcomp.io.memory import release
from onnxcomp.errors import DataError, UnsupportedModelError
from onnxcomp.measure.fidelity_report import DEGRADED_SQNR_DB, FidelityReport, OutputMetrics
from onnxcomp.measure.outputs import feature_outputs, output_parts

PER_LAYER_BYTES = 256 << 20  # per-layer mode splits batches to keep captured tensors below this
HELD_BYTES = 256 << 20  # the original's results kept while its session is dropped and the candidate's runs


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
                 labels: np.ndarray | None, threads: int | None, progress: Any = None,
                 metric: str = "auto") -> None:
        self.a, self.b, self.pairs, self.labels, self.threads = a, b, pairs, labels, threads
        self.progress = progress or (lambda *args: None)
        self.pass_index, self.pass_count = 0, 1
        names = [o.name for o in a.proto.graph.output]
        parts = dict(zip(names, output_parts(a.proto)))
        # --metric top1 asks for the argmax of whatever the output holds
        features = dict(zip(names, feature_outputs(a.proto) if metric != "top1" else [False] * len(names)))
        self.out_m = {p: OutputMetrics(parts.get(p[0]), features.get(p[0], False)) for p in pairs}
        self.layer_m = {t: OutputMetrics() for t in layers}
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
            release()  # the original's run freed its tensors into the heap: the candidate's are mapped anew
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
    from onnxcomp.graph import tail
    from onnxcomp.io.model import Model

    if data.layout:  # inputs with samples off axis 0: both run samples-first, as the data is held
        from onnxcomp.graph.layout import adapt_for

        a, b = (Model(adapt_for(m.proto, data), m.path) for m in (a, b))
    if tail.has_tail(a.proto):  # outputs sized by the data (after an NMS): compared where they are not
        a, b = (Model(tail.head(m.proto), m.path) for m in (a, b))
    labels = data.labels if labels is None and not data.random else labels
    if labels is not None:
        if data.random:
            raise DataError("labels were given with random data", "pass the labelled samples with --data")
        labels = load_labels(labels)
    notes: list[str] = []
    pairs = _pair_outputs([o.name for o in a.graph.output], [o.name for o in b.graph.output], notes)
    layers = _common_layers(a, b, pairs) if per_layer else []
    run = _Run(a, b, pairs, layers, labels, threads, progress, metric)
    from onnxcomp.io.sessions import low_memory_sessions

    runs = -(-data.num_samples // max(1, data.batch_size)) if data.num_samples and not layers else None
    with low_memory_sessions(a.proto, b.proto, runs=runs):  # both alike; big or brief ones without constant folding
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
