"""``onnxcomp factorize``: low-rank rewrites of convs and Gemm/MatMul that make onnxruntime faster."""
from __future__ import annotations

from typing import Any, Callable

import click

from onnxcomp import api
from onnxcomp.config import FACTORIZE_METHODS, FactorizeConfig
from onnxcomp.report.tables import fmt_count, fmt_pct, fmt_ratio, table
from onnxcomp.cli import cli
from onnxcomp.cli.common import (data_options, load_for_write, emit_outcome, force_option, gate_options,
    json_option, model_argument, output_option)


def _arrow(a: Any, b: Any, fmt: Callable = fmt_count) -> str:
    return f"{fmt(a)} -> {fmt(b)}"


def _size(c) -> str:
    d = c.detail
    if "rank" in d:
        return f"{d['method']} r{'/'.join(map(str, d['rank']))}"
    return f"dw M={d['multiplier']}" if d.get("mode") == "depthwise" else f"grouped G={d['groups']}"


def render_changes(compressed, model_macs: tuple[int | None, int | None] | None = None) -> str:
    """Per-layer table (method, rank/multiplier, MACs, params, energy, error, latency) and skips."""
    lines = []
    for r in compressed.results:
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if v not in (None, False))
        lines.append(f"{r.pass_name}: {settings}")
        rows = []
        for c in r.applied:
            d = c.detail
            err = d.get("output_error")
            rows.append([d.get("layer", c.name), c.op, _size(c), _arrow(c.macs_before, c.macs_after),
                         _arrow(c.params_before, c.params_after), fmt_pct(d.get("energy")),
                         "-" if err is None else f"{err:.4f}", fmt_ratio(d.get("latency_ratio"))])
        if rows:
            lines.append(table(["layer", "op", "rewrite", "MACs", "params", "energy", "out err", "latency"],
                               rows, "lllrrrrr"))
        done = r.applied
        known = [c for c in done if c.macs_before is not None and c.macs_after is not None]
        if known:
            before, after = sum(c.macs_before for c in known), sum(c.macs_after for c in known)
            lines.append(f"rewrote {len(done)} layer(s): MACs {_arrow(before, after)} "
                         f"({fmt_ratio(after / before if before else None)}), params "
                         f"{_arrow(sum(c.params_before for c in done), sum(c.params_after for c in done))}")
        elif done:
            lines.append(f"rewrote {len(done)} layer(s) (shapes unknown: MACs not computed)")
        else:
            lines.append("rewrote no layer")
        if model_macs and model_macs[0] and model_macs[1] is not None:
            lines.append(f"model MACs per sample: {_arrow(*model_macs)} "
                         f"({fmt_ratio(model_macs[1] / model_macs[0])})")
        lines += [f"skipped {c.detail.get('layer', c.name)} ({c.op}): {c.reason}" for c in r.skipped]
        lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def model_macs(original, compressed, input_shapes) -> tuple[int | None, int | None]:
    """Total MACs per sample before and after (None where shape inference cannot tell)."""
    return (api.inspect(original, input_shapes=input_shapes).total_macs,
            api.inspect(compressed.model, input_shapes=input_shapes).total_macs)


