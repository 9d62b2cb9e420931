"""A model run segment by segment over the calibration batches, keeping only the live tensors.

A :class:`Stream` computes the tensors it is asked for by running the smallest part of the graph
that produces them from what it already holds (graph inputs, tensors kept from earlier
segments). Every node runs once per stream: a segment's session is built once, run on every
batch, and dropped; the tensors later nodes still read (residual branches, Concat inputs) are
kept, all others forgotten. The graph may change between two calls (a pass rewrote the layer it
just solved): segments are cut from the graph as it is when they run.

Nodes whose inputs are all constants (Constant, ConstantOfShape, shape arithmetic on weights) are
not part of the stream: they are copied into every segment that reads them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxcomp.graph.nested import subgraph_inputs
from onnxcomp.io.sessions import session
from onnxcomp.io.temp import temp_prefix

CAP_FRACTION = 0.25  # kept tensors above this fraction of free memory go to memory-mapped files


class Budget:
    """The memory the kept tensors of one or more streams may take: above ``cap_bytes`` new arrays
    become memory-mapped files in a temporary folder (removed on :meth:`close`)."""

    def __init__(self, cap_bytes: int | None = None) -> None:
        if cap_bytes is None:
            from onnxcomp.io.checks import available_memory

            cap_bytes = int(CAP_FRACTION * available_memory())
        self.cap = cap_bytes
        self.bytes = self.peak = self.spilled = 0
        self._tmp: tempfile.TemporaryDirectory | None = None

    def keep(self, value: np.ndarray) -> np.ndarray:
        if self.bytes + value.nbytes > self.cap and value.nbytes > 0:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix=temp_prefix("onnxcomp-stream"))
            self.spilled += 1
            path = Path(self._tmp.name) / f"t{self.spilled}.npy"
            out = np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=value.shape)
            out[...] = value
            value = out
        self.bytes += value.nbytes
        self.peak = max(self.peak, self.bytes)
        return value

    def release(self, value: np.ndarray) -> None:
        self.bytes -= value.nbytes

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class Store:
    """One stream's kept tensors, one array per batch, within a shared :class:`Budget`."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget if budget is not None else Budget()
        self.arrays: dict[str, list[np.ndarray]] = {}

    def put(self, name: str, batch: int, value: np.ndarray) -> None:
        parts = self.arrays.setdefault(name, [])
        assert len(parts) == batch, (name, batch, len(parts))
        parts.append(self.budget.keep(value))

    def drop(self, name: str) -> None:
        for a in self.arrays.pop(name, []):
            self.budget.release(a)

    def close(self) -> None:
        for name in list(self.arrays):
            self.drop(name)


def constant_tensors(graph: onnx.GraphProto, inputs: set[str]) -> set[str]:
    """Node outputs computed from constants only (no graph input upstream)."""
    live = set(inputs)
    const = set()
    for node in graph.node:
        reads = [i for i in node.input if i] + sorted(subgraph_inputs(node))
        if any(i in live for i in reads):
            live.update(o for o in node.output if o)
        else:
            const.update(o for o in node.output if o)
    return const


