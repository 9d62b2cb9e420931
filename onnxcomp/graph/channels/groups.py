"""Coupled-channel groups: which channels of which tensors must be removed together.

Every output channel of a producer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) gets
a global channel id. Walking the graph in order, each tensor gets a :class:`Layout`: its channel
axis and the id of the channel at every position along it. Ops that pass channels through copy
the layout (BatchNorm, activations, pooling, Resize, Pad, depthwise conv...), Concat / Split /
Slice / Flatten map positions, and elementwise ops between two tensors (residual Add, the Mul of
a squeeze-excitation block) *tie* their ids. Tied ids form a **unit** (removed together); units of
producers tied to each other form a **group** (pruned at one ratio). Anything without a rule —
and every graph output — *freezes* the ids it sees, with the reason. Position id ``FIXED`` (-1)
marks a channel that is not prunable (from a graph input, a grouped conv...).

The types live in :mod:`.types`, the op rules in :mod:`.rules` and :mod:`.maps`;
:func:`apply_removal` rewrites the graph.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.edits import apply_index_edit
from onnxcomp.graph.channels.rules import Walker
from onnxcomp.graph.channels.types import ChannelGraph, ChannelGroup, Producer, kept_mask
from onnxcomp.graph.edit import ConstEval, NameScope, clear_value_info, remove_dead
from onnxcomp.graph.slicing import SliceEdits
from onnxcomp.graph.shapes import infer_shapes
from onnxcomp.graph.weights import find_weights

def analyze(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ChannelGraph:
    """Discover the coupled-channel groups of ``model`` (which is not modified)."""

    cg = ChannelGraph(model)
    cg.shapes = shapes = static_shapes(model, input_shapes)
    weights = {(id(u.node), u.index): w for w in find_weights(model) for u in w.uses}
    Walker(cg, ConstEval(model), shapes, weights).run()
    _build_groups(cg)
    return cg


def static_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Shapes of every tensor: ONNX inference, then one onnxruntime run (batch 1, zeros) for the rest.

    Exporters compute padding or reshape targets with small constant subgraphs that shape
    inference cannot follow; running the model once fills those in when the inputs are static.
    """
    shapes = infer_shapes(model, input_shapes)
    live = ConstEval(model).live
    missing = [o for n in model.graph.node for o in n.output
               if o in live and (shapes.get(o) is None or None in shapes[o])]
    feeds = {}
    from onnxcomp.graph.shapes import input_specs

    for name, (dims, elem) in input_specs(model).items():
        dims = list((input_shapes or {}).get(name, dims))
        if dims and not isinstance(dims[0], int):
            dims[0] = 1
        if any(not isinstance(d, int) or d <= 0 for d in dims):
            return shapes
        feeds[name] = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(elem))
    if not missing:
        return shapes
    try:
        from onnxcomp.graph.subgraph import expose
        from onnxcomp.io.sessions import session

        sess = session(expose(model, missing))
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, sess.run(names, feeds)):
            shapes[name] = tuple(np.shape(value))
    except Exception:  # noqa: BLE001 - shapes stay unknown; rules needing them freeze their groups
        pass
    return shapes


def _components(n: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    b = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    m = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(m, directed=False)[1].astype(np.int64)


def _build_groups(cg: ChannelGraph) -> None:
    n = cg.n_ids
    owner = np.full(n, -1, np.int64)  # -1: an id no producer makes (channels a Pad adds)
    for k, p in enumerate(cg.producers):
        owner[p.ids] = k
    cg.unit_of = _components(n, cg.ties)
    n_units = int(cg.unit_of.max()) + 1 if n else 0
    unit_owner = np.full(n_units, -1, np.int64)
    made = owner >= 0
    unit_owner[cg.unit_of[made]] = owner[made]
    # producers are in one group when any of their channels share a unit
    prod_group = _components(len(cg.producers), [(owner[made], unit_owner[cg.unit_of[made]])])
    members: dict[int, list[Producer]] = {}
    for k, p in enumerate(cg.producers):
        members.setdefault(int(prod_group[k]), []).append(p)
    order = sorted(members, key=lambda g: min(cg.producers.index(p) for p in members[g]))
    renumber = {g: i for i, g in enumerate(order)}
    # a unit no producer makes (padding read only by a conv) belongs to no group: it stays
    cg.group_of_unit = np.array([renumber[int(prod_group[o])] if o >= 0 else -1 for o in unit_owner], np.int64)
    units_by_group: list[list[np.ndarray]] = [[] for _ in order]
    ids_by_unit = np.argsort(cg.unit_of, kind="stable")
    bounds = np.searchsorted(cg.unit_of[ids_by_unit], np.arange(n_units + 1))
    for u in range(n_units):
        if cg.group_of_unit[u] >= 0:
            units_by_group[cg.group_of_unit[u]].append(ids_by_unit[bounds[u]:bounds[u + 1]])
    cg.groups = [ChannelGroup(i, members[g], units_by_group[i]) for i, g in enumerate(order)]
    for cid, reasons in cg.frozen.items():
        if cg.group_of_unit[cg.unit_of[cid]] >= 0:
            group = cg.group_of(cid)
            group.frozen += [r for r in reasons if r not in group.frozen]


def apply_removal(model: onnx.ModelProto, cg: ChannelGraph, keep: np.ndarray) -> None:
    """Remove every channel id with ``keep[id] == False`` from ``model`` (the graph ``cg`` describes).

    Slices weights, biases, BN statistics and broadcast constants, updates depthwise ``group``,
    Split sizes, Slice bounds, Reshape shapes and Resize sizes, drops dead nodes and the
    value_info of every tensor whose shape changed.
    """

    edits = SliceEdits()
    for p in cg.producers:
        edits.keep(p.node, p.slot, p.axis, kept_mask(keep, p.ids))
    for c in cg.consumers:
        edits.keep(c.node, c.slot, c.axis, kept_mask(keep, c.ids))
    for prm in cg.params:
        edits.keep(prm.node, prm.slot, prm.axis, kept_mask(keep, prm.ids))
    ev = ConstEval(model)
    scope = NameScope(model)
    for e in cg.edits:
        masks = [kept_mask(keep, ids) for ids in e.ids]
        if not all(m.all() for m in masks):
            apply_index_edit(model, e, masks, ev, scope)
    failed = edits.commit(model, ev, scope)
    if failed:
        raise ValueError(f"cannot read constant {failed[0]!r} to remove channels from it")
    remove_dead(model)
    changed = {name for name, lay in cg.layouts.items() if not kept_mask(keep, lay.ids).all()}
    clear_value_info(model, changed | edits.rewritten)  # other inferred shapes stay true


def rebind(cg: ChannelGraph, model: onnx.ModelProto) -> ChannelGraph:
    """The same channel graph for an identical copy of its model (nodes matched by position)."""
    from dataclasses import replace

    index = {id(n): i for i, n in enumerate(cg.model.graph.node)}
    nodes = model.graph.node

    def swap(rec):
        return replace(rec, node=nodes[index[id(rec.node)]])

    return replace(cg, model=model, producers=[swap(p) for p in cg.producers],
                   consumers=[swap(c) for c in cg.consumers], params=[swap(p) for p in cg.params],
                   edits=[swap(e) for e in cg.edits])
