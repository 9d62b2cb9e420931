"""``onnxcomp auto``: search recipes for a size / MACs / latency target within a quality drop.

Size targets: the fewest uniform bits within the drop, then (file still above the target) a
fractional average budget spent per layer by measured sensitivity, then the highest sparsity on
top (all bisected). Speed targets: the lossless fold alone (latency), then the least structured
channel ratio that meets the target (bisected), else the highest within the drop with low-rank
factorization on top; ``--int8`` times each candidate after int8 quantization, int8 alone first.
Every candidate is scored on held-out calibration samples (a quarter of the data from 32 samples).
The winner meets the target with the least compression (``keep_going``: the smallest / fastest
within the drop); its recipe replays with ``onnxcomp compress --recipe``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxcomp.config import AutoConfig, build
from onnxcomp.errors import ConfigError
from onnxcomp.graph.layout import adapt_for, strip
from onnxcomp.io import model_bytes
from onnxcomp.io.model import Model, as_model
from onnxcomp.pipeline import recipe as recipes
from onnxcomp.pipeline.candidates import (Trial, backend, check_parallel, choose, evaluate_parallel, foldable,
                                          held_out_drop, held_out_note, latencies, measure, split)

__all__ = ["BITS", "BISECT_STEPS", "MEASURED_STEPS", "Outcome", "Search", "Trial", "choose", "for_size",
           "for_speed", "search", "split"]

BITS = (8, 6, 5, 4, 3, 2)
BISECT_STEPS = 4  # rounds of each bisection (each round probes ``jobs`` levels)
MEASURED_STEPS = 2  # rounds on the average bits of the measured (sensitivity) allocation


class Search:
    """Evaluates candidate recipes against the original on held-out data, ``jobs`` at a time."""

    jobs = 1

    def __init__(self, model: Any, data: Any, max_drop: float, threads: int | None = None,
                 labels: Any = None, progress: Any = None, goal: tuple[str, float] | None = None,
                 keep_going: bool = False, jobs: int = 1) -> None:
        from onnxcomp.measure.capture import check_runs
        from onnxcomp.measure.inspect import inspect

        self.original = as_model(model)
        if data is None or getattr(data, "random", False):
            raise ConfigError("onnxcomp auto needs real calibration data", "pass --data FILE.npz")
        # inputs with samples off axis 0: the trials run samples-first (graph.layout)
        self.original = Model(adapt_for(self.original.proto, data), self.original.path)
        self.calib, self.holdout = split(data)
        check_runs(self.original, self.calib, threads=threads)  # once, before any trial
        self.calib_samples = sum(len(next(iter(b.values()))) for b in self.calib)
        self.max_drop, self.threads, self.labels, self.progress = max_drop, threads, labels, progress
        self.base_size = model_bytes(self.original.proto)
        self.base_macs = inspect(self.original.proto).total_macs
        self.trials: list[Trial] = []
        self.goal, self.keep_going = goal, keep_going  # (trial attribute, target): stop once a trial meets it
        self.jobs = jobs
        self.warnings: list[str] = []  # what the search gave up on, for the user
        self.memo: dict = {}  # measurements shared by the in-process trials (a sensitivity measured once)
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
        return held_out_drop(self.original, candidate, self.holdout, self.threads)

    def _trial(self, steps: list, model: Model, size: int, macs: int | None, d: float, bound: float | None) -> Trial:
        t = Trial(steps, size / self.base_size, macs / self.base_macs if macs and self.base_macs else None, d,
                  d <= self.max_drop, model, drop_bound=bound)
        self.trials.append(t)
        return t

    def evaluate(self, steps: list[tuple[str, dict]]) -> Trial:
        """One candidate, in this process."""
        return self._trial(steps, *measure(self.original, steps, self.calib, self.holdout, self.encoding,
                                           self.threads, self.progress, self.memo))

    def evaluate_many(self, candidates: list[list[tuple[str, dict]]]) -> list[Trial]:
        """Several candidates at once (``jobs`` joblib workers; one after another in this process
        when ``jobs`` is 1); the trials are appended in the order given, whatever finishes first."""
        if self.jobs == 1 or not candidates:
            return [self.evaluate(steps) for steps in candidates]
        results = evaluate_parallel(self.original, candidates, self.calib, self.holdout, self.encoding,
                                    self.threads, self.max_drop, self.jobs, self.progress)
        return [self._trial(steps, r["model"], r["size"], r["macs"], r["drop"], r["bound"])
                for steps, r in zip(candidates, results)]

    def bisect(self, make_steps, lo: float, hi: float, rounds: int | None = None, digits: int = 3) -> Trial | None:
        """The best passing trial for the level nearest ``hi`` that passes, searched from ``lo``
        (passing) towards ``hi`` (level -> steps; ``lo`` > ``hi`` searches downwards). Each round
        splits the interval into jobs + 1 parts and evaluates the jobs levels between them at once
        (jobs = 1: plain bisection)."""
        best = None
        for _ in range(BISECT_STEPS if rounds is None else rounds):
            if self.met:
                break
            k = self.jobs
            levels = list(dict.fromkeys(round((lo * (k + 1 - i) + hi * i) / (k + 1), digits)
                                        for i in range(1, k + 1)))
            if k > 1:  # rounding may land on a level already tried when the interval is narrow
                levels = [x for x in levels if x not in (lo, hi)]
                if not levels:
                    break
            trials = self.evaluate_many([make_steps(x) for x in levels])
            passing = [i for i, t in enumerate(trials) if t.ok]
            if passing:  # passing is taken as monotone: the last level that passed, up to the next one
                j = passing[-1]
                best, lo = trials[j], levels[j]
                hi = levels[j + 1] if j + 1 < len(levels) else hi
            else:
                hi = levels[0]
        return best


def probe_widths(s: Search) -> tuple[int | None, int | None, Trial | None]:
    """Bisect BITS (widest first; passing is monotone in the width): (fewest bits within the drop,
    the widest that failed below it, its trial). Each round probes ``s.jobs`` widths at once."""
    bits, failed, best = None, None, None
    lo, hi = 0, len(BITS) - 1
    while lo <= hi and not s.met:
        n, k = hi - lo + 1, s.jobs  # jobs points split lo..hi into jobs + 1 parts (jobs = 1: the midpoint)
        idx = sorted({min(hi, max(lo, lo - 1 + (i * (n + 1)) // (k + 1))) for i in range(1, k + 1)})
        trials = s.evaluate_many([[("cluster", {"bits": BITS[i]})] for i in idx])
        passing = [j for j, t in enumerate(trials) if t.ok]
        j = passing[-1] if passing else -1
        if passing:
            bits, best, lo = BITS[idx[j]], trials[j], idx[j] + 1
        if j + 1 < len(idx):
            failed, hi = BITS[idx[j + 1]], idx[j + 1] - 1
    return bits, failed, best


def for_size(s: Search, target: float | None = None) -> list[Trial]:
    """Fewest uniform bits within the drop (bisected over BITS); then, while the file is above
    ``target``, an average bit budget between that and the next width down, spent per layer where
    the measured output error is lowest (bisected); then the highest sparsity on top of the best
    (bisected). Stops at the first round with a trial within the drop that meets the target (``s.met``)."""
    bits, failed, best = probe_widths(s)
    if s.met:
        return s.trials
    if bits is None:
        s.bisect(lambda x: [("prune", {"sparsity": x})], 0.0, 0.95)
        return s.trials
    step = {"bits": bits}
    if failed is not None and target is not None and best.size_ratio > target:
        measured = s.bisect(lambda x: [("cluster", {"bits": x, "allocation": "sensitivity"})], float(bits),
                            float(failed), rounds=MEASURED_STEPS, digits=2)
        if s.met:
            return s.trials
        if measured is not None:
            step = dict(measured.steps[-1][1])
    s.bisect(lambda x: [("prune", {"sparsity": x}), ("cluster", dict(step))], 0.0, 0.95)
    return s.trials


def _time(s: Search, trials: list[Trial], every: bool = True) -> None:
    """p50 latency of ``trials`` (``every``: failing ones too) beside the original's, 1 thread."""
    latencies(s.original, trials, s.threads, s.calib[0] if s.calib else None, every=every)


