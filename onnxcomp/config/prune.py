"""Pruning options: unstructured / N:M (:class:`PruneConfig`) and whole channels
(:class:`StructuredPruneConfig`), with the weight selection they share."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxcomp.config.fold import Folding
from onnxcomp.config.options import Needs, choice, fraction, non_negative, option, patterns, positive, spell, \
    spell_value
from onnxcomp.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """Which weights a step may touch: glob patterns on weight or node names."""

    include: tuple[str, ...] = option((), "Only weights/nodes matching GLOB (repeatable).", metavar="GLOB",
                                      repeat=True)
    exclude: tuple[str, ...] = option((), "Never weights/nodes matching GLOB (repeatable).", metavar="GLOB",
                                      repeat=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", patterns(self.include))
        object.__setattr__(self, "exclude", patterns(self.exclude))


@dataclass(frozen=True)
class SizedSelection(Selection):
    """A selection that also skips tensors below a size."""

    min_params: int = option(1024, "Skip tensors with fewer parameters.")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "min_params", non_negative("min_params", self.min_params))


class PruneAllocation(enum.Enum):
    AUTO = "auto"
    UNIFORM = "uniform"
    GLOBAL = "global"
    LAMP = "lamp"
    SENSITIVITY = "sensitivity"
    CURVES = "curves"


class PruneGranularity(enum.Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"


class PruneScore(enum.Enum):
    AUTO = "auto"
    MAGNITUDE = "magnitude"
    ACTIVATION = "activation"
    OBS = "obs"


DEFAULT_SPARSITY = 0.5


@dataclass(frozen=True)
class PruneConfig(SizedSelection):
    """Unstructured / N:M pruning: zero single weights, stored in sparse encodings.

    ``sparsity`` is the fraction of the selected parameters removed overall (default 0.5), spread
    across layers by ``allocation`` (auto = lamp). ``nm`` = N:M keeps N of every M consecutive
    weights along the reduction axis instead (``sparsity`` may not be given with it).
    """

    sparsity: float | None = option(None, "Fraction of the prunable parameters to remove overall, e.g. 0.9 "
                                          "(default 0.5).", aliases=("--prune",))
    nm: tuple[int, int] | str | None = option(None, "N:M pattern along the reduction axis, e.g. 2:4 (instead of "
                                                    "--sparsity).", metavar="N:M")
    allocation: str = option("auto", "How the sparsity is spread over layers: lamp (data-free, layer-adaptive), "
                                     "global (one threshold), uniform, sensitivity (measured on --data); "
                                     "auto = lamp, the best measured.", choices=PruneAllocation)
    granularity: str = option("channel", "Rank weights within each output channel (protects channels that "
                                         "BatchNorm folding made small), or within the whole tensor.",
                              choices=PruneGranularity)
    score: str = option("auto", "How weights are chosen: obs = OBS/SparseGPT masks with updates of the kept "
                                "weights, each layer fit to the original's outputs on the inputs the pruned "
                                "layers before it produce (needs --data); magnitude = |w|; activation = |w| x "
                                "input RMS on --data; auto = obs with real --data, else magnitude.",
                        choices=PruneScore)
    include_depthwise: bool = option(False, "Also prune depthwise kernels (fragile).", flag=True)
    max_layer_sparsity: float = option(0.98, "No layer is pruned beyond this fraction.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity is not None:
            object.__setattr__(self, "sparsity", fraction("sparsity", self.sparsity, example=0.9))
        for name, kind in (("allocation", PruneAllocation), ("granularity", PruneGranularity),
                           ("score", PruneScore)):
            object.__setattr__(self, name, choice(name, getattr(self, name), kind))
        fraction("max_layer_sparsity", self.max_layer_sparsity, inclusive_high=True, example=0.98)
        if self.nm is not None:
            if self.sparsity is not None:
                raise ConfigError(f"{spell('sparsity')} and {spell('nm')} were both given",
                                  f"give {spell('sparsity')} for unstructured pruning or {spell('nm')} N:M, "
                                  "not both")
            nm = parse_nm(self.nm) if isinstance(self.nm, str) else tuple(self.nm)
            if len(nm) != 2 or not (0 < nm[0] < nm[1] <= 64):
                raise ConfigError(f"{spell_value('nm', self.nm)} is not N:M with 0 < N < M <= 64",
                                  f"e.g. {spell_value('nm', '2:4')}")
            object.__setattr__(self, "nm", (int(nm[0]), int(nm[1])))

    @property
    def level(self) -> float:
        """The overall sparsity: the N:M pattern's, ``sparsity``, or the default 0.5."""
        if self.nm is not None:
            return 1 - self.nm[0] / self.nm[1]
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    @property
    def needs(self) -> Needs:
        if self.score in ("activation", "obs"):
            return Needs(spell_value("score", self.score))
        if self.allocation == "sensitivity":
            return Needs(spell_value("allocation", self.allocation))
        return Needs()

    def tag(self) -> str:
        """What the output name says was done: prune90, nm24."""
        if self.nm is not None:
            return f"nm{self.nm[0]}{self.nm[1]}"
        return f"prune{round(100 * self.level)}"


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"{spell_value('nm', text)} is not N:M", "write it like 2:4 or 4:8") from None
    return n, m


