"""The load memory of a model as ``onnxcomp bench`` measures model RSS, without the timed runs, and
without the allocator's noise (:data:`STEADY_MALLOC`).

Each model is loaded in a fresh child process (``bench_worker`` in load mode): a process that
loaded a larger model first measures less, its freed heap reused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import onnx

from onnxcomp import io
from onnxcomp.errors import DataError, ModelLoadError
from onnxcomp.io.sessions import resolve_provider
from onnxcomp.measure.bench import _above, _feed


# glibc's allocator raises its mmap threshold as large blocks are freed, after which freed blocks
# stay in the heap, resident: the same load then peaks up to ~20 % apart from run to run (vit_digits
# 24-29 MB, effnet_lite0 46-61 MB). A fixed threshold returns every large block when it is freed,
# so a load peaks at what onnxruntime holds at once, the same every run (+-0.1 MB): the budget's
# choices do not follow noise. (Other allocators ignore the variable.)
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


class _Loader:
    """A child process that loads one model (``bench_worker`` load mode) and reports its peak."""

    def __init__(self, feed: Path | None, provider: str, log: Path) -> None:
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxcomp.measure.bench_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**os.environ, **STEADY_MALLOC})
        self._send({"loads": True, "feed": str(feed) if feed else None, "threads": 1, "provider": provider})

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        reply = json.loads(line) if line else {"error": "the measuring process died"}
        if "error" in reply:
            raise ModelLoadError(f"onnxruntime cannot load the model to measure it: {reply['error']}",
                                 "check the model with `onnxcomp inspect`")
        return reply

    def start(self, model: Path) -> None:
        self._send({"model": str(model)})  # read once the process is ready

    def result(self) -> int | None:
        self._read()  # ready
        reply = self._read()
        return _above(reply["peak_rss"], reply["rss_base"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Meter:
    """Loads measured round after round (``peaks``, or ``start`` then ``finish``), each in a fresh
    process; ``spare`` processes start a round ahead, so a round waits for its loads, not for
    processes to start. ``like``: a model with the inputs of those to measure (in memory, or its
    file). Close it (or use ``with``) to stop what still runs and remove its files."""

    def __init__(self, like: onnx.ModelProto | Path, provider: str = "CPUExecutionProvider",
                 spare: int = 2) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-load"))
        self._count, self._spare, self._spares, self._running = 0, spare, [], []
        try:
            self._feed = _feed(like, Path(self._tmp.name), 0, 1, None)[0]
        except DataError:
            self._feed = None
        except BaseException:
            self._tmp.cleanup()
            raise
        self._provider = resolve_provider(provider)
        self._spares = [self._spawn() for _ in range(spare)]

    def _spawn(self) -> _Loader:
        self._count += 1
        return _Loader(self._feed, self._provider, Path(self._tmp.name) / f"load{self._count}.log")

    def start(self, paths: Sequence[Path], then: int | None = None) -> list[_Loader]:
        """Begin loading each model, all at once; ``then``: the processes to start for the next
        round (``spare`` when None; 0 when there is none)."""
        loaders = [self._spares.pop(0) if self._spares else self._spawn() for _ in paths]
        self._running += loaders
        for loader, path in zip(loaders, paths):
            loader.start(Path(path))
        want = self._spare if then is None else then
        self._spares += [self._spawn() for _ in range(want - len(self._spares))]
        return loaders

    def finish(self, loaders: list[_Loader]) -> list[int | None]:
        """Each started load's peak (None where /proc cannot tell; ModelLoadError if one cannot load)."""
        try:
            return [loader.result() for loader in loaders]
        finally:
            for loader in loaders:
                loader.close()
                self._running.remove(loader)

    def peaks(self, paths: Sequence[Path], then: int | None = None) -> list[int | None]:
        """Each model's load peak, all at once (``then``: see :meth:`start`)."""
        return self.finish(self.start(paths, then))

    def close(self) -> None:
        for loader in self._spares + self._running:
            loader.close()
        self._spares, self._running = [], []
        self._tmp.cleanup()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Loads:
    """Loads measured in the background: each model's fresh process starts at once; ``result()``
    waits for their peaks (see :meth:`Meter.finish`). ``like``: a model with the same inputs, in
    memory (else the first file is read)."""

    def __init__(self, paths: Sequence[Path], provider: str = "CPUExecutionProvider",
                 like: onnx.ModelProto | None = None) -> None:
        self._meter = Meter(like if like is not None else Path(paths[0]), provider, spare=0)
        self._peaks: list[int | None] | None = None
        try:
            self._running = self._meter.start(paths)
        except BaseException:
            self._meter.close()
            raise

    def result(self) -> list[int | None]:
        if self._peaks is None:
            try:
                self._peaks = self._meter.finish(self._running)
            finally:
                self.close()
        return self._peaks

    def close(self) -> None:
        """Stop what still runs (a measurement no longer needed) and remove its files."""
        self._meter.close()


def load_peaks(paths: Sequence[Path], provider: str = "CPUExecutionProvider", parallel: int = 2,
               like: onnx.ModelProto | None = None) -> list[int | None]:
    """The peak resident memory onnxruntime adds while it creates a session of each model and runs
    it once on random inputs (only creates it when an input has dynamic dims), as ``bench``'s
    model RSS: each in a fresh child process (one that loaded a larger model first measures less,
    its freed heap reused), ``parallel`` at a time (see :class:`Meter`). None where /proc cannot
    tell."""
    if not paths:
        return []
    step = max(1, parallel)
    with Meter(like if like is not None else Path(paths[0]), provider, spare=0) as meter:
        return [peak for start in range(0, len(paths), step) for peak in meter.peaks(paths[start:start + step])]
