"""Weight-sharing options (:class:`ClusterConfig`): k-means codebooks per tensor, channel or grid."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from onnxcomp.config.options import Needs, choice, option, positive, spell, spell_value
from onnxcomp.config.prune import SizedSelection
from onnxcomp.errors import ConfigError


class ClusterGranularity(enum.Enum):
    AUTO = "auto"
    TENSOR = "tensor"
    CHANNEL = "channel"
    SHARED = "shared"
    GRID = "grid"


class ClusterInit(enum.Enum):
    LINEAR = "linear"
    DENSITY = "density"
    RANDOM = "random"


class BitAllocation(enum.Enum):
    UNIFORM = "uniform"
    MIXED = "mixed"
    SENSITIVITY = "sensitivity"


@dataclass(frozen=True)
class ClusterConfig(SizedSelection):
    """Weight sharing: 1-D k-means of each weight into 2^bits (or ``clusters``) values.

    ``granularity``: one codebook per tensor, per output channel, one shared codebook over
    per-channel-scaled weights, or grid (a uniform step per channel, stored in the variable-length
    code); auto: per channel, except that the mixed and sensitivity allocations may give a layer a
    shared codebook or a grid where that buys less error per stored bit. ``allocation`` mixed:
    per-layer bits averaging ``bits`` (stored bits per weight, codebooks included; may be
    fractional), spent where the estimated layer error drops most; sensitivity: where the
    measured model-output error drops most (needs real data). Exact zeros stay zero. ``gptq``:
    assign each weight with error feedback through the layer-input Hessian (None = on with data).
    """

    bits: float | None = option(None, "Codebook size 2^B per codebook (1..8), e.g. 4; with --allocation "
                                      "mixed|sensitivity the average stored bits per weight, codebooks included, "
                                      "e.g. 3.5.")
    clusters: int | None = option(None, "Codebook size K (2..256) instead of --bits.")
    allocation: str = option("uniform", "uniform: every layer at --bits; mixed: per-layer bits averaging --bits, "
                                        "spent where the (calibration-weighted) layer error drops most; "
                                        "sensitivity: spent where the measured model-output error drops most "
                                        "(needs --data; slower; takes depthwise kernels).",
                             choices=BitAllocation, aliases=("--bit-allocation",))
    granularity: str = option("auto", "One codebook per tensor, per output channel, one shared codebook over "
                                      "per-channel-scaled weights, or a uniform grid per channel in a "
                                      "variable-length code; auto: per channel, or shared/grid where "
                                      "--allocation mixed|sensitivity finds it cheaper for the error.",
                              choices=ClusterGranularity)
    init: str = option("linear", "Centroid initialisation: linear (min..max), density (CDF quantiles), random.",
                       choices=ClusterInit)
    iterations: int = option(40, "Lloyd iterations per refinement round.")
    gptq: bool | None = option(None, "Assign weights to their codebooks column by column with error feedback "
                                     "through the layer-input Hessian (default: on with real --data).")
    include_depthwise: bool = option(False, "Also cluster depthwise kernels (one codebook per tensor).", flag=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits is None and self.clusters is None:
            raise ConfigError(f"neither {spell('bits')} nor {spell('clusters')} was given",
                              f"give one, e.g. {spell_value('bits', 4)}")
        if self.bits is not None and self.clusters is not None:
            raise ConfigError(f"{spell('bits')} and {spell('clusters')} were both given", "give only one of them")
        object.__setattr__(self, "allocation", choice("allocation", self.allocation, BitAllocation))
        object.__setattr__(self, "granularity", choice("granularity", self.granularity, ClusterGranularity))
        object.__setattr__(self, "init", choice("init", self.init, ClusterInit))
        if self.bits is not None:
            if not 1 <= self.bits <= 8:
                raise ConfigError(f"{spell_value('bits', self.bits)} is outside 1..8",
                                  f"e.g. {spell_value('bits', 4)}")
            if int(self.bits) != self.bits and self.allocation == "uniform":
                raise ConfigError(f"{spell_value('bits', self.bits)} is fractional with "
                                  f"{spell_value('allocation', 'uniform')}",
                                  "give a whole number of bits, or an average with "
                                  f"{spell('allocation')} mixed|sensitivity")
            if int(self.bits) == self.bits:
                object.__setattr__(self, "bits", int(self.bits))
        if self.clusters is not None and (int(self.clusters) != self.clusters or not 2 <= self.clusters <= 256):
            raise ConfigError(f"{spell_value('clusters', self.clusters)} is outside 2..256",
                              f"e.g. {spell_value('clusters', 16)}")
        positive("iterations", self.iterations, example=32)
        if self.allocation != "uniform" and self.bits is None:
            raise ConfigError(f"{spell_value('allocation', self.allocation)} needs {spell('bits')} (the average "
                              "budget)", f"e.g. {spell('bits')} 3.5 {spell('allocation')} {self.allocation}")

    @property
    def k(self) -> int:
        """Clusters per codebook."""
        return int(self.clusters) if self.clusters is not None else 1 << int(self.bits)

    @property
    def budget_bits(self) -> float:
        return float(self.bits) if self.bits is not None else math.log2(self.k)

    @property
    def needs(self) -> Needs:
        if self.allocation == "sensitivity":
            return Needs(spell_value("allocation", self.allocation))
        if self.gptq:
            return Needs(spell("gptq"))
        return Needs()

    def tag(self) -> str:
        return f"cluster{self.bits:g}" if self.bits is not None else f"cluster-k{self.clusters}"
