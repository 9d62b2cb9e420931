"""The load memory of a model as ``onnxcomp bench`` measures model RSS, without the timed runs.

Each model is loaded in a fresh child process (``bench_worker`` in load mode): a process that
loaded a larger model first measures less, its freed heap reused.
"""
from __future__ import annotations

import json
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


class _Loader:
    """A child process that loads one model (``bench_worker`` load mode) and reports its peak."""

    def __init__(self, feed: Path | None, provider: str, log: Path) -> None:
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxcomp.measure.bench_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True)
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
        self._read()  # ready
        self._send({"model": str(model)})

    def result(self) -> int | None:
        reply = self._read()
        return _above(reply["peak_rss"], reply["rss_base"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def load_peaks(paths: Sequence[Path], provider: str = "CPUExecutionProvider", parallel: int = 2,
               like: onnx.ModelProto | None = None) -> list[int | None]:
    """The peak resident memory onnxruntime adds while it creates a session of each model and runs
    it once on random inputs (only creates it when an input has dynamic dims), as ``bench``'s
    model RSS: each in a fresh child process (one that loaded a larger model first measures less,
    its freed heap reused), ``parallel`` at a time; inputs of the first model. None where /proc
    cannot tell. ``like``: a model with the same inputs, in memory (else the first file is read)."""
    out: list[int | None] = []
    with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-load")) as tmp:
        try:
            feed = _feed(like if like is not None else Path(paths[0]), Path(tmp), 0, 1, None)[0] if paths else None
        except DataError:
            feed = None
        provider = resolve_provider(provider)
        for start in range(0, len(paths), max(1, parallel)):
            batch = paths[start:start + max(1, parallel)]
            loaders = [_Loader(feed, provider, Path(tmp) / f"load{start + k}.log") for k in range(len(batch))]
            try:
                for loader, p in zip(loaders, batch):
                    loader.start(Path(p))
                out += [loader.result() for loader in loaders]
            finally:
                for loader in loaders:
                    loader.close()
    return out
