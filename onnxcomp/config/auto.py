"""Options of ``onnxcomp auto`` (the recipe search): one target, the quality drop, and where the
candidates run (``jobs`` workers on this machine, or a Dask cluster's workers)."""
from __future__ import annotations

from dataclasses import dataclass

from onnxcomp.config.options import option, positive, spell, spell_value
from onnxcomp.config.run import percent
from onnxcomp.errors import ConfigError

TARGETS = ("target_size", "target_latency", "target_macs")


@dataclass(frozen=True)
class AutoConfig:
    """What ``auto`` searches for: exactly one target (a fraction of the input's size, latency or
    MACs) within ``max_drop``; ``jobs`` candidates are evaluated at once (on ``scheduler``'s
    cluster when given)."""

    target_size: float | None = option(None, "File size as a fraction of the input, e.g. 0.125.")
    target_latency: float | None = option(None, "onnxruntime latency (1 thread, p50) as a fraction of the "
                                                "input's, e.g. 0.5.")
    target_macs: float | None = option(None, "MACs as a fraction of the input's, e.g. 0.5.")
    max_drop: float = option(0.01, "Largest quality drop allowed on held-out calibration samples (top-1 "
                                   "agreement, or cosine for non-class outputs; accuracy with labels); 0.01 or 1%.",
                             metavar="D", percent=True)
    int8: bool = option(False, "End with QDQ int8 quantization (the quantize step: integer kernels, calibrated "
                               "on --data); with --target-latency every candidate ends with it and it is "
                               "tried alone first.", flag=True)
    keep_going: bool = option(False, "Keep searching for the smallest / fastest after a candidate meets the "
                                     "target (slower).", flag=True, cli="--search")
    jobs: int | None = option(None, "Candidates evaluated at once, each in its own worker process with "
                                    "threads/N onnxruntime threads (default: 1, or the number of --scheduler "
                                    "workers); the search probes N levels per round.", metavar="N")
    scheduler: str | None = option(None, "A dask.distributed scheduler address (e.g. tcp://host:8786): the "
                                         "candidates run on that cluster (pip install 'onnxcomp[distributed]').",
                                   metavar="ADDRESS")

    def __post_init__(self) -> None:
        drop = percent("max_drop", self.max_drop)
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop <= 1.0:
            raise ConfigError(f"{spell_value('max_drop', self.max_drop)} is outside 0..1",
                              f"give a fraction, e.g. {spell_value('max_drop', 0.01)} (or 1%)")
        object.__setattr__(self, "max_drop", float(drop))
        given = [n for n in TARGETS if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of {', '.join(spell(n) for n in TARGETS)}",
                              f"e.g. {spell_value('target_size', 0.1)}")
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{spell_value(given[0], value)} is outside (0, 1]", "give a fraction, e.g. 0.5")
        object.__setattr__(self, given[0], float(value))
        positive("jobs", self.jobs, example=2)
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler.strip()):
            raise ConfigError(f"{spell_value('scheduler', self.scheduler)} is not an address",
                              f"give the scheduler's address, e.g. {spell_value('scheduler', 'tcp://host:8786')}")

    @property
    def target(self) -> tuple[str, float]:
        """(kind, fraction): kind is size, latency or macs."""
        name = next(n for n in TARGETS if getattr(self, n) is not None)
        return name[len("target_"):], getattr(self, name)
