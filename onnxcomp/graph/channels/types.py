"""The types of coupled-channel analysis: layouts, producers, consumers, params, groups."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.graph.weights import Weight

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


def kept_mask(keep: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per position: is the channel kept? (FIXED positions always are.)"""
    ids = np.asarray(ids)
    out = np.ones(len(ids), bool)
    real = ids != FIXED
    out[real] = keep[ids[real]]
    return out
