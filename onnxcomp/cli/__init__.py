"""The ``onnxcomp`` command line: one module per command, options generated from the config fields.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback); 3 a quality
gate was not met (the output is still written); 1 a bug (traceback); 130 interrupted (SIGINT),
143 terminated (SIGTERM): either way no output or temp file is left behind.

:func:`main` installs the signal handling before it imports anything heavy, so an interrupt
during start-up exits like one during the work.
"""
from __future__ import annotations

import signal
import sys
import threading

from onnxcomp.cli.signals import SIGNALLED, Terminated, quiet_unraisable, raise_interrupt, raise_terminated

__all__ = ["Terminated", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    SIGNALLED.clear()
    hook = sys.unraisablehook
    sys.unraisablehook = quiet_unraisable(hook)
    handlers = {}  # the handlers to put back, read before ours go in: a signal may come at any line
    if threading.current_thread() is threading.main_thread():
        handlers[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where the shell ignores it)
            handlers[signal.SIGINT] = signal.default_int_handler
    try:  # from here on an interrupt, even one while the handlers go in, ends in _interrupted
        if signal.SIGTERM in handlers:
            signal.signal(signal.SIGTERM, raise_terminated)  # unwinds like Ctrl-C, from the first line
        if signal.SIGINT in handlers:
            signal.signal(signal.SIGINT, raise_interrupt)
        code = _run(argv)
    except KeyboardInterrupt as exc:  # during start-up, before the command's own handling
        code = _interrupted(exc)
    except Exception as exc:  # an interrupt inside a class body while importing comes wrapped
        cause = _interrupt_in(exc)  # ("Error calling __set_name__"): still an interrupt
        if cause is None:
            raise
        code = _interrupted(cause)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        sys.unraisablehook = hook
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        _exit_if_abandoned(code)
    if argv is None:
        sys.exit(code)
    return code


def _interrupted(exc: BaseException) -> int:
    sys.stderr.write("interrupted; no output written\n")
    term = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)
    return 128 + (signal.SIGTERM if term else signal.SIGINT)


def _interrupt_in(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt (or Terminated) an exception was raised from, if any."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _exit_if_abandoned(code: int) -> None:
    """An interrupt during a long LAPACK call leaves it running in a worker thread (see
    :func:`onnxcomp.algo.linalg.interruptible`); the normal exit would wait for it (OpenBLAS joins
    its threads), so the process ends here, its cleanup done and its streams flushed."""
    linalg = sys.modules.get("onnxcomp.algo.linalg")
    if linalg is not None and linalg.running():
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str] | None) -> int:
    import warnings

    import click

    from onnxcomp.config import cli_spelling
    from onnxcomp.errors import OnnxCompError

    try:
        from onnxcomp.cli.app import cli

        with warnings.catch_warnings(), cli_spelling():  # stderr: one error line, no library warnings
            warnings.simplefilter("ignore")
            rv = cli.main(args=argv, prog_name="onnxcomp", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except OnnxCompError as exc:
        click.echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        return 2
    except click.exceptions.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        return _interrupted(exc)
