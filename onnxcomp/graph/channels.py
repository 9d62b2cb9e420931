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

The op rules live in :mod:`onnxcomp.graph.channel_rules`; :func:`apply_removal` rewrites the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .edit import ConstEval
from .shapes import infer_shapes
from .weights import Weight, find_weights

FIXED = -1


@dataclass
class Layout:
    """Channel axis of a tensor and the channel id at each position along it (FIXED = not prunable)."""

    axis: int
    ids: np.ndarray
    rank: int | None = None


@dataclass
class Producer:
    """A node whose output channels are prunable: its weight's out axis and the ids it created."""

    node: onnx.NodeProto
    weight: Weight
    slot: int
    axis: int
    ids: np.ndarray

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


@dataclass
class Consumer:
    """A node that reads channels through a weight's input axis (these inputs are removed)."""

    node: onnx.NodeProto
    weight: Weight
    slot: int
    axis: int
    tensor: str
    ids: np.ndarray

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


@dataclass
class Param:
    """A constant input sliced along ``axis`` with the channels: bias, BN statistics, scales."""

    node: onnx.NodeProto
    slot: int
    axis: int
    ids: np.ndarray


@dataclass
class IndexEdit:
    """An attribute or constant input that counts channels: Split sizes, Slice bounds, groups."""

    node: onnx.NodeProto
    kind: str
    ids: list[np.ndarray]
    info: dict = field(default_factory=dict)


@dataclass
class ChannelGroup:
    """Producers whose channels are coupled; ``units`` are the id sets removed together."""

    index: int
    producers: list[Producer]
    units: list[np.ndarray]
    frozen: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.producers]


@dataclass
class ChannelGraph:
    """Everything group discovery found; ``groups`` is filled by :func:`analyze`."""

    model: onnx.ModelProto
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    edits: list[IndexEdit] = field(default_factory=list)
    ties: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    frozen: dict[int, list[str]] = field(default_factory=dict)
    layouts: dict[str, Layout] = field(default_factory=dict)
    groups: list[ChannelGroup] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    unit_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    group_of_unit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_ids: int = 0

    def new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.n_ids, self.n_ids + n, dtype=np.int64)
        self.n_ids += n
        return ids

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for i in np.unique(np.asarray(ids)):
            if i != FIXED:
                reasons = self.frozen.setdefault(int(i), [])
                if reason not in reasons and len(reasons) < 4:
                    reasons.append(reason)

    def tie(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Channels at equal positions of ``a`` and ``b`` are one channel; FIXED freezes the other."""
        a, b = np.asarray(a), np.asarray(b)
        fixed_a, fixed_b = a == FIXED, b == FIXED
        self.freeze(a[fixed_b & ~fixed_a], reason)
        self.freeze(b[fixed_a & ~fixed_b], reason)
        both = ~fixed_a & ~fixed_b
        if both.any():
            self.ties.append((a[both], b[both]))

    def group_of(self, channel_id: int) -> ChannelGroup:
        return self.groups[int(self.group_of_unit[self.unit_of[channel_id]])]


def analyze(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ChannelGraph:
    """Discover the coupled-channel groups of ``model`` (which is not modified)."""
    from .channel_rules import Walker

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
    from .shapes import input_specs

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
        from ..runtime import session

        sess = session(model, extra_outputs=missing)
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
    owner = np.zeros(n, np.int64)
    for k, p in enumerate(cg.producers):
        owner[p.ids] = k
    cg.unit_of = _components(n, cg.ties)
    n_units = int(cg.unit_of.max()) + 1 if n else 0
    unit_owner = np.zeros(n_units, np.int64)
    unit_owner[cg.unit_of] = owner
    # producers are in one group when any of their channels share a unit
    links = [(owner, unit_owner[cg.unit_of])] if n else []
    prod_group = _components(len(cg.producers), links)
    cg.group_of_unit = prod_group[unit_owner] if n_units else np.zeros(0, np.int64)
    members: dict[int, list[Producer]] = {}
    for k, p in enumerate(cg.producers):
        members.setdefault(int(prod_group[k]), []).append(p)
    order = sorted(members, key=lambda g: min(cg.producers.index(p) for p in members[g]))
    renumber = {g: i for i, g in enumerate(order)}
    cg.group_of_unit = np.array([renumber[int(g)] for g in cg.group_of_unit], np.int64)
    units_by_group: list[list[np.ndarray]] = [[] for _ in order]
    ids_by_unit = np.argsort(cg.unit_of, kind="stable")
    bounds = np.searchsorted(cg.unit_of[ids_by_unit], np.arange(n_units + 1))
    for u in range(n_units):
        units_by_group[cg.group_of_unit[u]].append(ids_by_unit[bounds[u]:bounds[u + 1]])
    cg.groups = [ChannelGroup(i, members[g], units_by_group[i]) for i, g in enumerate(order)]
    for cid, reasons in cg.frozen.items():
        group = cg.group_of(cid)
        group.frozen += [r for r in reasons if r not in group.frozen]


def kept_mask(keep: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per position: is the channel kept? (FIXED positions always are.)"""
    ids = np.asarray(ids)
    out = np.ones(len(ids), bool)
    real = ids != FIXED
    out[real] = keep[ids[real]]
    return out


def apply_removal(model: onnx.ModelProto, cg: ChannelGraph, keep: np.ndarray) -> None:
    """Remove every channel id with ``keep[id] == False`` from ``model`` (the graph ``cg`` describes).

    Slices weights, biases, BN statistics and broadcast constants, updates depthwise ``group``,
    Split sizes, Slice bounds, Reshape shapes and Resize sizes, drops dead nodes and the
    value_info of every tensor whose shape changed.
    """
    from ..encode.common import NameScope
    from .channel_maps import apply_index_edit
    from .edit import SliceEdits, clear_value_info, remove_dead

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
