"""Progress on stderr for a person watching: one bar per long step (an engine walk over the
layers, a sensitivity sweep, a comparison), drawn by tqdm; silent when stderr is not a terminal
or with ``--quiet``."""
from __future__ import annotations

import sys
from typing import Any


class Bars:
    """A ``progress(label, done, total)`` callback that draws one bar per label, in turn."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._label: str | None = None

    def __call__(self, label: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None or label != self._label:
            self.close()
            self._label = label
            unit = {"compare": "sample", "auto: candidates": "candidate"}.get(label, "layer")
            self._bar = tqdm(total=total, desc=label, unit=unit,
                             file=sys.stderr, leave=False, ncols=_columns())
        self._bar.n = done
        self._bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._label = None


def _columns() -> int:
    """The terminal's width (some terminals report 0 columns: then 80)."""
    import os

    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except OSError:
        return 80


def progress_for(quiet: bool) -> Bars | None:
    """Bars when a person watches (stderr is a terminal and not ``--quiet``), else None."""
    return Bars() if not quiet and sys.stderr.isatty() else None