def common_options(f: Callable) -> Callable:
    """--include/--exclude/--min-params, --data-aware, --measure, --allow-growth, --threads, --dry-run."""
    opts = [
        click.option("--include", multiple=True, metavar="GLOB",
                     help="Only weights/nodes matching (repeatable)."),
        click.option("--exclude", multiple=True, metavar="GLOB",
                     help="Never weights/nodes matching (repeatable)."),
        click.option("--min-params", type=click.IntRange(min=0), default=1024, show_default=True,
                     help="Skip weights with fewer parameters."),
        click.option("--data-aware/--no-data-aware", "data_aware", default=None,
                     help="Minimise each layer's output error on the calibration data (default: on "
                          "with real --data, never with random data)."),
        click.option("--calib-samples", "calib_samples", type=int, default=64, show_default=True,
                     help="Calibration samples used for the data-aware statistics."),
        click.option("--measure", is_flag=True,
                     help="Keep a rewrite only where onnxruntime (1 thread) runs that layer faster "
                          "(single-layer benchmark, original vs rewritten, interleaved)."),
        click.option("--allow-growth", is_flag=True, help="Rewrite even where MACs do not drop."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads."),
        click.option("--dry-run", is_flag=True, help="Report what would change; write nothing."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def finish_command(command: str, original, compressed, data, data_opts: dict, *, output, force, as_json,
                   max_drop, min_agreement, threads, dry_run) -> None:
    """Write (verified) and print the per-layer table with the write summary; or just the table."""
    from onnxcomp.report.tables import to_json
    from onnxcomp.pipeline.write import finish

    shapes = None
    if data_opts.get("input_shape"):
        from onnxcomp.graph.shapes import parse_input_shapes
        shapes = parse_input_shapes(data_opts["input_shape"])
    macs = model_macs(original, compressed, shapes)
    human = render_changes(compressed, macs)
    if dry_run:
        click.echo(to_json({**compressed.to_dict(), "model_macs": macs}) if as_json
                   else human + "\ndry run: nothing written")
        return
    result = finish(original, compressed.proto, output, command=command, data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement, labels=data_opts.get("labels"),
                    threads=threads)
    emit_outcome({**compressed.to_dict(), "model_macs": macs}, result, as_json, human)


@cli.command("factorize")
@model_argument
@click.option("--method", type=click.Choice(FACTORIZE_METHODS), default="auto", show_default=True,
              help="spatial: kxk -> kx1 + 1xk; tucker2: 1x1 -> kxk core -> 1x1; svd: two factors "
                   "(Gemm, MatMul, convs); auto: per layer the lowest error at the target.")
@click.option("--rank", type=int, default=None, help="Explicit rank (tucker2: both ranks).")
@click.option("--energy", type=float, default=None,
              help="Smallest rank keeping this fraction of the squared singular values, e.g. 0.9.")
@click.option("--ratio", type=float, default=None,
              help="Target MACs after/before per layer (params when shapes are unknown); default 0.5.")
@click.option("--round-to", "round_to", type=int, default=8, show_default=True,
              help="Round ranks up to a multiple of this (1 disables); never above full rank.")
@click.option("--max-error", "max_error", type=float, default=None,
              help="Skip layers whose estimated relative output error would exceed this, e.g. 0.1.")
@click.option("--hooi-iters", "hooi_iters", type=int, default=2, show_default=True,
              help="HOOI refinement sweeps for tucker2 (data-free).")
@click.option("--sequential/--no-sequential", default=True, show_default=True,
              help="Data-aware: fit layers in waves, each on the inputs the layers rewritten before it "
                   "produce, toward the original outputs (--no-sequential: all on the original inputs).")
@click.option("--waves", type=int, default=8, show_default=True, help="Number of sequential waves.")
@common_options
@data_options
@gate_options
@output_option
@force_option
@json_option
def factorize_cmd(model: str, method: str, rank: int | None, energy: float | None, ratio: float | None,
                  round_to: int, max_error: float | None, hooi_iters: int, sequential: bool, waves: int,
                  include: tuple[str, ...],
                  exclude: tuple[str, ...], min_params: int, data_aware: bool | None, calib_samples: int,
                  measure: bool, allow_growth: bool, threads: int | None, dry_run: bool,
                  output: str | None, force: bool, as_json: bool, max_drop: float | None,
                  min_agreement: float | None, **data_opts) -> None:
    """Factorize convs and Gemm/MatMul into low-rank pairs/triples that run faster.

    A layer is rewritten only where its MACs drop (and, with --measure, where onnxruntime runs it
    faster); every rewrite keeps the original output tensor names. With real --data the factors
    minimise each layer's output error on it (whitening by the input covariance, least-squares
    refit), the default; random data is only for smoke runs.
    """

    FactorizeConfig(method=method, rank=rank, energy=energy, ratio=ratio, round_to=round_to,
                    max_error=max_error, hooi_iters=hooi_iters, max_samples=calib_samples,
                    waves=waves)  # fail fast
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    shapes = None
    if data_opts.get("input_shape"):
        from onnxcomp.graph.shapes import parse_input_shapes
        shapes = parse_input_shapes(data_opts["input_shape"])
    compressed = api.factorize(original, method, rank=rank, energy=energy, ratio=ratio, round_to=round_to,
                               data=data, data_aware=data_aware, measure=measure, include=include,
                               exclude=exclude, min_params=min_params, allow_growth=allow_growth,
                               hooi_iters=hooi_iters, max_samples=calib_samples, max_error=max_error,
                               sequential=sequential, waves=waves, input_shapes=shapes, threads=threads)
    finish_command("factorize", original, compressed, data, data_opts, output=output, force=force,
                   as_json=as_json, max_drop=max_drop, min_agreement=min_agreement, threads=threads,
                   dry_run=dry_run)
