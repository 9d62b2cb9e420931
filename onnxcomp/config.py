"""One frozen dataclass per pass; validation in ``__post_init__`` so the API and CLI reject the
same bad values with the same one-line message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from onnxcomp.errors import ConfigError


def _fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0,
              inclusive_high: bool = False) -> None:
    ok = low <= value <= high if inclusive_high else low <= value < high
    if not ok:
        bound = f"{low}..{high}" + ("" if inclusive_high else " (exclusive)")
        raise ConfigError(f"{name} {value} is outside {bound}", f"give a fraction, e.g. {name} 0.5")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(allowed)}",
                          f"choose one of: {', '.join(allowed)}")


def _patterns(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Selection:
    """Which weights a pass may touch: glob patterns on weight/node names, a minimum size."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_params: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", _patterns(self.include))
        object.__setattr__(self, "exclude", _patterns(self.exclude))
        if self.min_params < 0:
            raise ConfigError(f"--min-params {self.min_params} is negative", "give 0 or more")


ALLOCATIONS = ("auto", "uniform", "global", "lamp", "sensitivity")
GRANULARITIES = ("tensor", "channel")
ENCODINGS = ("auto", "dense", "sparse", "gaps", "bitmask")
SCORES = ("magnitude", "activation", "obs")


@dataclass(frozen=True)
class PruneConfig(Selection):
    """Unstructured / N:M magnitude pruning.

    ``sparsity`` is the fraction of the selected parameters removed overall; ``allocation``
    spreads it across layers (auto = sensitivity with real calibration data, else lamp).
    ``nm`` = (N, M): keep N of every M consecutive weights along the reduction axis.
    ``score``: magnitude |w|; activation |w| x input-channel RMS; obs: OBS/SparseGPT masks
    with updates of the remaining weights from the layer-input Hessian (both need real data).
    """

    sparsity: float = 0.5
    allocation: str = "auto"
    granularity: str = "channel"
    nm: tuple[int, int] | None = None
    include_depthwise: bool = False
    encoding: str = "auto"
    max_layer_sparsity: float = 0.98
    score: str = "magnitude"

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("--sparsity", self.sparsity)
        _choice("--score", self.score, SCORES)
        _choice("--allocation", self.allocation, ALLOCATIONS)
        _choice("--granularity", self.granularity, GRANULARITIES)
        _choice("--encoding", self.encoding, ENCODINGS)
        _fraction("--max-layer-sparsity", self.max_layer_sparsity, inclusive_high=True)
        if self.nm is not None:
            nm = parse_nm(self.nm) if isinstance(self.nm, str) else tuple(self.nm)
            if len(nm) != 2 or not (0 < nm[0] < nm[1] <= 64):
                raise ConfigError(f"--nm {self.nm} is not N:M with 0 < N < M <= 64", "e.g. --nm 2:4")
            object.__setattr__(self, "nm", nm)


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--nm {text!r} is not N:M", "write it like 2:4 or 4:8") from None
    return n, m


FACTORIZE_METHODS = ("auto", "spatial", "tucker2", "svd")
DEFAULT_FACTORIZE_RATIO = 0.5


def _positive(name: str, value: int | None, what: str = "a positive integer") -> None:
    if value is not None and (int(value) != value or value < 1):
        raise ConfigError(f"{name} {value} is not positive", f"give {what}, e.g. {name} 8")


