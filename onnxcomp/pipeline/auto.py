"""``onnxcomp auto``: search recipes for a size / MACs / latency target within a quality drop.

Size targets combine weight sharing and pruning: the fewest uniform bits that stay within the
drop, then (if the file is still above the target) a fractional average budget spent per layer
by measured sensitivity, then the highest sparsity on top (all bisected). Speed targets use structured channel
pruning (bisection on the ratio), then low-rank factorization on top when the target is not yet
met. Every candidate is scored on held-out calibration samples that the compression never saw
(a quarter of the data when there are at least 32 samples). The winner is the smallest /
fastest candidate within the drop; its recipe replays with ``onnxcomp compress --recipe``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxcomp.pipeline import recipe as recipes
from onnxcomp.io.model import Model, as_model
from onnxcomp.errors import ConfigError
from onnxcomp.io import model_bytes

BITS = (8, 6, 5, 4, 3, 2)
BISECT_STEPS = 4
MEASURED_STEPS = 2  # bisection steps on the average bits of the measured (sensitivity) allocation


@dataclass
class Trial:
    """One candidate recipe and what it measured."""

    steps: list[tuple[str, dict]]
    size_ratio: float
    macs_ratio: float | None
    drop: float
    ok: bool
    model: Model | None = field(default=None, repr=False)
    latency_ratio: float | None = None
    drop_bound: float | None = None  # one-sided 95 % upper bound on the drop for the held-out samples

    @property
    def proto(self) -> Any:
        return self.model.proto

    def to_dict(self) -> dict:
        return {"steps": [{k: v} for k, v in self.steps], "size_ratio": self.size_ratio,
                "macs_ratio": self.macs_ratio, "latency_ratio": self.latency_ratio,
                "drop": self.drop, "drop_bound95": self.drop_bound, "within_drop": self.ok}


def split(data: Any) -> tuple[list[dict], list[dict]]:
    """(calibration batches, held-out batches): a quarter held out when there are >= 32 samples."""
    batches = list(data)
    n = sum(len(next(iter(b.values()))) for b in batches)
    unit = getattr(data, "unit", 1)  # a fixed batch: the two parts hold whole batches
    cut = (n - n // 4) // unit * unit
    if n < 32 or cut in (0, n):
        return batches, batches
    calib, hold, seen = [], [], 0
    for b in batches:
        k = len(next(iter(b.values())))
        if seen + k <= cut:
            calib.append(b)
        elif seen >= cut:
            hold.append(b)
        else:
            calib.append({x: v[: cut - seen] for x, v in b.items()})
            hold.append({x: v[cut - seen:] for x, v in b.items()})
        seen += k
    return calib, hold


class Search:
    """Evaluates candidate recipes against the original on held-out data."""

    def __init__(self, model: Any, data: Any, max_drop: float, threads: int | None = None,
                 labels: Any = None, progress: Any = None, goal: tuple[str, float] | None = None,
                 keep_going: bool = False) -> None:
        from onnxcomp.measure.inspect import inspect

        self.original = as_model(model)
        if data is None or getattr(data, "random", False):
            raise ConfigError("onnxcomp auto needs real calibration data", "pass --data FILE.npz")
        self.calib, self.holdout = split(data)
        self.calib_samples = sum(len(next(iter(b.values()))) for b in self.calib)
        self.max_drop, self.threads, self.labels, self.progress = max_drop, threads, labels, progress
        self.base_size = model_bytes(self.original.proto)
        self.base_macs = inspect(self.original.proto).total_macs
        self.trials: list[Trial] = []
        self.goal, self.keep_going = goal, keep_going  # (trial attribute, target): stop once a trial meets it
        # a size target stores the smallest way (variable-length codes too: onnxruntime's load peak is
        # higher, see docs/encodings.md); speed targets keep the default storage
        self.encoding = "smallest" if goal is not None and goal[0] == "size_ratio" else "auto"

    @property
    def met(self) -> bool:
        """Whether a trial within the drop already meets the target (and the search may stop)."""
        if self.keep_going or self.goal is None:
            return False
        key, target = self.goal
        return any(t.ok and getattr(t, key) is not None and getattr(t, key) <= target for t in self.trials)

    def drop(self, candidate: Model) -> tuple[float, float | None]:
        """The quality drop on the held-out samples, and its one-sided 95 % upper bound."""
        from onnxcomp.measure.fidelity import compare

        rep = compare(self.original, candidate, self.holdout, threads=self.threads)
        _, value = rep.headline
        return float(1.0 - (value if value is not None else 0.0)), rep.drop_bound

    def evaluate(self, steps: list[tuple[str, dict]]) -> Trial:
        from onnxcomp.measure.inspect import inspect

        model = recipes.apply(self.original, recipes.make(steps, encoding=self.encoding), data=self.calib,
                              threads=self.threads, progress=self.progress).model
        macs = inspect(model.proto).total_macs
        d, bound = self.drop(model)
        t = Trial(steps, model_bytes(model.proto) / self.base_size,
                  macs / self.base_macs if macs and self.base_macs else None, d, d <= self.max_drop, model,
                  drop_bound=bound)
        self.trials.append(t)
        return t

    def bisect(self, make_steps, lo: float, hi: float) -> Trial | None:
        """The best passing trial for the highest level in [lo, hi] (level -> steps)."""
        best = None
        for _ in range(BISECT_STEPS):
            if self.met:
                break
            mid = round((lo + hi) / 2, 3)
            t = self.evaluate(make_steps(mid))
            if t.ok:
                best, lo = t, mid
            else:
                hi = mid
        return best


def for_size(s: Search, target: float | None = None) -> list[Trial]:
    """Fewest uniform bits within the drop (bisected over BITS); then, while the file is above
    ``target``, an average bit budget between that and the next width down, spent per layer where
    the measured output error is lowest (bisected); then the highest sparsity on top of the best
    (bisected). Stops at the first trial within the drop that meets the target (``s.met``)."""
    bits, failed, best = None, None, None
    lo, hi = 0, len(BITS) - 1  # passing is monotone in the width: bisect BITS (widest first)
    while lo <= hi and not s.met:
        mid = (lo + hi) // 2
        t = s.evaluate([("cluster", {"bits": BITS[mid]})])
        if t.ok:
            bits, best, lo = BITS[mid], t, mid + 1
        else:
            failed, hi = BITS[mid], mid - 1
    if s.met:
        return s.trials
    if bits is None:
        s.bisect(lambda x: [("prune", {"sparsity": x})], 0.0, 0.95)
        return s.trials
    step = {"bits": bits}
    if failed is not None and target is not None and best.size_ratio > target:
        lo, hi = float(failed), float(bits)
        for _ in range(MEASURED_STEPS):
            if s.met:
                return s.trials
            mid = round((lo + hi) / 2, 2)
            t = s.evaluate([("cluster", {"bits": mid, "allocation": "sensitivity"})])
            if t.ok:
                hi, step = mid, {"bits": mid, "allocation": "sensitivity"}
            else:
                lo = mid
    s.bisect(lambda x: [("prune", {"sparsity": x}), ("cluster", dict(step))], 0.0, 0.95)
    return s.trials


def for_speed(s: Search, target: float) -> list[Trial]:
    """Highest structured ratio within the drop; factorization on top if MACs are still high."""
    best = s.bisect(lambda r: [("structured", {"ratio": r})], 0.0, 0.9)
    if not s.met and (best is None or (best.macs_ratio or 1.0) > target):
        base = best.steps if best else []
        s.evaluate(base + [("factorize", {"ratio": 0.5})])
    return s.trials


@dataclass
class Outcome:
    """What ``auto`` found: the chosen trial, every trial, the recipe and whether the target was met."""

    chosen: Trial
    trials: list[Trial]
    recipe: dict
    target: dict
    missed: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "chosen": self.chosen.to_dict(), "trials": [t.to_dict() for t in self.trials]}


def latencies(original: Model, trials: list[Trial], threads: int | None) -> None:
    """Measure the passing candidates side by side with the original (interleaved, 1 thread)."""
    import tempfile
    from pathlib import Path

    from onnxcomp import io
    from onnxcomp.measure.bench import bench

    ok = [t for t in trials if t.ok]
    if not ok:
        return
    with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-auto")) as tmp:
        paths = [Path(tmp) / "original.onnx"]
        io.save(original.proto, paths[0], verify=False)
        for i, t in enumerate(ok):
            paths.append(io.save(t.model.proto, Path(tmp) / f"c{i}.onnx", verify=False))
        report = bench(paths, threads=threads or 1, runs=30, warmup=3)
    for t, entry in zip(ok, report.entries[1:]):
        t.latency_ratio = entry.ratios.get("p50_ms")


def search(model: Model, data: Any, *, target_size: float | None = None, target_latency: float | None = None,
           target_macs: float | None = None, max_drop: float = 0.01, int8: bool = False,
           threads: int | None = None, labels: Any = None, progress: Any = None, keep_going: bool = False) -> Outcome:
    """A candidate within ``max_drop`` that meets exactly one target (a fraction of the input's
    size, p50 latency or MACs): the first found, or with ``keep_going`` the smallest or fastest of
    the whole search; its recipe replays with ``onnxcomp compress --recipe``."""
    from onnxcomp.config import spell, spell_value

    targets = {k: v for k, v in (("size", target_size), ("latency", target_latency), ("macs", target_macs))
               if v is not None}
    if len(targets) != 1:
        raise ConfigError(f"give exactly one of {spell('target_size')}, {spell('target_latency')}, "
                          f"{spell('target_macs')}", f"e.g. {spell_value('target_size', 0.1)}")
    (kind, target), = targets.items()
    if not 0 < target <= 1:
        raise ConfigError(f"{spell_value('target_' + kind, target)} is outside (0, 1]", "give a fraction, e.g. 0.5")
    goal = {"size": ("size_ratio", target), "macs": ("macs_ratio", target)}.get(kind)  # latency: measured after
    s = Search(model, data, max_drop, threads=threads, labels=labels, progress=progress, goal=goal,
               keep_going=keep_going)
    trials = for_size(s, target) if kind == "size" else for_speed(s, target)
    if kind == "latency":
        latencies(model, trials, threads)
    key = {"size": "size_ratio", "macs": "macs_ratio", "latency": "latency_ratio"}[kind]
    chosen = choose(trials, key)
    if int8 and chosen is not None and chosen.ok:
        with_int8 = s.evaluate(chosen.steps + [("quantize", {})])
        if with_int8.ok:
            chosen = with_int8
    source = model.path.name if model.path is not None else "model"
    rec = recipes.make(chosen.steps, encoding=s.encoding, source=source, max_drop=max_drop,
                       calib_samples=s.calib_samples)
    reached = getattr(chosen, key)
    missed = None
    if not chosen.ok:
        missed = f"no candidate stayed within {spell('max_drop')} {max_drop:g} (best drop {chosen.drop:.4f})"
    elif reached is None or reached > target:
        missed = f"best {kind} ratio within the drop is {reached}, above the target {target:g}"
    out = Outcome(chosen, trials, rec, {kind: target}, missed)
    held = sum(len(next(iter(b.values()))) for b in s.holdout)
    if chosen.drop_bound is not None and chosen.drop_bound > max_drop:
        from onnxcomp.measure.holdout import samples_needed

        out.warnings.append(f"the {held} held-out samples cannot resolve {spell('max_drop')} {max_drop:g}: the chosen "
                            f"model's drop {chosen.drop:.4f} may be up to {chosen.drop_bound:.4f} (95 % bound); pass "
                            f"more calibration samples (a quarter is held out; about {samples_needed(max_drop)} "
                            "held out for top-1 agreement)")
    return out


def choose(trials: list[Trial], key: str) -> Trial | None:
    ok = [t for t in trials if t.ok]
    pool = ok or trials
    if not pool:
        return None
    return min(pool, key=lambda t: (not t.ok, getattr(t, key) if getattr(t, key) is not None else np.inf))
