"""The ``onnxcomp`` command line: one sub-command per capability.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback); 3 a quality
gate was not met (the output is still written); 1 a bug (traceback); 130 interrupted (SIGINT),
143 terminated (SIGTERM): either way no output or temp file is left behind.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings

import click

from onnxcomp.errors import OnnxCompError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="onnxcomp")
def cli() -> None:
    """Post-training compression of ONNX models: prune, factorize, cluster, benchmark."""


def _register() -> None:
    from onnxcomp.cli import inspect_cmd  # noqa: F401 - each module adds its command to ``cli``
    from onnxcomp.cli import bench_cmd, compare_cmd  # noqa: F401
    from onnxcomp.cli import cluster_cmd, compress_cmd, pack_cmd  # noqa: F401
    from onnxcomp.cli import prune_cmd  # noqa: F401
    from onnxcomp.cli import auto_cmd, sensitivity_cmd  # noqa: F401
    from onnxcomp.cli import depthwise_cmd, factorize_cmd  # noqa: F401
    from onnxcomp.cli import structured  # noqa: F401 - prune-channels (= prune --structured)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so every cleanup (temp files, outputs not finished) runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises():
    """While a command runs, SIGTERM unwinds like Ctrl-C instead of killing the process mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    _register()
    try:
        with warnings.catch_warnings(), _sigterm_raises():  # stderr: one error line, no library warnings
            warnings.simplefilter("ignore")
            rv = cli.main(args=argv, prog_name="onnxcomp", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except OnnxCompError as exc:
        click.echo(f"error: {exc.message}", err=True)
        code = exc.exit_code
    except click.exceptions.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        code = 2
    except click.exceptions.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        code = 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        click.echo("interrupted; no output written", err=True)
        term = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)
        code = 128 + (signal.SIGTERM if term else signal.SIGINT)
    if argv is None:
        sys.exit(code)
    return code