def _energy(value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ConfigError(f"--energy {value} is outside 0..1 (exclusive of 0)",
                          "give the fraction of weight energy to keep, e.g. --energy 0.9")


@dataclass(frozen=True)
class FactorizeConfig(Selection):
    """Low-rank rewrites of convs and Gemm/MatMul (spatial SVD, Tucker-2, SVD).

    At most one of ``rank`` (explicit), ``energy`` (fraction of squared singular values kept) and
    ``ratio`` (target MACs after/before per layer; params when shapes are unknown) may be given;
    with none, ``ratio`` is 0.5. Ranks are rounded up to a multiple of ``round_to`` (1 disables),
    never above full rank. ``data_aware`` None = on when real calibration data is given.
    ``measure``: rewrite only layers that onnxruntime runs faster (single-layer benchmark).
    ``allow_growth``: rewrite even where MACs do not drop (exactness checks at full rank).
    ``max_error``: skip layers whose estimated relative output error (the relative weight error
    without calibration data) would exceed it. ``sequential`` (data-aware only): fit the layers
    in up to ``waves`` consecutive groups, each on the inputs the already rewritten layers
    produce, toward the original outputs (else every layer on the original inputs).
    """

    method: str = "auto"
    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    round_to: int = 8
    data_aware: bool | None = None
    measure: bool = False
    hooi_iters: int = 2
    max_samples: int = 64
    allow_growth: bool = False
    max_error: float | None = None
    sequential: bool = True
    waves: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("--method", self.method, FACTORIZE_METHODS)
        given = [n for n, v in (("--rank", self.rank), ("--energy", self.energy), ("--ratio", self.ratio))
                 if v is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)} were both given",
                              "give only one of --rank, --energy, --ratio")
        _positive("--rank", self.rank)
        _energy(self.energy)
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--ratio {self.ratio} is outside 0..1 (exclusive)",
                              "give the target MACs fraction per layer, e.g. --ratio 0.5")
        _positive("--round-to", self.round_to, "1 (no rounding) or more")
        if self.max_error is not None and not 0.0 < self.max_error:
            raise ConfigError(f"--max-error {self.max_error} is not positive",
                              "give the largest relative error a layer may get, e.g. --max-error 0.1")
        if self.hooi_iters < 0:
            raise ConfigError(f"--hooi-iters {self.hooi_iters} is negative", "give 0 or more")
        _positive("--calib-samples", self.max_samples)
        _positive("--waves", self.waves)

    @property
    def target_ratio(self) -> float | None:
        """The MACs ratio ranks are chosen for (None when --rank or --energy decides)."""
        if self.rank is None and self.energy is None:
            return DEFAULT_FACTORIZE_RATIO if self.ratio is None else self.ratio
        return None


DEFAULT_DEPTHWISE_ENERGY = 0.9


@dataclass(frozen=True)
class DepthwiseConfig(Selection):
    """Dense conv -> depthwise (multiplier M) + pointwise, or -> grouped conv with G groups.

    ``multiplier`` and ``groups`` are exclusive. ``energy``: alone, the smallest multiplier per
    layer that keeps that fraction of the weight energy (default 0.9 when nothing is given);
    with ``multiplier`` or ``groups``, a floor: layers that would keep less are skipped.
    """

    multiplier: int | None = None
    groups: int | None = None
    energy: float | None = None
    data_aware: bool | None = None
    measure: bool = False
    max_samples: int = 64
    allow_growth: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.multiplier is not None and self.groups is not None:
            raise ConfigError("--multiplier and --groups were both given",
                              "give --multiplier for depthwise+pointwise or --groups for a grouped conv")
        _positive("--multiplier", self.multiplier)
        _positive("--groups", self.groups)
        _energy(self.energy)
        _positive("--calib-samples", self.max_samples)

    @property
    def mode(self) -> str:
        return "grouped" if self.groups is not None else "depthwise"

    @property
    def target_energy(self) -> float | None:
        if self.multiplier is None and self.groups is None:
            return DEFAULT_DEPTHWISE_ENERGY if self.energy is None else self.energy
        return self.energy


STRUCTURED_IMPORTANCE = ("auto", "l1", "l2", "bn", "activation")
STRUCTURED_ALLOCATIONS = ("auto", "uniform", "sensitivity")


@dataclass(frozen=True)
class StructuredPruneConfig(Selection):
    """Structured pruning: remove whole channels and every tensor coupled to them.

    ``ratio`` is the fraction of channels removed. ``allocation`` uniform removes that fraction
    from every prunable group; sensitivity (auto with real data) spends the same MACs saving
    where the measured output error is smallest, protecting sensitive groups. ``importance``
    auto = activation with real data, else l1. Kept counts are multiples of ``round_to``.
    ``refit`` None = least-squares refit of the consumers when real data is given.
    """

    ratio: float = 0.5
    importance: str = "auto"
    allocation: str = "auto"
    round_to: int = 8
    refit: bool | None = None
    max_samples: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("--ratio", self.ratio)
        _choice("--importance", self.importance, STRUCTURED_IMPORTANCE)
        _choice("--allocation", self.allocation, STRUCTURED_ALLOCATIONS)
        _positive("--round-to", self.round_to, "1 (no rounding) or more")
        _positive("--calib-samples", self.max_samples)


CLUSTER_GRANULARITIES = ("auto", "tensor", "channel", "shared", "grid")
CORRECTIONS = ("auto", "affine", "bias", "none")
CLUSTER_INITS = ("linear", "density", "random")
CLUSTER_ALLOCATIONS = ("uniform", "mixed", "sensitivity")


