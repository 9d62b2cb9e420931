"""Candidates of ``onnxcomp auto``: one recipe compressed on the calibration part and scored on the
held-out part, in this process or in parallel workers.

:func:`measure` is the one evaluation; :func:`evaluate_parallel` runs it for several recipes at
once with joblib (a top-level, picklable :func:`worker` that receives the serialized model), in
local worker processes or, inside :func:`backend` with a scheduler address, on a
dask.distributed cluster. Results come back in the order the recipes were given, whatever
finishes first, so a search is deterministic for a given number of jobs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from onnxcomp.errors import ConfigError
from onnxcomp.io import model_bytes
from onnxcomp.io.model import Model
from onnxcomp.pipeline import recipe as recipes

CONNECT_TIMEOUT = 10  # seconds to reach a dask scheduler before the search starts


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


def held_out_drop(original: Model, candidate: Model, holdout: list[dict],
                  threads: int | None) -> tuple[float, float | None]:
    """The quality drop on the held-out samples, and its one-sided 95 % upper bound."""
    from onnxcomp.measure.fidelity import compare

    rep = compare(original, candidate, holdout, threads=threads)
    _, value = rep.headline
    return float(1.0 - (value if value is not None else 0.0)), rep.drop_bound


def measure(original: Model, steps: list[tuple[str, dict]], calib: list[dict], holdout: list[dict],
            encoding: str, threads: int | None, progress: Any = None,
            memo: dict | None = None) -> tuple[Model, int, int | None, float, float | None]:
    """Compress ``original`` with ``steps`` on ``calib``; (model, bytes, MACs, drop, drop bound).
    ``memo`` carries measurements from one candidate to the next (see :func:`recipe.apply`)."""
    from onnxcomp.measure.inspect import inspect

    model = recipes.apply(original, recipes.make(steps, encoding=encoding), data=calib, threads=threads,
                          progress=progress, memo=memo).model
    macs = inspect(model.proto).total_macs
    d, bound = held_out_drop(original, model, holdout, threads)
    return model, model_bytes(model.proto), macs, d, bound


def worker(blob: bytes, steps: list[tuple[str, dict]], calib: list[dict], holdout: list[dict], encoding: str,
           threads: int, max_drop: float) -> dict:
    """One candidate in a worker: the serialized model in, the serialized candidate and what it
    measured out (bytes, MACs, drop, bound, within the drop)."""
    import onnx

    from onnxcomp.algo.linalg import blas_threads
    from onnxcomp.io import serialize

    with blas_threads(threads):
        model, size, macs, d, bound = measure(Model(onnx.load_from_string(blob)), steps, calib, holdout, encoding,
                                              threads)
    return {"model": serialize(model.proto), "size": size, "macs": macs, "drop": d, "bound": bound,
            "ok": d <= max_drop}


def worker_threads(threads: int | None, jobs: int) -> int:
    """onnxruntime / BLAS threads per worker: the total (default: this machine's cores) split
    among the jobs, so the workers do not oversubscribe the cores."""
    total = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(1, total // jobs)


def evaluate_parallel(original: Model, candidates: list[list[tuple[str, dict]]], calib: list[dict],
                      holdout: list[dict], encoding: str, threads: int | None, max_drop: float,
                      jobs: int, progress: Any = None) -> list[dict]:
    """:func:`worker` for every candidate, ``jobs`` at a time (joblib; its active backend, e.g.
    Dask inside :func:`backend`); the results in the order of ``candidates``. ``progress(label,
    done, total)`` is called as they arrive (in that order)."""
    import onnx
    from joblib import Parallel, delayed

    from onnxcomp.io import serialize

    blob = serialize(original.proto)  # lazy tensors read in: the workers get the whole model
    per = worker_threads(threads, jobs)
    out = []
    for r in Parallel(n_jobs=min(jobs, len(candidates)), return_as="generator")(
            delayed(worker)(blob, steps, calib, holdout, encoding, per, max_drop) for steps in candidates):
        r["model"] = Model(onnx.load_from_string(r["model"]))
        out.append(r)
        if progress is not None:
            progress("auto: candidates", len(out), len(candidates))
    return out


@contextlib.contextmanager
def backend(scheduler: str | None) -> Iterator[int | None]:
    """Inside, joblib runs on the dask.distributed cluster at ``scheduler`` (yields its number of
    workers), or locally (yields None). The scheduler is reached first, with a short timeout."""
    if scheduler is None:
        yield None
        return
    import joblib

    with connect(scheduler) as client, joblib.parallel_config(backend="dask"):
        yield max(1, len(client.nthreads()))


def connect(address: str) -> Any:
    """A dask.distributed Client for ``address``; a one-line ConfigError when dask.distributed is
    not installed or the scheduler cannot be reached within CONNECT_TIMEOUT seconds."""
    import logging

    from onnxcomp.config import spell_value

    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(f"{spell_value('scheduler', address)} needs dask.distributed, which is not installed",
                          "pip install 'onnxcomp[distributed]'") from None
    quiet = [logging.getLogger(n) for n in ("distributed", "distributed.client", "distributed.comm")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # a failed connection logs retries on stderr: the one-line error says it all
        lg.setLevel(logging.CRITICAL)
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError (bad address) ...
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ConfigError(f"cannot reach the dask scheduler at {address} ({reason})",
                          "check the address (tcp://host:8786) and that `dask scheduler` runs there") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def check_parallel(model: Model, jobs: int) -> None:
    """Workers receive the model as one protobuf: refuse more than one job above 2 GB, before any work."""
    from onnxcomp.config import spell_value
    from onnxcomp.io.tensors import PROTOBUF_LIMIT, tensor_bytes

    size = tensor_bytes(model.proto)
    if size > PROTOBUF_LIMIT:
        raise ConfigError(f"{spell_value('jobs', jobs)} sends the model to each worker as one protobuf, and its "
                          f"{size / 1e9:.2f} GB of tensors are more than one holds (2 GB)", "run with one job")


def foldable(model: Model) -> bool:
    """Whether the lossless fold (onnxcomp.graph.fold) changes anything in ``model`` (tried on a copy)."""
    import onnx

    from onnxcomp.graph.fold import fold_affine

    if not any(n.op_type in ("Conv", "Clip") for n in model.proto.graph.node):
        return False
    copy = onnx.ModelProto()
    copy.CopyFrom(model.proto)
    return fold_affine(copy).total > 0


def choose(trials: list[Trial], key: str, target: float | None = None) -> Trial | None:
    """With ``target``: the trial within the drop that meets it with the least compression (the
    highest size / MACs ratio: no more damage than the target asks). Else, or when none meets
    it: the trial within the drop with the lowest ``key``; when none is within it, the one with
    the smallest drop (the most aggressive one would be the least usable)."""
    ok = [t for t in trials if t.ok]
    if not trials:
        return None
    if not ok:
        return min(trials, key=lambda t: (t.drop if t.drop is not None else np.inf))
    meeting = [t for t in ok if target is not None and getattr(t, key) is not None and getattr(t, key) <= target]
    if meeting:  # the least compressed by a deterministic measure (a latency is noisy), then by ``key``
        least = "size_ratio" if key == "size_ratio" else "macs_ratio"
        return max(meeting, key=lambda t: (getattr(t, least) or 0.0, getattr(t, key)))
    return min(ok, key=lambda t: getattr(t, key) if getattr(t, key) is not None else np.inf)


def latencies(original: Model, trials: list[Trial], threads: int | None, sample: dict | None = None,
              every: bool = False) -> None:
    """Measure the passing candidates (``every``: all) side by side with the original (interleaved,
    1 thread), on inputs shaped like one sample of ``sample`` (a calibration batch: dynamic dims
    need sizes)."""
    import tempfile
    from pathlib import Path

    from onnxcomp import io
    from onnxcomp.measure.bench import bench

    ok = [t for t in trials if t.ok or every]
    if not ok:
        return
    with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-auto")) as tmp:
        paths = [Path(tmp) / "original.onnx"]
        io.save(original.proto, paths[0], verify=False)
        for i, t in enumerate(ok):
            paths.append(io.save(t.model.proto, Path(tmp) / f"c{i}.onnx", verify=False))
        shapes = None
        if sample:
            from onnxcomp.data.sampling import batch_unit

            shapes = {k: (batch_unit(original.proto),) + tuple(v.shape[1:]) for k, v in sample.items()}
        report = bench(paths, threads=threads or 1, runs=30, warmup=3, input_shapes=shapes)
    for t, entry in zip(ok, report.entries[1:]):
        t.latency_ratio = entry.ratios.get("p50_ms")


def held_out_note(holdout: list[dict], calib: list[dict], calib_samples: int, chosen: Trial, max_drop: float,
                  warnings: list[str]) -> str:
    """What ``auto`` held out, for its report; a warning when those samples cannot resolve the drop."""
    from onnxcomp.config import spell

    held = sum(len(next(iter(b.values()))) for b in holdout)
    if holdout is calib:  # fewer than 32 samples: none could be spared (said on stdout: one stderr line)
        return (f"nothing held out ({held} samples, fewer than 32): the drop is measured on the samples the "
                "compression was fitted to, so it is optimistic; pass 32 or more calibration samples "
                "(a quarter is then held out)")
    if chosen.ok and chosen.drop_bound is not None and chosen.drop_bound > max_drop:
        from onnxcomp.measure.holdout import samples_needed

        need = samples_needed(max_drop, chosen.drop)  # a drop above the gate is said by the gate itself
        warnings.append(f"the {held} held-out samples cannot resolve {spell('max_drop')} {max_drop:g}: the chosen "
                        f"model's drop {chosen.drop:.4f} may be up to {chosen.drop_bound:.4f} (95 % bound); pass "
                        f"more calibration samples (a quarter is held out; {f'about {need}' if need else 'many'} "
                        "held out for top-1 agreement)")
    return f"{held} of {calib_samples + held} samples held out"
