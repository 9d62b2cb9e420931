"""Channel importance for structured pruning, and the MACs model of a channel graph.

Scores are per channel id (see :mod:`onnxcomp.graph.channels.groups`); a unit's score is the sum over
its ids. Weight-based scores are normalised per producer (mean 1), so producers tied into one
group count alike whatever their scale.

- ``l1`` / ``l2``: norm of each output filter, times |gamma|/sqrt(var+eps) of a BatchNorm that
  directly follows (the effective filter, as if BN were folded).
- ``bn``: |gamma| of the BatchNorm after the producer (l1 where there is none).
- ``activation``: for every consumer, E[x_c^2] of its input channel times the squared norm of the
  consumer weights reading it: the energy the channel contributes to the consumers' outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.graph.channels.types import ChannelGraph, Producer
from onnxcomp.graph.edit import ConstEval, get_attr, uses
from onnxcomp.graph.shapes import node_macs
from onnxcomp.graph.weights import COMPUTE_OPS, find_weights


def _rows(values: np.ndarray, axis: int) -> np.ndarray:
    v = np.moveaxis(np.asarray(values, np.float64), axis, 0)
    return v.reshape(v.shape[0], -1)


def _normalised(x: np.ndarray) -> np.ndarray:
    m = float(np.mean(x)) if len(x) else 0.0
    return x / m if m > 0 else np.ones_like(x)


def _bn_after(producer: Producer, users: dict) -> onnx.NodeProto | None:
    nxt = users.get(producer.node.output[0], [])
    if len(nxt) == 1 and nxt[0][0].op_type == "BatchNormalization" and nxt[0][1] == 0:
        return nxt[0][0]
    return None


def _bn_scale(bn: onnx.NodeProto, ev: ConstEval, gamma_only: bool) -> np.ndarray | None:
    gamma = ev.value(bn.input[1])
    var = ev.value(bn.input[4]) if len(bn.input) > 4 else None
    if gamma is None or var is None:
        return None
    gamma = np.abs(gamma.astype(np.float64))
    return gamma if gamma_only else gamma / np.sqrt(var.astype(np.float64) + get_attr(bn, "epsilon", 1e-5))


def weight_scores(cg: ChannelGraph, kind: str) -> np.ndarray:
    """Per channel id: the (BN-scaled) l1/l2 filter norm, or the BN |gamma| (kind 'bn')."""
    ev = ConstEval(cg.model)
    users = uses(cg.model.graph)
    scores = np.zeros(cg.n_ids)
    for p in cg.producers:
        if p.weight.source == "constant_of_shape":  # a uniform tensor: all filters alike
            scores[p.ids] = 1.0
            continue
        rows = _rows(p.weight.values(), p.axis)
        norm = np.abs(rows).sum(1) if kind in ("l1", "bn") else np.sqrt((rows ** 2).sum(1))
        bn = _bn_after(p, users)
        scale = _bn_scale(bn, ev, kind == "bn") if bn is not None else None
        if scale is not None and len(scale) == len(norm):
            norm = scale if kind == "bn" else norm * scale
        scores[p.ids] = _normalised(norm)
    return scores


@dataclass
class ActivationStats:
    """Per consumer input tensor, per position along its channel axis: E[x] and E[x^2]."""

    mean: dict[str, np.ndarray] = field(default_factory=dict)
    power: dict[str, np.ndarray] = field(default_factory=dict)


def activation_stats(measured: dict) -> ActivationStats:
    """Mean and second moment of every consumer's input channels, from the statistics walk."""
    stats = ActivationStats()
    for m in measured.values():
        stats.mean[m.consumer.tensor], stats.power[m.consumer.tensor] = m.mean, m.power
    return stats


def activation_scores(cg: ChannelGraph, stats: ActivationStats) -> np.ndarray:
    """Per channel id: sum over consumers of E[x^2] x ||consumer weights reading it||^2."""
    scores = np.zeros(cg.n_ids)
    for c in cg.consumers:
        if c.tensor not in stats.power:
            continue
        wnorm = (_rows(c.weight.values(), c.axis) ** 2).sum(1) if c.weight.source != "constant_of_shape" \
            else np.ones(len(c.ids))
        real = c.ids >= 0
        np.add.at(scores, c.ids[real], (stats.power[c.tensor] * wnorm)[real])
    return scores


def unit_scores(cg: ChannelGraph, group, id_scores: np.ndarray) -> np.ndarray:
    """Score of each unit of ``group``: the sum over its channel ids."""
    return np.array([float(id_scores[u].sum()) for u in group.units])


class MacModel:
    """MACs of every compute node (per sample), as a function of the kept channel ids."""

    def __init__(self, cg: ChannelGraph, shapes: dict) -> None:
        rows: dict[int, list] = {}
        for p in cg.producers:
            rows.setdefault(id(p.node), [p.weight.shape, None, None])[1] = p.ids
        for c in cg.consumers:
            rows.setdefault(id(c.node), [c.weight.shape, None, None])[2] = c.ids
        weights = {id(prm.node): prm for prm in cg.params if prm.node.op_type in ("Conv", "ConvTranspose")
                   and prm.slot == 1}
        for e in cg.edits:
            if e.kind == "group":  # depthwise: MACs follow its channels once
                key = id(e.node)
                rows[key] = [None, weights[key].ids if key in weights else e.ids[0], None]
        known = {(id(u.node), u.index): w for w in find_weights(cg.model) for u in w.uses}
        self.rows = []
        for node in cg.model.graph.node:
            if node.op_type not in COMPUTE_OPS:
                continue
            wshape, out_ids, in_ids = rows.get(id(node), [None, None, None])
            if id(node) not in rows and node.output[0] in cg.layouts:  # a product of activations (attention)
                out_ids = cg.layouts[node.output[0]].ids
            w = known.get((id(node), 1))
            wshape = w.shape if w is not None else wshape
            macs = node_macs(node, shapes, wshape, int(get_attr(node, "group", 1)))
            if macs:
                self.rows.append((macs, out_ids, in_ids))

    @property
    def total(self) -> int:
        return sum(r[0] for r in self.rows)

    def after(self, keep: np.ndarray) -> float:
        """MACs of these nodes once the ids with ``keep == False`` are removed."""
        total = 0.0
        for macs, out_ids, in_ids in self.rows:
            f = 1.0
            for ids in (out_ids, in_ids):
                if ids is not None and len(ids):
                    real = ids >= 0
                    f *= (np.count_nonzero(keep[ids[real]]) + np.count_nonzero(~real)) / len(ids)
            total += macs * f
        return total
