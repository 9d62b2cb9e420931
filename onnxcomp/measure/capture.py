"""Capture intermediate tensors (layer inputs/outputs) through onnxruntime with bounded memory.

The chosen tensors become extra graph outputs of a temporary copy (the caller's model is never
touched); one session per call is reused for every batch. Output types come from ONNX shape
inference where it knows them; tensors it cannot type are declared without a type, which
onnxruntime accepts and fills in (a guessed FLOAT would break integer tensors).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxcomp.errors import ConfigError, DataError
from onnxcomp.graph.subgraph import expose, graph_inputs
from onnxcomp.io.model import Model, proto_of
from onnxcomp.report.tables import fmt_bytes

DEFAULT_COLLECT_BYTES = 1 << 30  # collect() refuses to hold more than 1 GB of activations


def _proto(model: Any) -> onnx.ModelProto:
    """The proto of a Model, a proto, a written model or a path (big tensors stay on disk)."""
    from onnxcomp.io.sessions import Written

    if isinstance(model, Written):
        return model.proto
    return proto_of(model)


def bytes_per_sample(model: onnx.ModelProto, names: Sequence[str],
                     sample_shapes: dict[str, tuple[int, ...]]) -> dict[str, int | None]:
    """Estimated bytes of one sample of each tensor (shape inference at batch 1; None = unknown)."""
    from onnxcomp.graph.shapes import infer_shapes

    try:
        shapes = infer_shapes(model, input_shapes={k: (1,) + tuple(s[1:]) for k, s in sample_shapes.items()})
    except Exception:  # noqa: BLE001 - estimation only: unknown sizes are handled by the caller
        shapes = {}
    out: dict[str, int | None] = {}
    for name in names:
        s = shapes.get(name)
        known = s is not None and all(isinstance(d, int) and d > 0 for d in s)
        out[name] = int(np.prod(s, dtype=np.int64)) * 4 if known else None
    return out


def plan_groups(model: onnx.ModelProto, names: Sequence[str], sample_shapes: dict[str, tuple[int, ...]],
                max_bytes: int) -> list[tuple[list[str], int]]:
    """Split ``names`` (in order) into groups whose tensors for one sample fit in ``max_bytes``.

    Capturing group by group (one pass over the data each) bounds memory when all intermediate
    tensors of a big model would not fit at once. Returns (names, bytes per sample) per group.
    """
    sizes = bytes_per_sample(model, names, sample_shapes)
    known = [v for v in sizes.values() if v]
    default = max(known) if known else max(1, max_bytes // 64)
    groups: list[tuple[list[str], int]] = []
    cur: list[str] = []
    cur_bytes = 0
    for name in names:
        size = sizes[name] or default
        if cur and cur_bytes + size > max_bytes:
            groups.append((cur, cur_bytes))
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += size
    if cur:
        groups.append((cur, cur_bytes))
    return groups


class Capturer:
    """One session over a copy of the model that returns the chosen tensors for each batch."""

    def __init__(self, model: Any, names: Sequence[str], *, threads: int | None = None,
                 include_outputs: bool = False, provider: str | None = None, label: str = "the model") -> None:
        from onnxcomp.io.sessions import DEFAULT_PROVIDER, Written, session

        proto = _proto(model)
        self.label = str(getattr(model, "path", None) or label)
        self.inputs = set(graph_inputs(proto))
        self.names = list(dict.fromkeys(names))
        graph_outputs = [o.name for o in proto.graph.output]
        outputs = graph_outputs if include_outputs else []
        self.fetch = list(dict.fromkeys([n for n in self.names if n not in self.inputs] + outputs))
        extra = [n for n in self.fetch if n not in graph_outputs]
        src = expose(proto, extra) if extra else model if isinstance(model, (Model, Written)) else proto
        self.sess = session(src, threads=threads, provider=provider or DEFAULT_PROVIDER)
        self._feeds = [i.name for i in self.sess.get_inputs()]

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: batch[k] for k in self._feeds if k in batch}
        try:
            out = dict(zip(self.fetch, self.sess.run(self.fetch, feed))) if self.fetch else {}
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types: report on one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"onnxruntime failed to run {self.label} on this data: {first}",
                            "check that the data fits the model's inputs") from None
        for name in self.names:
            if name in self.inputs:
                out[name] = batch[name]
        return out


def check_runs(model: Any, data: Iterable[dict[str, np.ndarray]], *, threads: int | None = None) -> None:
    """Run ``model`` on the first batch of ``data``: onnxruntime's refusal of the data (a shape the
    export fixed, an input of the wrong type) is one line before any long work, not a traceback."""
    first = next(iter(data), None)
    if first is None:
        return
    try:
        Capturer(model, [], threads=threads, include_outputs=True).run(first)
    except DataError as exc:
        ran = max((np.shape(v)[0] for v in first.values() if np.ndim(v)), default=1)
        raise DataError(exc.problem, f"check that the data fits the model's inputs (an export can fix the batch "
                                     f"size it was traced with: pass --batch-size with that size; {ran} samples "
                                     "ran at once)") from None


def capture(model: Any, tensor_names: Sequence[str], data: Iterable[dict[str, np.ndarray]], *,
            threads: int | None = None, include_outputs: bool = False,
            max_bytes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{tensor_name: array}`` per batch for the chosen tensors (plus outputs if asked).

    With ``max_bytes``, batches are split so one result dict stays below that many bytes (the
    size is measured on the first slice), in whole batches of the model's fixed batch, if any.
    """
    from onnxcomp.data.sampling import batch_len, batch_unit

    cap = Capturer(model, tensor_names, threads=threads, include_outputs=include_outputs)
    unit = batch_unit(_proto(model)) if max_bytes is not None else 1
    chunk = None
    for batch in data:
        if max_bytes is None:
            yield cap.run(batch)
            continue
        start = 0
        n = batch_len(batch)
        while start < n:
            size = chunk or unit
            out = cap.run({k: v[start:start + size] for k, v in batch.items()})
            if chunk is None:
                per_slice = max(1, sum(a.nbytes for a in out.values()))
                chunk = max(1, int(max_bytes // per_slice)) * unit
            start += size
            yield out


def collect(model: Any, names: Sequence[str], data: Iterable[dict[str, np.ndarray]],
            max_samples: int | None = None, *, threads: int | None = None,
            max_bytes: int = DEFAULT_COLLECT_BYTES) -> dict[str, np.ndarray]:
    """Capture ``names`` and concatenate along axis 0, up to ``max_samples`` and ``max_bytes``."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    total = count = 0
    for out in capture(model, names, data, threads=threads):
        n = len(next(iter(out.values())))
        if max_samples is not None:
            n = min(n, max_samples - count)
        total += sum(a[:n].nbytes for a in out.values())
        if total > max_bytes:
            raise ConfigError(f"collecting {len(names)} tensor(s) would exceed {fmt_bytes(max_bytes)} "
                              f"of memory after {count} samples",
                              "use fewer calibration samples (--num-samples / max_samples) or raise max_bytes")
        for k in names:
            parts[k].append(np.array(out[k][:n]))
        count += n
        if max_samples is not None and count >= max_samples:
            break
    if count == 0:
        raise ConfigError("no calibration samples were captured", "give data with at least one sample")
    return {k: np.concatenate(v) for k, v in parts.items()}
