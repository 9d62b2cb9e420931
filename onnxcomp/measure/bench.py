"""Benchmark models in onnxruntime: size, session creation, latency, throughput, peak memory.

Each model runs in its own long-lived child process (``python -m onnxcomp.measure.bench_worker``), so
memory is measured per model and one model's allocations cannot slow another. Runs are
interleaved: every round runs a chunk of iterations in each worker in turn (alternating the
order), so machine drift hits all models alike. Default: one intra-op thread, the reproducible
setting; pass ``threads`` to measure multi-threaded latency. Ratios are to the first model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from onnxcomp import io
from onnxcomp.data.calibration import random_feed
from onnxcomp.data.sources import DynamicDimsError
from onnxcomp.errors import ConfigError, DataError, ModelLoadError
from onnxcomp.io.sessions import resolve_provider

RATIO_KEYS = ("file_size", "create_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "model_rss",
              "loaded_rss", "running_rss")


@dataclass
class BenchEntry:
    """Measurements of one model; ``ratios`` are to the first entry."""

    name: str
    path: str
    file_size: int
    create_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    min_ms: float = 0.0
    throughput: float = 0.0
    peak_rss: int | None = None
    model_rss: int | None = None
    loaded_rss: int | None = None  # steady resident memory after the session was made, minus the process's before
    running_rss: int | None = None  # the same after the timed runs (weights + run-time buffers)
    times_ms: list[float] = field(default_factory=list)
    ratios: dict[str, float | None] = field(default_factory=dict)
    mobile: dict[str, Any] | None = None


@dataclass
class BenchReport:
    """The result of :func:`bench`; ``to_dict`` is the ``--json`` output."""

    entries: list[BenchEntry]
    provider: str
    threads: int | None
    runs: int
    warmup: int
    batch: int
    rounds: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Worker:
    """One child process holding one session."""

    def __init__(self, model: Path, feed: Path, threads: int | None, provider: str, log: Path) -> None:
        self.model = model
        self._log = log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxcomp.measure.bench_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.ready = self.ask({"model": str(model), "feed": str(feed), "threads": threads,
                               "provider": provider})

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            tail = [x for x in self._log.read_text(errors="replace").splitlines() if x.strip()][-1:]
            raise ModelLoadError(f"the benchmark process for {self.model.name} died (exit code "
                                 f"{self.proc.returncode}){': ' + tail[0] if tail else ''}",
                                 "check the model with `onnxcomp inspect`; it may need more memory")
        reply = json.loads(line)
        if "error" in reply:
            raise ModelLoadError(f"onnxruntime cannot run {self.model.name}: {reply['error']}",
                                 "check the model with `onnxcomp inspect` or re-export it")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def _feed(model: Path | onnx.ModelProto, folder: Path, index: int, batch: int,
          input_shapes: dict | None) -> tuple[Path, int]:
    """Random inputs for one run, saved for the worker, and the batch they hold: ``batch``, or
    the model's own when its inputs fix it; a model without inputs runs on an empty feed."""
    from onnxcomp.data.sources import input_shapes_for_random, model_inputs

    proto = model if isinstance(model, onnx.ModelProto) else io.load(model, load_external_data=False)
    path = folder / f"feed{index}.npz"
    if not model_inputs(proto):
        np.savez(path)
        return path, batch
    specs = model_inputs(proto)
    try:  # one feed: its inputs need not agree on axis 0 (an RNN's state beside its input)
        shapes = input_shapes_for_random(specs, input_shapes or {}, batch)
    except DynamicDimsError as exc:  # bench runs on random inputs only: no --data to suggest
        where = model if isinstance(model, Path) else "the model"
        raise DataError(f"{where}: {exc.problem}", f"pass --input-shape {exc.example} with the sizes "
                        "your model takes") from None
    feed = random_feed(specs, shapes, np.random.default_rng(0))
    np.savez(path, **feed)
    return path, len(next(iter(feed.values())))


