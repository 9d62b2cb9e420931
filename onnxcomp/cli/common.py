"""What every command shares: the model argument, JSON output, the data / gate / output options
(generated from their configs), and the writing flow every compression command follows."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click

from onnxcomp.cli.options import config_options, take
from onnxcomp.config import DataConfig, Gates, Holdout, Output, Runtime
from onnxcomp.errors import DataError
from onnxcomp.report.tables import to_json

model_argument = click.argument("model", type=click.Path(dir_okay=True))
data_options = config_options(DataConfig)
gate_options = config_options(Gates)
holdout_option = config_options(Holdout)
output_options = config_options(Output)
threads_option = config_options(Runtime)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout instead of the tables.")(f)


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")(f)


def writing_options(f: Callable) -> Callable:
    """Every writing command's shared options: threads, data, gates, hold-out, output, --quiet, --json."""
    for opt in reversed((threads_option, data_options, gate_options, holdout_option, output_options, quiet_option,
                         json_option)):
        f = opt(f)
    return f


def emit(report: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print the report as JSON (for pipelines) or as human-readable text."""
    click.echo(to_json(report) if as_json else human(report))


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only for a person watching: stderr is a TTY and --quiet is not set."""
    return not quiet and sys.stderr.isatty()


def load_model(path: str) -> Any:
    """A Model whose big external tensors stay on disk until a pass reads them (lazy): a model above
    2 GB is not held in memory twice (as the input and as the copy being rewritten)."""
    from onnxcomp.cli.signals import raise_if_signalled
    from onnxcomp.io.model import load_model as _load

    raise_if_signalled()  # (the imports before this point are where a library may drop an interrupt)
    return _load(path, lazy=True)


def load_data(model: Any, cfg: DataConfig) -> Any:
    """The CalibrationData the data options describe (loaded before any work: fail fast)."""
    from onnxcomp.data.calibration import load_data as _load
    from onnxcomp.graph.shapes import parse_input_shapes

    return _load(cfg.data, model, input_shapes=parse_input_shapes(cfg.input_shape), batch_size=cfg.batch_size,
                 num_samples=cfg.samples, preprocess=cfg.preprocess)


def settings_line(settings: dict, skip: tuple = (None,)) -> str:
    """A pass's settings as ``k=v`` pairs (the engine's counts go on their own line)."""
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "engine" and v not in skip)


def skipped_lines(result: Any) -> list[str]:
    """One line per weight a pass left alone, with the reason."""
    return [f"skipped {c.shown} ({c.op}): {c.reason}" for c in result.skipped]


def fold_lines(result: Any) -> list[str]:
    """The notes of the lossless fold a speed rewrite ends with (see onnxcomp.graph.fold)."""
    return [f"note: {n}" for r in result.results if r.pass_name == "fold" for n in r.notes]


def engine_line(result: Any) -> str | None:
    """What the calibrated passes cost: walks of the streaming engine, segments and batch runs."""
    walks = [w for r in result.results for w in r.settings.get("engine", [])]
    if not walks:
        return None
    return (f"calibration: {walks[0]['samples']} samples; {len(walks)} engine walk(s) "
            f"({', '.join(w['walk'] for w in walks)}), {sum(w['segments'] for w in walks)} segments, "
            f"{sum(w['batch_runs'] for w in walks)} batch runs (each node once per stream and walk)")


def render_fidelity_lines(report: Any) -> list[str]:
    """data / fidelity / notes lines of a FidelityReport."""
    lines = [f"data: {report.data}", f"fidelity: {report.metrics_line()}"]
    lines += [f"note: {n}" for n in report.notes]
    return lines


def render_write_result(result: Any) -> str:
    """Sizes, ratio and fidelity of a written model (random data is labelled as such)."""
    from onnxcomp.report.tables import fmt_bytes, fmt_ratio

    lines = [f"wrote {result.path}",
             f"size: {fmt_bytes(result.size_before)} -> {fmt_bytes(result.size_after)} "
             f"({fmt_ratio(result.ratio)} of the input)"]
    if result.fidelity is not None:
        lines += render_fidelity_lines(result.fidelity)
    else:
        lines.append(f"fidelity: not measured: {result.unmeasured}")
    if getattr(result, "unchanged", False):
        lines.append("note: nothing to compress: the output holds the same graph and weights as the input")
    if result.gate_failed:
        lines.append(f"quality gate missed: {result.gate_failed} (the file is written)")
    return "\n".join(lines)


