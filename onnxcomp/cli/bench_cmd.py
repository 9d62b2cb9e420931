"""``onnxcomp bench``: size, load time, latency, throughput and memory in onnxruntime."""
from __future__ import annotations

import os

import click

from typing import Any

from onnxcomp.cli.common import emit, json_option, progress_enabled, quiet_option
from onnxcomp.cli.options import config_options
from onnxcomp.config import DataConfig
from onnxcomp.report.tables import fmt_bytes, fmt_ratio, table


def _name(path: str) -> str:
    return os.path.basename(path.replace(" (.ort)", "")) + (" (.ort)" if path.endswith("(.ort)") else "")


def _progress(done: int, total: int) -> None:
    click.echo(f"\rbenchmarking: round {done}/{total}", err=True, nl=False)


def render(r: Any) -> str:
    """The human-readable benchmark tables."""
    threads = "default" if r.threads is None else r.threads
    lines = [f"provider {r.provider}, threads {threads}, batch {r.batch}, {r.runs} runs in {r.rounds} "
             f"interleaved rounds after {r.warmup} warmup runs (one process per model)", ""]
    rows = [[_name(e.name), fmt_bytes(e.file_size), f"{1000 * e.create_s:.1f}", f"{e.p50_ms:.3f}",
             f"{e.p90_ms:.3f}", f"{e.p99_ms:.3f}", f"{e.mean_ms:.3f}", f"{e.throughput:.1f}",
             fmt_bytes(e.peak_rss), fmt_bytes(e.model_rss), fmt_bytes(e.loaded_rss), fmt_bytes(e.running_rss)]
            for e in r.entries]
    lines.append(table(["model", "size", "load ms", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s",
                        "peak RSS", "model RSS", "loaded RSS", "running RSS"], rows))
    if len(r.entries) > 1:
        keys = ("file_size", "create_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "model_rss",
                "loaded_rss", "running_rss")
        ratio_rows = [[_name(e.name)] + [fmt_ratio(e.ratios.get(k)) for k in keys] for e in r.entries]
        lines += ["", f"ratios to {_name(r.entries[0].name)}:",
                  table(["model", "size", "load", "p50", "p90", "p99", "mean", "throughput", "model RSS",
                         "loaded RSS", "running RSS"], ratio_rows)]
    from onnxcomp.measure.ortformat import mobile_lines

    lines.append("\nmodel RSS = peak resident memory during session creation and runs, minus the "
                 "process's memory before it (onnxruntime already set up by a one-node session); loaded / "
                 "running RSS = steady resident memory (freed heap returned to the system) after the "
                 "session was made / after the runs, minus the same")
    for e in r.entries:
        if e.mobile is not None:
            lines += mobile_lines(_name(e.name), e.mobile)
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads; 1 is the reproducible setting.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True,
              help="Execution provider (must be available in this onnxruntime build; 'cpu' works too).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per model.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per model first.")
@config_options(DataConfig, only=("batch_size", "input_shape"), defaults={"batch_size": 1})
@click.option("--ort-format", is_flag=True, help="Also convert each model to .ort and benchmark it.")
@click.option("--mobile-check", is_flag=True,
              help="Summarise onnxruntime's mobile usability checker (NNAPI / CoreML partitions).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="OUT.png",
              help="Save a box plot of the latency distributions (needs onnxcomp[plot]).")
@quiet_option
@json_option
def bench_cmd(models: tuple[str, ...], threads: int, provider: str, runs: int, warmup: int, batch_size: int,
              input_shape: tuple[str, ...], ort_format: bool, mobile_check: bool, plot: str | None,
              quiet: bool, as_json: bool) -> None:
    """Benchmark models in onnxruntime: size, load time, latency, throughput, peak memory.

    Each model runs in its own process; runs are interleaved in rounds so machine drift hits all
    models alike; every figure is also given as a ratio to the first model. Inputs are random
    (latency does not depend on values for these ops).

    Example: onnxcomp bench model.onnx model.channels30.onnx --threads 1
    """
    from onnxcomp.graph.shapes import parse_input_shapes
    from onnxcomp.measure.bench import bench

    if plot:
        from onnxcomp.report.plots import require_matplotlib
        require_matplotlib()
    report = bench(list(models), threads=threads, provider=provider, runs=runs, warmup=warmup, batch=batch_size,
                   input_shapes=parse_input_shapes(input_shape), ort_format=ort_format,
                   mobile_check=mobile_check, progress=_progress if progress_enabled(quiet) else None)
    if progress_enabled(quiet):
        click.echo("\r\033[K", err=True, nl=False)
    if plot:
        from onnxcomp.report.plots import plot_latency
        plot_latency([_name(e.name) for e in report.entries], [e.times_ms for e in report.entries], plot,
                     title=f"latency per run (batch {report.batch}, threads {report.threads})")
    emit(report, as_json, render)
