"""Temporary files and folders of onnxcomp's own naming, and the removal of those a killed run
left behind."""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_swept: set[Path] = set()  # folders already swept by this process
TEMP_MARK = "onnxcomp"


STALE_AFTER_S = 600  # a temp entry whose creating process is gone counts as stale after this


ABANDONED_AFTER_S = 86400  # ... and after this whatever its pid (reused pids, other hosts)


_TEMP_NAME = re.compile(r"\.onnxcomp-(\d+)-[A-Za-z0-9_]+$")


def temp_prefix(base: str) -> str:
    """The prefix of every temporary file or folder onnxcomp makes: ``<base>.onnxcomp-<pid>-``.

    A run killed with SIGKILL cannot remove them; the mark and the pid let a later run tell its
    own leftovers from anything else (see :func:`sweep_stale`)."""
    return f"{base}.{TEMP_MARK}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(folder: Path, now: float | None = None) -> list[Path]:
    """Remove onnxcomp's temporary files and folders in ``folder`` that a killed run left: named
    by :func:`temp_prefix`, by a process that is gone, untouched for STALE_AFTER_S (or for
    ABANDONED_AFTER_S whatever the pid). Anything else is never touched. Returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_NAME.search(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        if age < STALE_AFTER_S or (age < ABANDONED_AFTER_S and _alive(int(m.group(1)))):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def sweep_once(folder: Path) -> None:
    """Sweep the output folder and the system temp folder, once per process each."""
    for f in (Path(folder).resolve(), Path(tempfile.gettempdir()).resolve()):
        if f not in _swept:
            _swept.add(f)
            sweep_stale(f)


class _Held:
    """SIGINT and SIGTERM recorded instead of handled while held, then delivered to the handlers
    that were in place (main thread only: elsewhere Python handles no signals)."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.arrived: list[int] = []

    def _hold(self, signum: int, frame: object) -> None:
        self.arrived.append(signum)

    def hold(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(s)
            if current is not None:  # None: a handler not set from Python, left alone
                self.previous[s] = current
                signal.signal(s, self._hold)

    def release(self) -> None:
        while self.previous:
            s, handler = self.previous.popitem()
            signal.signal(s, handler)
        arrived, self.arrived = self.arrived, []
        for s in dict.fromkeys(arrived):
            signal.raise_signal(s)  # the handler now in place runs (raises, exits or ignores)


@contextmanager
def temp_folder(prefix: str, folder: Path) -> Iterator[Path]:
    """A new folder ``<folder>/<prefix>...`` for the block, removed with all it holds afterwards.

    An interrupt that arrives while the folder is made or removed is held until that is done, so
    Ctrl-C or SIGTERM at any moment leaves no folder behind (it arrived between ``mkdtemp`` and
    the ``try`` that would remove it)."""
    held, path = _Held(), None
    try:
        held.hold()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        held.release()
        yield path
    finally:
        held.hold()
        try:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            held.release()
