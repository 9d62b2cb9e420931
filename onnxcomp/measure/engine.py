"""The streaming reconstruction engine: the one way a calibrated pass sees activations.

A pass walks the layers it compresses in topological order (:meth:`Engine.walk`). Two streams run
the calibration batches through the graph segment by segment (:mod:`onnxcomp.measure.streams`):
the *reference* (the model before the pass, untouched) and the *work* model (the one being
compressed, with every layer solved so far). At each layer the pass gets a :class:`Site`: the
layer's input in both streams and, on demand, its output in both; it accumulates the statistics
its solver needs (:mod:`onnxcomp.measure.stats`), writes the new weights (or rewrites the node,
keeping its output name), and the walk moves on. No prefix is ever rerun: every node runs once
per stream (plus once more for a layer whose output a pass reads after changing it), so a
calibrated pass costs a bounded number of model passes whatever the depth.

Memory: only the tensors later nodes still read are kept, one array per batch, memory-mapped to
a temporary file above a quarter of the free memory; statistics are accumulated, not stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx

from onnxcomp.measure.streams import Budget, Store, Stream, run_counts

# the input slot a compute node multiplies its weight with, by the weight's role
ACTIVATION_SLOT = {"conv": 0, "convtranspose": 0, "gemm_b": 0, "matmul_b": 0, "gemm_a": 1, "matmul_a": 1}


@dataclass
class Site:
    """One layer to solve: its node in the work model and its tensors in both streams."""

    name: str  # the layer's output tensor (kept by every rewrite)
    slot: int  # the activation input the weight meets
    engine: "Engine"

    @property
    def node(self) -> onnx.NodeProto:
        """The node writing ``name`` in the work model now."""
        return self.engine.node_of(self.name)

    @property
    def input_name(self) -> str:
        return self.node.input[self.slot]

    def x(self) -> list[np.ndarray]:
        """The layer's input in the work model (every layer before it solved), per batch."""
        return self.engine.work.get(self.input_name)

    def x_ref(self) -> list[np.ndarray] | None:
        """The layer's input in the reference model, per batch (None without a reference, or when
        the tensor does not exist there)."""
        return self.engine.ref_tensor(self.input_name)

    def y_ref(self) -> list[np.ndarray] | None:
        """The layer's output in the reference model, per batch."""
        return self.engine.ref_tensor(self.name)

    def y(self) -> list[np.ndarray]:
        """The layer's output in the work model with its current weights, per batch (its inputs are
        kept, so the layer can run again after :meth:`changed`: an LSTM's initial state too)."""
        work = self.engine.work
        if self.name not in work.store.arrays:
            work.advance([self.name], keep=[x for x in self.node.input if x])
        return work.store.arrays[self.name]

    def changed(self) -> None:
        """The layer's weights changed after :meth:`y` was read: compute it again next time."""
        self.engine.work.recompute([self.name])


class Engine:
    """Two streams over the same calibration batches and a walk over the layers to solve."""

    def __init__(self, model: onnx.ModelProto, reference: onnx.ModelProto | None, data: Any, *,
                 threads: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                 label: str = "layers", cap_bytes: int | None = None, record: dict | None = None) -> None:
        self.batches = [dict(b) for b in data]
        self.record = record  # a report's settings: the walk's counts are added under "engine" on close
        self.budget = Budget(cap_bytes)
        self.work = Stream(model, self.batches, threads=threads, store=Store(self.budget), label="the model")
        self.ref = None
        self.ref_names: set[str] = set()
        if reference is not None:
            self.ref = Stream(reference, self.batches, threads=threads, store=Store(self.budget),
                              label="the reference model")
            self.ref_names = {o for n in reference.graph.node for o in n.output} | self.ref.inputs
        self.progress, self.label = progress, label

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches) if self.batches else 0

    def node_of(self, name: str) -> onnx.NodeProto:
        return next(n for n in self.work.model.graph.node if name in n.output)

    def ref_tensor(self, name: str) -> list[np.ndarray] | None:
        if self.ref is None or name not in self.ref_names:
            return None
        return self.ref.get(name)

    def order(self, names: Sequence[str]) -> list[str]:
        """``names`` (layer output tensors) in graph order."""
        index = {o: i for i, n in enumerate(self.work.model.graph.node) for o in n.output}
        return sorted((n for n in dict.fromkeys(names) if n in index), key=index.__getitem__)

    def walk(self, layers: Sequence[tuple[str, int]]) -> Iterator[Site]:
        """Yield a Site per (output tensor, activation slot), in graph order; between two sites the
        pass edits the model. Both streams advance only as far as the next layer needs."""
        slots = dict(layers)
        order = self.order(list(slots))
        for k, name in enumerate(order):
            site = Site(name, slots[name], self)
            x = site.input_name
            self.work.advance([x])
            if self.ref is not None:
                wanted = [t for t in (x, name) if t in self.ref_names]
                if wanted:
                    self.ref.advance(wanted)
            yield site
            if self.progress is not None:
                self.progress(self.label, k + 1, len(order))

    def each(self, items: Sequence[tuple[Any, str, int | None]]) -> Iterator[tuple[Any, Site | None]]:
        """``(key, site)`` for each ``(key, layer output, slot)`` in graph order; ``slot`` None means the
        layer needs no activations (its site is None and the streams do not advance for it)."""
        index = {o: i for i, n in enumerate(self.work.model.graph.node) for o in n.output}
        ordered = sorted(items, key=lambda it: index.get(it[1], len(index)))
        walk = self.walk([(out, slot) for _, out, slot in ordered if slot is not None])
        for key, out, slot in ordered:
            yield key, (next(walk) if slot is not None else None)
        for _ in walk:  # let the walk finish (progress)
            pass

    def counts(self) -> dict[str, int]:
        """Segments and batch runs made so far, and the peak bytes of kept tensors."""
        streams = [self.work] + ([self.ref] if self.ref is not None else [])
        return {**run_counts(*streams), "peak_bytes": self.budget.peak, "samples": self.samples}

    def close(self) -> None:
        if self.record is not None:
            self.record.setdefault("engine", []).append({"walk": self.label, **self.counts()})
            self.record = None
        for s in (self.work, self.ref):
            if s is not None:
                s.close()
        self.budget.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