class Importance(enum.Enum):
    AUTO = "auto"
    L1 = "l1"
    L2 = "l2"
    BN = "bn"
    ACTIVATION = "activation"
    RECONSTRUCTION = "reconstruction"


class ChannelAllocation(enum.Enum):
    AUTO = "auto"
    UNIFORM = "uniform"
    SENSITIVITY = "sensitivity"
    CURVES = "curves"


@dataclass(frozen=True)
class StructuredPruneConfig(Folding, Selection):
    """Structured pruning: remove whole channels and every tensor coupled to them (real speed).

    ``ratio`` is the fraction of channels removed; ``allocation`` uniform removes it from every
    prunable group, sensitivity (auto with real data) spends the same MACs saving where the
    measured output error is smallest. Kept counts are multiples of ``round_to``.
    """

    ratio: float = option(0.5, "Fraction of channels to remove, e.g. 0.3 (uniform: in every prunable group; "
                               "sensitivity: the same MACs saving, spent where the output moves least).")
    importance: str = option("auto", "Channel choice: l1/l2 filter norm (BN-scaled), bn |gamma|, activation energy "
                                     "at the consumers, reconstruction (removed greedily by the output error each "
                                     "removal adds to the consumers after their least-squares refit); the last two "
                                     "need --data; auto = with --data both activation and reconstruction, keeping the "
                                     "model whose outputs move less, else l1.", choices=Importance)
    allocation: str = option("auto", "uniform: the ratio in every group; sensitivity: the same MACs saving, "
                                     "spent where the model's output error per MAC saved (each group pruned alone "
                                     "on a subset) is lowest; curves: the same from the consumers' error curves, "
                                     "no model runs (both need --data); auto = sensitivity with --data, else uniform.",
                             choices=ChannelAllocation)
    round_to: int = option(8, "Kept channels per group are a multiple of this (at least one multiple).")
    refit: bool | None = option(None, "Least-squares refit of the consumers on the kept channels (default: on "
                                      "with real --data, never with random data).")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ratio", fraction("ratio", self.ratio, example=0.3))
        object.__setattr__(self, "importance", choice("importance", self.importance, Importance))
        object.__setattr__(self, "allocation", choice("allocation", self.allocation, ChannelAllocation))
        object.__setattr__(self, "round_to", positive("round_to", self.round_to, "1 (no rounding) or more"))

    @property
    def needs(self) -> Needs:
        if self.importance in ("activation", "reconstruction"):
            return Needs(spell_value("importance", self.importance))
        if self.allocation in ("sensitivity", "curves"):
            return Needs(spell_value("allocation", self.allocation))
        if self.refit:
            return Needs(spell("refit"))
        return Needs()

    def tag(self) -> str:
        return f"channels{round(100 * self.ratio)}"
