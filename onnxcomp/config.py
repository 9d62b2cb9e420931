"""One frozen dataclass per pass; validation in ``__post_init__`` so the API and CLI reject the
same bad values with the same one-line message.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


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


@dataclass(frozen=True)
class PruneConfig(Selection):
    """Unstructured / N:M magnitude pruning.

    ``sparsity`` is the fraction of the selected parameters removed overall; ``allocation``
    spreads it across layers (auto = sensitivity with real calibration data, else lamp).
    ``nm`` = (N, M): keep N of every M consecutive weights along the reduction axis.
    """

    sparsity: float = 0.5
    allocation: str = "auto"
    granularity: str = "channel"
    nm: tuple[int, int] | None = None
    include_depthwise: bool = False
    encoding: str = "auto"
    max_layer_sparsity: float = 0.98

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("--sparsity", self.sparsity)
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
