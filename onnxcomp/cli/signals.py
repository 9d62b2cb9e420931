"""SIGTERM and SIGINT as exceptions, and a record of them that a library cannot drop."""
from __future__ import annotations

import signal
from typing import Any, Callable

SIGNALLED: list[int] = []  # what arrived: a library that drops the exception cannot hide it


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so every cleanup (temp files, outputs not finished) runs."""


def raise_terminated(signum: int, frame: object) -> None:
    SIGNALLED.append(signum)
    raise Terminated()


def raise_interrupt(signum: int, frame: object) -> None:
    SIGNALLED.append(signum)
    raise KeyboardInterrupt()


def quiet_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that leaves out the interrupts these handlers raised where Python
    cannot raise them (a weakref callback of importlib's module locks during start-up printed
    "Exception ignored in ..." and a traceback): they are recorded, and raised again before the
    work (:func:`raise_if_signalled`). Anything else goes to ``previous``."""
    def hook(info: Any) -> None:
        if not (SIGNALLED and isinstance(info.exc_value, KeyboardInterrupt)):
            previous(info)
    return hook


def raise_if_signalled() -> None:
    """Raise again an interrupt something caught and dropped (a bare ``except`` in a library while
    it imports): called before a command's work and before it writes."""
    if SIGNALLED:
        raise Terminated() if SIGNALLED[-1] == signal.SIGTERM else KeyboardInterrupt()