def for_speed(s: Search, target: float, tail: list | None = None) -> list[Trial]:
    """The least structured ratio that meets the MACs or latency target (bisected on the measured
    value) within the drop; else (or with ``keep_going``) the highest ratio within the drop, with
    factorization on top. A latency target tries the lossless fold alone first. ``tail``: steps
    that end every candidate (``--int8``), tried alone first: if they meet the target, nothing is pruned."""
    key, tail = s.goal[0] if s.goal else "macs_ratio", list(tail or [])
    timed = key == "latency_ratio"
    lead = [("fold", {})] if timed and foldable(s.original) else []  # then under int8 alone too
    if lead:
        _time(s, [s.evaluate(lead)])
        if s.met:
            return s.trials

    def steps(ratio: float, extra: tuple = ()) -> list:
        return [("structured", {"ratio": ratio}), *extra, *tail]

    def ratios(ok: bool) -> list[float]:  # of the structured trials that passed (failed)
        return [t.steps[0][1]["ratio"] for t in s.trials if t.steps[0][0] == "structured" and t.ok == ok]

    if tail:
        alone = s.evaluate(lead + tail)
        if timed:
            _time(s, [alone])
        if s.met:
            return s.trials
        if not alone.ok:  # everything after it would only lose more
            s.warnings.append(f"{'+'.join(n for n, _ in tail)} alone dropped {alone.drop:.4f} on the held-out "
                              f"samples, above the allowed {s.max_drop:g}: searched without it")
            tail = []
    if not s.keep_going:
        lo, hi, least = 0.0, 0.9, None  # lo misses the target; hi is assumed to meet it
        for _ in range(BISECT_STEPS):
            levels = [round(lo + (hi - lo) * i / (s.jobs + 1), 3) for i in range(1, s.jobs + 1)]
            trials = s.evaluate_many([steps(r) for r in levels])
            if timed:
                _time(s, trials)
            hits = [i for i, t in enumerate(trials) if getattr(t, key) is not None and getattr(t, key) <= target]
            if hits:
                least, hi = trials[hits[0]], levels[hits[0]]
                lo = levels[hits[0] - 1] if hits[0] > 0 else lo
                if not least.ok:
                    break  # more compression meets the target and loses more: below the drop it does not
            else:
                lo = levels[-1]
        if least is not None and least.ok:
            return s.trials
        best = s.bisect(steps, max(ratios(True), default=0.0), min(ratios(False), default=0.9), rounds=2)
        best = best or max((t for t in s.trials if t.ok and t.steps[0][0] == "structured"),
                           key=lambda t: t.steps[0][1]["ratio"], default=None)
        if timed and best is not None and best.latency_ratio is None:  # timed before factorizing
            _time(s, [best])
    else:
        best = s.bisect(steps, 0.0, 0.9)
    if best is None or getattr(best, key) is None or getattr(best, key) > target:
        ratio = float(best.steps[0][1]["ratio"]) if best is not None and best.steps[0][0] == "structured" else 0.0
        s.evaluate(steps(ratio, (("factorize", {"ratio": 0.5}),)) if ratio else
                   [("factorize", {"ratio": 0.5}), *tail])
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
    holdout: str = ""  # how the drop was measured: how many samples were held out

    def to_dict(self) -> dict:
        return {"target": self.target, "holdout": self.holdout, "chosen": self.chosen.to_dict(),
                "trials": [t.to_dict() for t in self.trials]}