def _schedule(runs: int, rounds: int) -> list[int]:
    base, extra = divmod(runs, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def _fill(entry: BenchEntry, times_s: list[float], batch: int) -> None:
    t = np.asarray(times_s) * 1000.0
    entry.times_ms = [float(x) for x in t]
    entry.p50_ms, entry.p90_ms, entry.p99_ms = (float(np.percentile(t, q)) for q in (50, 90, 99))
    entry.mean_ms, entry.min_ms = float(t.mean()), float(t.min())
    entry.throughput = batch / (entry.mean_ms / 1000.0) if entry.mean_ms > 0 else 0.0


def _ratios(entries: list[BenchEntry]) -> None:
    first = entries[0]
    for e in entries:
        for k in RATIO_KEYS:
            a, b = getattr(e, k), getattr(first, k)
            e.ratios[k] = (a / b) if a is not None and b else None


def _check(models: Sequence[Any], runs: int, warmup: int, batch: int) -> list[Path]:
    if not models:
        raise ConfigError("no model to benchmark", "pass one or more .onnx files")
    if runs < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"runs={runs}, warmup={warmup}, batch={batch} are out of range",
                          "use runs >= 1, warmup >= 0, batch >= 1")
    paths = []
    for m in models:
        p = Path(getattr(m, "path", None) or m)
        if not p.is_file():
            raise ModelLoadError(f"model file {p} does not exist", "check the path")
        paths.append(p)
    return paths


def bench(models: Sequence[Any], *, threads: int | None = 1, provider: str = "CPUExecutionProvider",
          runs: int = 50, warmup: int = 5, batch: int = 1, input_shapes: dict | None = None,
          ort_format: bool = False, mobile_check: bool = False, rounds: int = 10,
          progress: Any = None) -> BenchReport:
    """Benchmark model files side by side (interleaved runs, one child process per model).

    ``progress(round_done, rounds)`` is called after every round.
    """
    from onnxcomp.measure.ortformat import mobile_check as _mobile, to_ort

    provider = resolve_provider(provider)
    paths = _check(models, runs, warmup, batch)
    report = BenchReport([], provider, threads, runs, warmup, batch, min(rounds, runs))
    with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-bench")) as tmp:
        tmpdir = Path(tmp)
        targets = [(str(p), p, i) for i, p in enumerate(paths)]  # (name, file, index of its source)
        if ort_format:
            for i, p in enumerate(paths):
                (tmpdir / f"ort{i}").mkdir()
                out, why = to_ort(p, tmpdir / f"ort{i}")
                if out is not None:
                    targets.append((f"{p} (.ort)", out, i))
                else:
                    report.notes.append(why)
        entries = [BenchEntry(name, str(p), io_size(p)) for name, p, _ in targets]
        if mobile_check:
            for e, p in zip(entries, paths):
                e.mobile = _mobile(p)
        fed = [_feed(p, tmpdir, i, batch, input_shapes) for i, p in enumerate(paths)]
        feeds = [f for f, _ in fed]
        for p, (_, n) in zip(paths, fed):
            if n != batch:
                report.notes.append(f"{p}: its inputs fix the batch at {n}: timed at batch {n}, not {batch}")
        workers: list[_Worker] = []
        try:
            for i, (e, (_, p, src)) in enumerate(zip(entries, targets)):
                workers.append(_Worker(p, feeds[src], threads, provider, tmpdir / f"worker{i}.log"))
                e.create_s = workers[-1].ready["create_s"]
            times: list[list[float]] = [[] for _ in workers]
            if warmup:
                for w in workers:
                    w.ask({"cmd": "run", "n": warmup})
            for r, n in enumerate(_schedule(runs, report.rounds)):
                order = range(len(workers)) if r % 2 == 0 else reversed(range(len(workers)))
                for i in order:
                    times[i] += workers[i].ask({"cmd": "run", "n": n})["times"]
                if progress is not None:
                    progress(r + 1, report.rounds)
            for e, w, t, (_, _, src) in zip(entries, workers, times, targets):
                stop = w.ask({"cmd": "stop"})
                peak, base = stop["peak_rss"], w.ready.get("rss_base")
                e.peak_rss = peak
                e.model_rss = _above(peak, base)
                e.loaded_rss = _above(w.ready.get("rss_loaded"), base)
                e.running_rss = _above(stop.get("rss_running"), base)
                _fill(e, t, fed[src][1])
        finally:
            for w in workers:
                w.close()
    _ratios(entries)
    report.entries = entries
    return report


def _above(value: int | None, base: int | None) -> int | None:
    return max(0, value - base) if value is not None and base is not None else None


def io_size(path: Path) -> int:
    """File size including a ``<name>.data`` external-data file beside it."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
