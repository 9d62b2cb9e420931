"""``onnxcomp compare``: how far a candidate's outputs moved from the original's."""
from __future__ import annotations

import math

import click

from typing import Any

from onnxcomp.cli.common import (data_options, emit, gate_options, json_option, load_data, load_model,
                                 progress_enabled, quiet_option, render_fidelity_lines, threads_option)
from onnxcomp.cli.options import take
from onnxcomp.config import DataConfig, Gates
from onnxcomp.report.tables import table

MAX_LAYER_ROWS = 30


def _f(x: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, fmt)


def _layer_rows(r: Any) -> tuple[list, int]:
    rows = r.per_layer or []
    start = 0
    if len(rows) > MAX_LAYER_ROWS and r.first_degraded:
        start = max(0, next(i for i, e in enumerate(rows) if e["tensor"] == r.first_degraded) - 2)
    shown = rows[start:start + MAX_LAYER_ROWS]
    out = [[e["tensor"], _f(e["cosine"], ".5f"), _f(e["rel_l2"], ".3g"), _f(e["sqnr_db"], ".1f"),
            _f(e["max_abs"], ".3g"), "<- degraded" if e["tensor"] == r.first_degraded else ""]
           for e in shown]
    return out, len(rows) - len(shown)


def _progress(total: int | None):
    def show(done: int, index: int, count: int) -> None:
        step = f"pass {index + 1}/{count}, " if count > 1 else ""
        click.echo(f"\rcomparing: {step}{done}/{total or '?'} samples", err=True, nl=False)
    return show


def render(r: Any, gate: str | None = None) -> str:
    """The human-readable compare report."""
    lines = [f"original: {r.original}", f"candidate: {r.candidate}", f"samples: {r.num_samples}"]
    lines += render_fidelity_lines(r)
    rows = [[o["name"], "x".join("N" if d is None else str(d) for d in o["shape"]),
             _f(o["top1_agreement"] and 100 * o["top1_agreement"], ".2f"),
             _f(o["top5_overlap"] and 100 * o["top5_overlap"], ".2f"), _f(o["cosine"], ".5f"),
             _f(o["rel_l2"], ".3g"), _f(o["sqnr_db"], ".1f"), _f(o["max_abs"], ".3g")] for o in r.outputs]
    lines += ["", table(["output", "shape", "top-1 %", "top-5 %", "cosine", "rel L2", "SQNR dB", "max abs"],
                        rows, "llrrrrrr")]
    if r.accuracy:
        a = r.accuracy
        lines.append(f"accuracy on {a['n']} labelled samples: original {100 * a['original']:.2f} %, "
                     f"candidate {100 * a['candidate']:.2f} % (drop {100 * a['drop']:.2f} points)")
    if r.per_layer is not None:
        layer_rows, more = _layer_rows(r)
        lines += ["", f"per layer: {len(r.per_layer)} tensors present in both graphs; first degraded: "
                      f"{r.first_degraded or 'none'}; worst: {r.worst or 'none'}"]
        if layer_rows:
            lines.append(table(["tensor", "cosine", "rel L2", "SQNR dB", "max abs", ""], layer_rows, "lrrrrl"))
        if more:
            lines.append(f"... {more} more tensors (see --json)")
    lines += ["", f"summary: {r.summary}"]
    if gate:
        lines.append(f"quality gate missed: {gate}")
    return "\n".join(lines)


@click.command("compare")
@click.argument("original", type=click.Path(dir_okay=True))
@click.argument("candidate", type=click.Path(dir_okay=True))
@data_options
@click.option("--per-layer", is_flag=True,
              help="Also compare every intermediate tensor present in both graphs and name where "
                   "fidelity is lost first.")
@threads_option
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="OUT.png",
              help="Save a per-layer SQNR plot (implies --per-layer; needs onnxcomp[plot]).")
@gate_options
@quiet_option
@json_option
def compare_cmd(original: str, candidate: str, per_layer: bool, threads: int | None, plot: str | None,
                quiet: bool, as_json: bool, **kw: Any) -> None:
    """Compare a candidate model's outputs with the original's on the same inputs.

    Reports per output top-1 agreement and top-5 overlap (class scores [N, C]), cosine similarity,
    relative L2 error, SQNR and max abs error; accuracy of both models when labels are given.
    Exit code 3 when --max-drop or --min-agreement is missed.

    Example: onnxcomp compare model.onnx model.prune90.onnx --data calib.npz --max-drop 0.01
    """
    from onnxcomp.errors import QualityGateError
    from onnxcomp.measure.fidelity import compare
    from onnxcomp.pipeline.write import check_gates

    dcfg, gates = take(DataConfig, kw), take(Gates, kw)
    max_drop, min_agreement = gates.max_drop, gates.min_agreement
    if plot:
        from onnxcomp.report.plots import require_matplotlib
        require_matplotlib()
    a, b = load_model(original), load_model(candidate)
    data = load_data(a.proto, dcfg)
    report = compare(a, b, data, labels=dcfg.labels, per_layer=per_layer or bool(plot), threads=threads,
                     progress=_progress(data.num_samples) if progress_enabled(quiet) else None,
                     metric=gates.metric, output=gates.judge)
    if progress_enabled(quiet):
        click.echo("\r\033[K", err=True, nl=False)
    gate = check_gates(report, max_drop, min_agreement)
    if plot:
        from onnxcomp.report.plots import plot_per_layer
        plot_per_layer(report, plot)
    out = report.to_dict() if as_json else report
    if as_json:
        out["gate_failed"] = gate
    emit(out, as_json, lambda r: render(r, gate))
    if gate:
        raise QualityGateError(gate, "the candidate misses the quality gate")