class Stream:
    """One model run over the calibration batches, segment by segment (see the module doc)."""

    def __init__(self, model: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]], *,
                 threads: int | None = None, store: Store | None = None, label: str = "the model") -> None:
        self.model, self.batches, self.threads, self.label = model, list(batches), threads, label
        self.store = store if store is not None else Store()
        self.inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
        self.done: set[str] = set(self.inputs)
        self.segments = self.runs = 0

    # --- what the graph looks like now -------------------------------------------------------
    def _maps(self) -> tuple[dict[str, int], dict[str, list[int]], set[str], set[str]]:
        g = self.model.graph
        producer, consumers = {}, {}
        for i, node in enumerate(g.node):
            for o in node.output:
                if o:
                    producer[o] = i
            for x in list(node.input) + sorted(subgraph_inputs(node)):
                if x:
                    consumers.setdefault(x, []).append(i)
        inits = {t.name for t in g.initializer}
        return producer, consumers, inits, constant_tensors(g, self.inputs)

    def get(self, name: str) -> list[np.ndarray]:
        """The tensor's value per batch (computing it first when needed)."""
        if name not in self.store.arrays and name not in self.inputs:
            self.advance([name])
        if name in self.inputs:
            return [b[name] for b in self.batches]
        return self.store.arrays[name]

    def advance(self, wanted: Sequence[str], keep: Sequence[str] = ()) -> None:
        """Compute ``wanted`` (running only the nodes not run yet that they need) and keep them,
        the tensors later nodes read, and ``keep``; forget the tensors nothing reads any more."""
        producer, consumers, inits, const = self._maps()
        missing = [t for t in wanted if t not in self.done and t not in self.store.arrays]
        if missing:
            nodes = self._segment(missing, producer, inits, const)
            self._run(nodes, set(wanted) | set(keep), consumers, inits, const)
        self._forget(consumers, set(wanted) | set(keep))

    def _segment(self, wanted: list[str], producer: dict, inits: set, const: set) -> list[int]:
        """Indices (graph order) of the nodes to run for ``wanted``, constant nodes included."""
        g = self.model.graph
        chosen: set[int] = set()
        stack = list(wanted)
        while stack:
            t = stack.pop()
            if not t or t in inits or t in self.inputs or (t in self.done and t not in const):
                continue
            i = producer.get(t)
            if i is None or i in chosen:
                continue
            chosen.add(i)
            node = g.node[i]
            stack.extend(x for x in list(node.input) + sorted(subgraph_inputs(node)) if x)
        return sorted(chosen)

    def _run(self, idx: list[int], wanted: set[str], consumers: dict, inits: set, const: set) -> None:
        g = self.model.graph
        nodes = [g.node[i] for i in idx]
        produced = {o for n in nodes for o in n.output if o}
        reads = {x for n in nodes for x in list(n.input) + sorted(subgraph_inputs(n)) if x}
        feeds = sorted(reads - produced - inits)
        members = set(idx)
        outputs = sorted(t for t in produced - const
                         if t in wanted or not self._all_done(consumers.get(t, []), members))
        sub = self._submodel(nodes, feeds, outputs, reads & inits)
        if outputs:
            sess = session(sub, threads=self.threads)
            names = [o.name for o in sess.get_outputs()]
            for b, batch in enumerate(self.batches):
                feed = {x: batch[x] if x in self.inputs else self.store.arrays[x][b] for x in feeds}
                for name, value in zip(names, sess.run(names, feed)):
                    self.store.put(name, b, value)
                self.runs += 1
            self.segments += 1
        self.done |= produced - const

    def _all_done(self, users: list[int], members: set[int]) -> bool:
        """Whether every node reading a tensor runs in this segment or ran before."""
        g = self.model.graph
        return all(i in members or all(o in self.done for o in g.node[i].output if o) for i in users)

    def _submodel(self, nodes: list[onnx.NodeProto], feeds: list[str], outputs: list[str],
                  weights: set[str]) -> onnx.ModelProto:
        src = self.model
        m = onnx.ModelProto()
        m.ir_version = src.ir_version
        m.opset_import.extend(src.opset_import)
        m.functions.extend(src.functions)
        g = m.graph
        g.name = f"{src.graph.name}_segment"
        g.node.extend(nodes)
        g.initializer.extend(t for t in src.graph.initializer if t.name in weights)
        g.sparse_initializer.extend(t for t in src.graph.sparse_initializer if t.values.name in weights)
        for k, x in enumerate(feeds):  # dims named apart: equal names would tell onnxruntime they are equal
            value = self.batches[0][x] if x in self.inputs else self.store.arrays[x][0]
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            g.input.append(helper.make_tensor_value_info(x, elem, [f"in{k}_{i}" for i in range(value.ndim)]))
        g.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
        return m

    def _forget(self, consumers: dict, keep: set[str]) -> None:
        g = self.model.graph
        for name in list(self.store.arrays):
            if name in keep:
                continue
            users = consumers.get(name, [])
            if all(all(o in self.done for o in g.node[i].output if o) for i in users):
                self.store.drop(name)

    def recompute(self, names: Sequence[str]) -> None:
        """Forget ``names`` (and what was computed from them) so they are computed again from the
        graph as it is now (after a pass rewrote the node that produces them)."""
        for name in names:
            self.store.drop(name)
            self.done.discard(name)

    def close(self) -> None:
        self.store.close()


def run_counts(*streams: Any) -> dict[str, int]:
    """How many segments and batch runs the streams made (for the reports)."""
    return {"segments": sum(s.segments for s in streams), "batch_runs": sum(s.runs for s in streams)}