def emit_outcome(report: dict, result: Any, as_json: bool, human: str) -> None:
    """Print a pass report with the write summary (or one JSON object), then apply the gates.

    JSON: ``{**report, "write": result.to_dict()}``. A missed gate raises QualityGateError
    (exit 3) after printing; the file is already written.
    """
    from onnxcomp.errors import QualityGateError

    if as_json:
        click.echo(to_json({**report, "write": result.to_dict()}))
    else:
        click.echo(human)
        click.echo(render_write_result(result))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.gate_failed:
        raise QualityGateError(result.gate_failed, f"the output was still written to {result.path}")


class Writing:
    """The flow of a command that writes a model, with every check before the long work.

    Built from the command's keyword arguments (the data, gate, output and threads options are
    taken out of them): the options are validated, the model loaded, the output path checked
    (not the input without --force, an existing folder) and the data loaded, all before
    :meth:`finish` is given the compressed result to write, verify, compare and report.
    """

    def __init__(self, model: str, kwargs: dict[str, Any], tag: str, as_json: bool = False) -> None:
        from onnxcomp import io

        self.data_cfg = take(DataConfig, kwargs)
        self.gates = take(Gates, kwargs)
        holdout = take(Holdout, kwargs).holdout
        self.out = take(Output, kwargs)
        self.threads = take(Runtime, kwargs).threads
        self.as_json = as_json
        from onnxcomp.cli.progress import progress_for

        self.progress = progress_for(bool(kwargs.pop("quiet", False)))
        self.original = load_model(model)
        self.path = Path(self.out.output) if self.out.output else io.default_output(self.original.path, tag)
        io.check_output(self.path, self.original.path, self.out.force, "model")
        self.unmeasured = None
        try:
            self.data = load_data(self.original.proto, self.data_cfg)
        except DataError as exc:  # random inputs need sizes the model leaves open: run data-free
            if self.data_cfg.data is not None or self.data_cfg.input_shape:
                raise
            if self.gates.max_drop is not None or self.gates.min_agreement is not None:
                raise DataError(f"the quality gates need outputs to compare, and {exc.problem}", exc.fix) from None
            self.data, self.unmeasured = None, f"{exc.problem}; {exc.fix}"
        self.judged_on, self.labels, self.held = self.data, self.data_cfg.labels, False
        self._hold_out(holdout)

    def _hold_out(self, given: float | None) -> None:
        """Keep the last samples of --data out of the compression to judge the output on them
        (--holdout; by default a quarter when a gate is given), before any work."""
        from onnxcomp.data import holdout as ho
        from onnxcomp.errors import ConfigError

        gated = self.gates.max_drop is not None or self.gates.min_agreement is not None
        if given and (self.data is None or self.data.random):
            raise ConfigError(f"--holdout {given:g} needs real samples to hold out", "pass --data FILE.npz")
        frac = ho.fraction(given, self.data, gated)
        if frac > 0:
            total = ho.count(self.data)
            self.data, self.judged_on = ho.split(self.data, frac)
            self.labels = ho.held_labels(self.data_cfg.labels, total, self.judged_on.num_samples)
            self.held = True

    @property
    def input_shapes(self) -> dict:
        from onnxcomp.graph.shapes import parse_input_shapes

        return parse_input_shapes(self.data_cfg.input_shape)

    def write(self, result: Any, command: str = "") -> Any:
        """Write ``result`` (verified, atomic) and compare it with the input; the WriteResult."""
        from onnxcomp.cli.signals import raise_if_signalled
        from onnxcomp.pipeline.write import finish

        raise_if_signalled()
        written = finish(self.original, result.proto, self.path, command=command, data=self.judged_on,
                         force=self.out.force, max_drop=self.gates.max_drop, min_agreement=self.gates.min_agreement,
                         labels=self.labels, threads=self.threads, metric=self.gates.metric,
                         judged=self.gates.judge, unmeasured=self.unmeasured)
        report = written.fidelity
        if report is not None and not report.random_data and not self.held and command != "auto":
            report.notes.append(f"measured on the {report.num_samples} samples the compression was fitted to, which "
                                "flatter calibrated methods; --holdout 0.25 measures on samples it never saw")
        return written

    def finish(self, result: Any, human: str, report: dict | None = None, command: str = "",
               written: Any = None) -> Any:
        """Write ``result`` (unless ``written`` already), print the report, apply the gates."""
        written = written if written is not None else self.write(result, command)
        emit_outcome(result.to_dict() if report is None else report, written, self.as_json, human)
        return written

def refuse_given(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    """A usage error when any of ``names`` was given on the command line (it would be ignored)."""
    given = [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise click.UsageError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply {why}")