@dataclass(frozen=True)
class ClusterConfig(Selection):
    """Weight sharing: 1-D k-means of each weight into 2^bits (or ``clusters``) values.

    ``granularity``: one codebook per tensor, per output channel, one shared codebook over
    per-channel-scaled weights, or grid (a uniform step per channel, stored in the
    variable-length code); auto: per channel, except that the mixed and sensitivity
    allocations may give a layer a shared codebook or a grid where that buys less error per
    stored bit. ``init``: linear, density (CDF quantiles) or random (Forgy).
    ``allocation`` mixed: per-layer bits chosen so the stored bits per weight, codebooks
    included, average at most ``bits`` (then possibly fractional, e.g. 3.5), spent where the
    estimated (calibration-weighted) layer error drops most; sensitivity: the same budget spent
    where the *measured* model-output error drops most (each layer clustered alone and run
    through the model on the calibration data; needs real data; depthwise kernels take part).
    Exact zeros stay zero. ``encoding`` is passed to encode_weights (auto = smallest).
    ``gptq``: re-assign each weight to its codebooks column by column with error feedback through
    the layer-input Hessian (GPTQ-style); None = on with real calibration data.
    ``correction``: per-channel output refit after clustering (auto = affine with real data);
    the scales go into the codebooks' per-channel scales, so the file stays the same size.
    ``max_samples``: calibration samples behind the layer statistics. 128, not 64: late layers
    see few positions per image (7×7 on effnet_lite0), and their GPTQ Hessians were the noisiest
    (effnet_lite0 4 bits: KL to the original 0.017 -> 0.0145).
    """

    bits: float | None = None
    clusters: int | None = None
    granularity: str = "auto"
    init: str = "linear"
    allocation: str = "uniform"
    include_depthwise: bool = False
    iterations: int = 40
    max_samples: int = 128
    encoding: str = "auto"
    gptq: bool | None = None
    correction: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("--correction", self.correction, CORRECTIONS)
        if self.bits is None and self.clusters is None:
            raise ConfigError("neither --bits nor --clusters was given", "give one, e.g. --bits 4")
        if self.bits is not None and self.clusters is not None:
            raise ConfigError("--bits and --clusters were both given", "give only one of them")
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise ConfigError(f"--bits {self.bits:g} is outside 1..8", "e.g. --bits 4")
        if self.bits is not None and int(self.bits) != self.bits and self.allocation == "uniform":
            raise ConfigError(f"--bits {self.bits:g} is fractional with --allocation uniform",
                              "give a whole number of bits, or an average with --allocation mixed|sensitivity")
        if self.clusters is not None and (int(self.clusters) != self.clusters or not 2 <= self.clusters <= 256):
            raise ConfigError(f"--clusters {self.clusters} is outside 2..256", "e.g. --clusters 16")
        _choice("--granularity", self.granularity, CLUSTER_GRANULARITIES)
        _choice("--init", self.init, CLUSTER_INITS)
        _choice("--allocation", self.allocation, CLUSTER_ALLOCATIONS)
        for name, value in (("--iterations", self.iterations), ("--calib-samples", self.max_samples)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} {value} is not positive", f"give a positive integer, e.g. {name} 32")
        if self.allocation != "uniform" and self.bits is None:
            raise ConfigError(f"--allocation {self.allocation} needs --bits (the average budget)",
                              f"e.g. --bits 3.5 --allocation {self.allocation}")

    @property
    def k(self) -> int:
        """Clusters per codebook."""
        return int(self.clusters) if self.clusters is not None else 1 << int(self.bits)

    @property
    def budget_bits(self) -> float:
        return float(self.bits) if self.bits is not None else math.log2(self.k)


@dataclass(frozen=True)
class CompressConfig:
    """The Deep Compression pipeline: prune to ``sparsity``, cluster to ``bits``, encode, pack."""

    sparsity: float = 0.9
    bits: float = 4
    granularity: str = "auto"
    allocation: str = "auto"
    bit_allocation: str = "uniform"
    pack: bool = False

    def __post_init__(self) -> None:
        _fraction("--prune", self.sparsity)
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"--bits {self.bits:g} is outside 1..8", "e.g. --bits 4")
        if int(self.bits) != self.bits and self.bit_allocation == "uniform":
            raise ConfigError(f"--bits {self.bits:g} is fractional with --bit-allocation uniform",
                              "give a whole number of bits, or an average with --bit-allocation mixed|sensitivity")
        _choice("--granularity", self.granularity, CLUSTER_GRANULARITIES)
        _choice("--allocation", self.allocation, ALLOCATIONS)
        _choice("--bit-allocation", self.bit_allocation, CLUSTER_ALLOCATIONS)
