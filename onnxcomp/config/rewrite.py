"""Options of the local rewrites that make onnxruntime faster: low-rank factorization
(:class:`FactorizeConfig`) and depthwise / grouped convolutions (:class:`DepthwiseConfig`)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from onnxcomp.config.fold import Folding
from onnxcomp.config.options import Needs, choice, non_negative, option, positive, spell, spell_value
from onnxcomp.config.prune import SizedSelection
from onnxcomp.errors import ConfigError


class FactorizeAllocation(enum.Enum):
    AUTO = "auto"
    ERROR = "error"
    UNIFORM = "uniform"


class FactorizeMethod(enum.Enum):
    AUTO = "auto"
    SPATIAL = "spatial"
    TUCKER2 = "tucker2"
    SVD = "svd"


DEFAULT_FACTORIZE_RATIO = 0.5


def _energy(value: float | None) -> float | None:
    if value is not None and not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"{spell_value('energy', value)} is outside 0..1 (exclusive of 0)",
                          f"give the fraction of weight energy to keep, e.g. {spell_value('energy', 0.9)}")
    return None if value is None else float(value)


@dataclass(frozen=True)
class RewriteConfig(Folding, SizedSelection):
    """What every local rewrite shares: data-aware fitting, measured speed, growth."""

    data_aware: bool | None = option(None, "Minimise each layer's output error on the calibration data "
                                           "(default: on with real --data, never with random data).")
    measure: bool | None = option(None, "Keep a rewrite only where onnxruntime (1 thread) runs that layer faster "
                                        "(single-layer benchmark, original vs rewritten, interleaved; cached per "
                                        "layer geometry). Default: on when every layer shape is known and it takes "
                                        "under two minutes (factorize: with --ratio, not --rank or --energy; "
                                        "neither with --allow-growth).")
    allow_growth: bool = option(False, "Rewrite even where MACs do not drop.", flag=True)

    @property
    def needs(self) -> Needs:
        return Needs(spell("data_aware")) if self.data_aware else Needs()


@dataclass(frozen=True)
class FactorizeConfig(RewriteConfig):
    """Low-rank rewrites of convs and Gemm/MatMul (spatial SVD, Tucker-2, SVD).

    At most one of ``rank``, ``energy`` and ``ratio`` (the fraction of the layers' MACs removed;
    params when shapes are unknown; default 0.5): with ``allocation="uniform"`` the ratio in every
    layer; with ``"error"`` one budget over all layers, spent where the measured output error per
    MAC saved is lowest; ``"auto"`` (the default) builds both with real data and keeps the one
    whose outputs moved least (uniform without data). Ranks are rounded up to a multiple of ``round_to``, never above full rank. ``max_error`` skips layers whose estimated relative output
    error would exceed it. ``sequential`` (data-aware): fit each layer on the inputs the layers
    rewritten before it produce, toward the original outputs.
    """

    method: str = option("auto", "spatial: kxk -> kx1 + 1xk; tucker2: 1x1 -> kxk core -> 1x1; svd: two factors "
                                 "(Gemm, MatMul, convs); auto: per layer the lowest error at the target.",
                         choices=FactorizeMethod)
    ratio: float | None = option(None, "Fraction of the layers' MACs to remove (params when shapes are "
                                       "unknown), e.g. 0.5 (the default).")
    allocation: str = option("auto", "uniform: --ratio in every layer; error: per-layer ranks where the "
                                     "measured output error per MAC saved is lowest (one budget over all "
                                     "layers); auto: with real --data both are built and the one whose "
                                     "outputs moved least on 32 calibration samples is kept (neither wins "
                                     "on every model, see docs/factorization.md), else uniform.",
                             choices=FactorizeAllocation)
    rank: int | None = option(None, "Explicit rank (tucker2: both ranks).")
    energy: float | None = option(None, "Smallest rank keeping this fraction of the squared singular values, "
                                        "e.g. 0.9.")
    round_to: int = option(8, "Round ranks up to a multiple of this (1 disables); never above full rank.")
    max_error: float | None = option(None, "Skip layers whose estimated relative output error would exceed "
                                           "this, e.g. 0.1.")
    hooi_iters: int = option(2, "HOOI refinement sweeps for tucker2 (data-free).")
    sequential: bool = option(True, "Data-aware: fit each layer on the inputs the layers rewritten before it "
                                    "produce, toward the original outputs (--no-sequential: all on the "
                                    "original inputs).")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "method", choice("method", self.method, FactorizeMethod))
        object.__setattr__(self, "allocation", choice("allocation", self.allocation, FactorizeAllocation))
        given = [n for n in ("rank", "energy", "ratio") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(spell(n) for n in given)} were both given",
                              f"give only one of {spell('rank')}, {spell('energy')}, {spell('ratio')}")
        positive("rank", self.rank)
        _energy(self.energy)
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"{spell_value('ratio', self.ratio)} is outside 0..1 (exclusive)",
                              f"give the fraction of each layer's MACs to remove, e.g. {spell_value('ratio', 0.5)}")
        positive("round_to", self.round_to, "1 (no rounding) or more")
        if self.max_error is not None and not 0.0 < self.max_error:
            raise ConfigError(f"{spell_value('max_error', self.max_error)} is not positive",
                              f"give the largest relative error a layer may get, e.g. {spell_value('max_error', 0.1)}")
        non_negative("hooi_iters", self.hooi_iters)

    @property
    def target_ratio(self) -> float | None:
        """The MACs kept per layer (after/before) that ranks are chosen for (None: rank or energy decides)."""
        if self.rank is None and self.energy is None:
            return 1.0 - (DEFAULT_FACTORIZE_RATIO if self.ratio is None else self.ratio)
        return None

    @property
    def allocates(self) -> bool:
        """Ranks come from the global budget (not --rank, --energy, --allocation uniform or auto)."""
        return self.target_ratio is not None and self.allocation == "error"

    def tag(self) -> str:
        if self.rank is not None:
            return f"factorize-r{self.rank}"
        if self.energy is not None:
            return f"factorize-e{round(100 * self.energy)}"
        return f"factorize{round(100 * (1 - self.target_ratio))}"


DEFAULT_DEPTHWISE_ENERGY = 0.9


@dataclass(frozen=True)
class DepthwiseConfig(RewriteConfig):
    """Dense conv -> depthwise (multiplier M) + pointwise, or -> grouped conv with G groups.

    ``multiplier`` and ``groups`` are exclusive. ``energy``: alone, the smallest multiplier per
    layer that keeps that fraction of the weight energy (default 0.9 when nothing is given);
    with ``multiplier`` or ``groups``, a floor: layers that would keep less are skipped.
    """

    multiplier: int | None = option(None, "Depth multiplier M: depthwise kxk (C -> C*M) + pointwise 1x1; exact "
                                          "at M = min(C_out, k*k).")
    groups: int | None = option(None, "Grouped conv with G groups on permuted channels (Gathers keep the "
                                      "channel order).")
    energy: float | None = option(None, "Alone: the smallest M keeping this fraction of the weight energy "
                                        "(default 0.9); with --multiplier/--groups: skip layers that would keep "
                                        "less.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.multiplier is not None and self.groups is not None:
            raise ConfigError(f"{spell('multiplier')} and {spell('groups')} were both given",
                              f"give {spell('multiplier')} for depthwise+pointwise or {spell('groups')} for a "
                              "grouped conv")
        positive("multiplier", self.multiplier)
        positive("groups", self.groups)
        _energy(self.energy)

    @property
    def mode(self) -> str:
        return "grouped" if self.groups is not None else "depthwise"

    @property
    def target_energy(self) -> float | None:
        if self.multiplier is None and self.groups is None:
            return DEFAULT_DEPTHWISE_ENERGY if self.energy is None else self.energy
        return self.energy

    def tag(self) -> str:
        if self.groups is not None:
            return f"grouped{self.groups}"
        return f"depthwise{self.multiplier}" if self.multiplier is not None else "depthwise"


