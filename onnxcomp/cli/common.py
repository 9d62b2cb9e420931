"""Options and output helpers shared by every command."""
from __future__ import annotations

import sys
from typing import Any, Callable

import click

from onnxcomp.report.tables import to_json


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout instead of the tables.")(f)


def input_shape_option(f: Callable) -> Callable:
    return click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=DIMS",
                        help="Static shape for an input with dynamic dims, e.g. input=1x3x224x224 "
                             "(repeatable).")(f)


def output_option(f: Callable) -> Callable:
    return click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                        help="Output file (default: <stem>.<command>.onnx beside the input).")(f)


def force_option(f: Callable) -> Callable:
    return click.option("--force", is_flag=True,
                        help="Allow -o to name the input file (it is replaced atomically).")(f)


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")(f)


model_argument = click.argument("model", type=click.Path(dir_okay=True))


def emit(report: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print the report as JSON (for pipelines) or as human-readable text."""
    click.echo(to_json(report) if as_json else human(report))


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only for a person watching: stderr is a TTY and --quiet is not set."""
    return not quiet and sys.stderr.isatty()


# --- calibration data, quality gates and the write summary (shared by every writing command) ---

class FractionType(click.ParamType):
    """A fraction in 0..1, written 0.01 or 1%."""

    name = "FRACTION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            v = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a fraction (write 0.01 or 1%)", param, ctx)
        if not 0.0 <= v <= 1.0:
            self.fail(f"{value!r} is outside 0..1 (write 0.01 or 1%)", param, ctx)
        return v


def data_options(f: Callable | None = None, *, input_shape: bool = True) -> Callable:
    """Add --data, --labels, --batch-size, --num-samples, --preprocess (and --input-shape).

    Use ``@data_options`` or, when the command already has --input-shape,
    ``@data_options(input_shape=False)``. Turn the values into data with :func:`data_from_options`.
    """
    def deco(fn: Callable) -> Callable:
        opts = [
            click.option("--data", "data", type=click.Path(), default=None, metavar="PATH",
                         help="Calibration/evaluation data: .npz (one array per input name, samples on "
                              "axis 0, optional 'labels'), .npy, a folder of .npy files or of images. "
                              "Default: random data (no quality guarantee)."),
            click.option("--labels", "labels", type=click.Path(), default=None, metavar="PATH",
                         help="Task labels (.npy, one class index per sample) to report accuracy; "
                              "default: the 'labels' array of the --data .npz, if any."),
            click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=16,
                         show_default=True, help="Samples per onnxruntime run."),
            click.option("--num-samples", "num_samples", type=click.IntRange(min=1), default=None,
                         help="Use at most N samples (random data: default one batch)."),
            click.option("--preprocess", "preprocess", default=None, metavar="SPEC",
                         help="Image folders only, e.g. 'resize=256,crop=224,scale=1/255,mean=0.485/"
                              "0.456/0.406,std=0.229/0.224/0.225,channels=RGB,layout=NCHW'."),
        ]
        if input_shape:
            opts.append(input_shape_option)
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return deco(f) if f is not None else deco


def data_from_options(model: Any, *, data: str | None = None, batch_size: int = 16,
                      num_samples: int | None = None, input_shape: tuple[str, ...] = (),
                      preprocess: str | None = None, **_: Any) -> Any:
    """The CalibrationData the data options describe (load it before doing any work: fail fast)."""
    from onnxcomp.data.calibration import load_data
    from onnxcomp.graph.shapes import parse_input_shapes

    return load_data(data, model, input_shapes=parse_input_shapes(input_shape), batch_size=batch_size,
                     num_samples=num_samples, preprocess=preprocess)


def gate_options(f: Callable) -> Callable:
    """Add --max-drop and --min-agreement (a miss exits 3; the output is still written)."""
    f = click.option("--min-agreement", "min_agreement", type=FractionType(), default=None, metavar="A",
                     help="Fail (exit 3) if top-1 agreement with the original (cosine similarity for "
                          "outputs that are not class scores) is below A, e.g. 0.99 or 99%.")(f)
    return click.option("--max-drop", "max_drop", type=FractionType(), default=None, metavar="D",
                        help="Fail (exit 3) if accuracy drops by more than D (with labels; 0.01 or 1% = "
                             "one point); without labels, if top-1 agreement (or cosine) is below 1-D.")(f)


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
    lines += render_fidelity_lines(result.fidelity)
    if getattr(result, "unchanged", False):
        lines.append("note: nothing to compress: the output holds the same graph and weights as the input")
    if result.gate_failed:
        lines.append(f"quality gate missed: {result.gate_failed} (the file is written)")
    return "\n".join(lines)


def emit_write_result(result: Any, as_json: bool) -> None:
    """Print the write summary (or JSON), then raise QualityGateError (exit 3) if a gate was missed."""
    from onnxcomp.errors import QualityGateError

    emit(result, as_json, render_write_result)
    if result.gate_failed:
        raise QualityGateError(result.gate_failed, f"the output was still written to {result.path}")


def emit_outcome(report: dict, result: Any, as_json: bool, human: str) -> None:
    """Print a pass report with the write summary (or one JSON object), then apply the gates.

    JSON: ``{**report, "write": result.to_dict()}``. A missed gate raises QualityGateError
    (exit 3) after printing; the file is already written.
    """
    from onnxcomp.errors import QualityGateError
    from onnxcomp.report.tables import to_json as _to_json

    if as_json:
        click.echo(_to_json({**report, "write": result.to_dict()}))
    else:
        click.echo(human)
        click.echo(render_write_result(result))
    if result.gate_failed:
        raise QualityGateError(result.gate_failed, f"the output was still written to {result.path}")


def load_for_write(model: str, max_drop: float | None, min_agreement: float | None,
                   **data_opts: Any) -> tuple[Any, Any]:
    """(original Model, CalibrationData) for a writing command; bad gates/data fail before work."""
    from onnxcomp.pipeline.write import check_gate_values

    check_gate_values(max_drop, min_agreement)
    original = load_model(model)
    return original, data_from_options(original.proto, **data_opts)


def load_model(path: str) -> Any:
    """A Model whose big external tensors stay on disk until a pass reads them (io.load lazy=True):
    a model above 2 GB is not held in memory twice (as the input and as the copy being rewritten)."""
    from onnxcomp import api

    return api.load(path, lazy=True)

