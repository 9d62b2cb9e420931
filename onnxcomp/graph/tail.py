"""Outputs that cannot be compared element for element: after a NonZero or NonMaxSuppression
(their shape depends on the data), or not tensors at all (sklearn-onnx's ZipMap: a list of dicts).

A detector exported with its NMS (YOLO "end-to-end" exports, torchvision's detection models)
writes as many boxes as it finds: the compressed model finds a few more or fewer, so its outputs
cannot be compared element for element with the original's (every calibrated command crashed on
such a model, and the data-free ones refused it). The passes work on the model's *head* instead,
whose outputs are the tensors those ops read (the scores and boxes before the NMS), and the
*tail* (the data-dependent ops and everything after them) is put back unchanged at the end.
Fidelity is measured on the head of both models the same way (:func:`head`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxcomp.graph.nested import subgraph_inputs

DYNAMIC = frozenset({"NonZero", "NonMaxSuppression", "Compress", "Unique"})  # output size set by values
SEQUENCES = frozenset({"ZipMap", "SequenceConstruct", "SplitToSequence", "SequenceInsert", "SequenceErase",
                       "SequenceEmpty", "Optional"})  # outputs that are not tensors (sklearn-onnx's ZipMap)
LOGIC = frozenset({"Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor",
                   "IsNaN", "IsInf"})  # boolean masks: measured at what they test


@dataclass
class Tail:
    """What :func:`split` took out of the model, to put back with :func:`attach`."""

    nodes: list[onnx.NodeProto]
    outputs: list[onnx.ValueInfoProto]  # the graph's outputs as they were
    initializers: list[onnx.TensorProto] = field(default_factory=list)  # read by the tail only
    frontier: list[str] = field(default_factory=list)  # the head's outputs the tail reads
    dynamic: list[str] = field(default_factory=list)  # the data-dependent op types found


def _roots(graph: onnx.GraphProto) -> list[int]:
    """Nodes whose outputs cannot be compared element for element: sized by values, or not tensors."""
    odd = {o.name for o in graph.output if not o.type.HasField("tensor_type") and o.type.WhichOneof("value")}
    return [i for i, n in enumerate(graph.node) if n.op_type in DYNAMIC | SEQUENCES or odd & set(n.output)]


def _readers(graph: onnx.GraphProto) -> dict[str, set[int]]:
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(graph.node):
        for x in list(n.input) + sorted(subgraph_inputs(n)):
            readers.setdefault(x, set()).add(i)
    return readers


def _tail_indices(graph: onnx.GraphProto) -> set[int]:
    todo = _roots(graph)
    if not todo:
        return set()
    readers = _readers(graph)
    seen = set(todo)
    while todo:
        for o in graph.node[todo.pop()].output:
            for j in readers.get(o, []):
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
    made = {o for i in seen for o in graph.node[i].output}
    params = {d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    if not any(_sized_by_data(o, params) for o in graph.output if o.name in made):
        return set()  # a NonZero inside whose result is reduced away: every output keeps its shape
    _grow_back(graph, seen, readers)
    return seen


def _sized_by_data(out: onnx.ValueInfoProto, params: set[str]) -> bool:
    """Whether an output's declared type leaves its size to the data: not a tensor, no shape, or a
    dimension that is neither a number nor one of the inputs' named dimensions."""
    if not out.type.HasField("tensor_type") or not out.type.tensor_type.HasField("shape"):
        return True
    return any(not d.HasField("dim_value") and d.dim_param not in params for d in out.type.tensor_type.shape.dim)


def _grow_back(graph: onnx.GraphProto, idx: set[int], readers: dict[str, set[int]]) -> None:
    """Comparisons and logic feeding only the tail join it: the head then ends at the float
    tensors they test (``NonZero(scores > t)`` is measured at the scores, not at a mask)."""
    outs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        for i, n in enumerate(graph.node):
            if i in idx or n.op_type not in LOGIC:
                continue
            users = set().union(*(readers.get(o, set()) for o in n.output))
            if users and users <= idx and not outs & set(n.output):
                idx.add(i)
                changed = True


def has_tail(model: onnx.ModelProto) -> bool:
    """Whether :func:`split` would cut something (cheap when there is no data-dependent op)."""
    return bool(_tail_indices(model.graph))


def split(model: onnx.ModelProto) -> Tail | None:
    """Cut the tail off ``model`` in place (its outputs become the head's outputs, then the
    tensors the tail reads); None when no output depends on a data-dependent op."""
    g = model.graph
    idx = _tail_indices(g)
    if not idx:
        return None
    tail_nodes = [g.node[i] for i in sorted(idx)]
    produced_tail = {o for n in tail_nodes for o in n.output}
    head_nodes = [n for i, n in enumerate(g.node) if i not in idx]
    produced_head = {o for n in head_nodes for o in n.output if o}
    tail_reads = {x for n in tail_nodes for x in list(n.input) + sorted(subgraph_inputs(n)) if x}
    head_reads = {x for n in head_nodes for x in list(n.input) + sorted(subgraph_inputs(n)) if x}
    kept_outputs = [o for o in g.output if o.name not in produced_tail]
    frontier = sorted((tail_reads & produced_head) - {o.name for o in kept_outputs})
    if not kept_outputs and not frontier:
        return None  # the whole graph is data-dependent: nothing to measure apart
    typed = {v.name: v for v in list(g.value_info)}
    stash = Tail([_copy(n) for n in tail_nodes], [_copy(o) for o in g.output], frontier=frontier,
                 dynamic=sorted({g.node[i].op_type for i in _roots(g)}))
    only_tail = (tail_reads - head_reads) - produced_head
    for t in [t for t in g.initializer if t.name in only_tail]:
        stash.initializers.append(_copy(t))
        g.initializer.remove(t)
    del g.node[:]
    g.node.extend(head_nodes)
    del g.output[:]
    g.output.extend(kept_outputs)
    g.output.extend(_copy(typed[n]) if n in typed else onnx.ValueInfoProto(name=n) for n in frontier)
    return stash


def attach(model: onnx.ModelProto, stash: Tail) -> None:
    """Put the tail back after the (compressed) head, and the graph's outputs as they were."""
    g = model.graph
    g.node.extend(stash.nodes)
    g.initializer.extend(stash.initializers)
    del g.output[:]
    g.output.extend(stash.outputs)


def head(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its tail (``model`` itself when it has none)."""
    if not has_tail(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out if split(out) is not None else model


def note(stash: Tail) -> str:
    """One line for the report: which outputs, where they are measured, what stays as it was."""
    made = {x for n in stash.nodes for x in n.output}
    outs = ", ".join(o.name for o in stash.outputs if o.name in made)
    weights = sum(1 for t in stash.initializers if len(t.dims) >= 2)
    more = f" ...(+{len(stash.frontier) - 4})" if len(stash.frontier) > 4 else ""
    why = "their shape depends on the data" if DYNAMIC & set(stash.dynamic) else "they are not tensors"
    return (f"output(s) {outs}: {why} (after {', '.join(stash.dynamic)}); fitted and "
            f"measured at the tensors those ops read ({', '.join(stash.frontier[:4])}{more}); the "
            f"{len(stash.nodes)} node(s) from there on are kept as they were"
            + (f", with the {weights} weight(s) they read" if weights else ""))


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out