def search(model: Model, data: Any, config: AutoConfig | None = None, *, threads: int | None = None,
           labels: Any = None, progress: Any = None, **options: Any) -> Outcome:
    """A candidate within ``max_drop`` that meets exactly one target (a fraction of the input's
    size, p50 latency or MACs): the first found, or with ``keep_going`` the smallest or fastest of
    the whole search; its recipe replays with ``onnxcomp compress --recipe``. ``options``: the
    fields of :class:`onnxcomp.config.AutoConfig` (or a ready ``config``)."""
    cfg = config if config is not None else build(AutoConfig, options, step="auto")
    with backend(cfg.scheduler) as cluster_jobs:  # a scheduler is reached (or refused) before any work
        return _search(model, data, cfg, cfg.jobs or cluster_jobs or 1, threads, labels, progress)


def _search(model: Model, data: Any, cfg: AutoConfig, jobs: int, threads: int | None, labels: Any,
            progress: Any) -> Outcome:
    from onnxcomp.config import spell

    (kind, target), max_drop = cfg.target, cfg.max_drop
    if jobs > 1:
        check_parallel(as_model(model), jobs)
    goal = {"size": ("size_ratio", target), "macs": ("macs_ratio", target), "latency": ("latency_ratio", target)}[kind]
    s = Search(model, data, max_drop, threads=threads, labels=labels, progress=progress, goal=goal,
               keep_going=cfg.keep_going, jobs=jobs)
    # a latency target counts int8's own speed: every candidate ends with it (tried alone first)
    tail = [("quantize", {})] if cfg.int8 and kind == "latency" else []
    trials = for_size(s, target) if kind == "size" else for_speed(s, target, tail)
    if kind == "latency":
        _time(s, trials, every=False)
    key = {"size": "size_ratio", "macs": "macs_ratio", "latency": "latency_ratio"}[kind]
    chosen = choose(trials, key, None if cfg.keep_going else target)
    if cfg.int8 and not tail and chosen is not None and chosen.ok:
        with_int8 = s.evaluate(chosen.steps + [("quantize", {})])
        if with_int8.ok:
            chosen = with_int8
    for t in (t for t in trials if t.model is not None):
        strip(t.model.proto)  # (the model's own input layout again)
    source = s.original.path.name if s.original.path is not None else "model"
    rec = recipes.make(chosen.steps, encoding=s.encoding, source=source, max_drop=max_drop,
                       calib_samples=s.calib_samples)
    reached = getattr(chosen, key)
    missed = None
    if not chosen.ok:
        missed = f"no candidate stayed within {spell('max_drop')} {max_drop:g} (the smallest drop: {chosen.drop:.4f})"
    elif reached is None or reached > target:
        shown = "unknown" if reached is None else f"{reached:.3g}"
        missed = f"best {kind} ratio within the drop is {shown}, above the target {target:g}"
    out = Outcome(chosen, trials, rec, {kind: target}, missed, warnings=list(s.warnings))
    out.holdout = held_out_note(s.holdout, s.calib, s.calib_samples, chosen, max_drop, out.warnings)
    return out
