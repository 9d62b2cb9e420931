"""``onnxcomp cluster``: k-means weight sharing stored as codebook indices + tables."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.config import (CLUSTER_ALLOCATIONS, CLUSTER_GRANULARITIES, CLUSTER_INITS, CORRECTIONS,
    ClusterConfig)
from onnxcomp.report.tables import fmt_bytes, table, to_json
from onnxcomp.cli import cli
from onnxcomp.cli.common import (data_options, load_for_write, force_option, gate_options, json_option,
    model_argument, output_option, render_write_result)


def render_clustered(clustered: Any) -> str:
    """Per-layer table (bits, granularity, SQNR, encoding, bytes) plus skipped weights and notes."""
    enc = {e.name: e for e in clustered.encodings}
    r = clustered.result
    rows = []
    for c in r.applied:
        e = enc.get(c.name)
        rows.append([c.name, c.op, "x".join(map(str, c.detail["shape"])), f"{c.detail['bits']:g}",
                     c.detail["granularity"], f"{c.detail['sqnr_db']:.1f}", e.kind if e else "dense",
                     fmt_bytes(c.bytes_before), fmt_bytes(e.bytes if e else c.bytes_before)])
    settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if v is not None)
    lines = [f"cluster: {settings}"]
    if rows:
        lines.append(table(["weight", "op", "shape", "bits", "codebook", "SQNR dB", "encoding", "bytes",
                            "after"], rows, "lllrlrlrr"))
    lines += [f"skipped {c.name} ({c.op}): {c.reason}" for c in r.skipped]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def cluster_options(f):
    """The options shared by ``cluster`` and ``compress`` (codebook side)."""
    opts = [
        click.option("--granularity", type=click.Choice(CLUSTER_GRANULARITIES), default="auto",
                     show_default=True, help="One codebook per tensor, per output channel, one "
                     "shared codebook over per-channel-scaled weights, or a uniform grid per channel in a "
                     "variable-length code; auto: per channel, or shared/grid where "
                     "--allocation mixed|sensitivity finds it cheaper for the error."),
        click.option("--init", type=click.Choice(CLUSTER_INITS), default="linear", show_default=True,
                     help="Centroid initialisation: linear (min..max), density (CDF quantiles), random."),
        click.option("--include", multiple=True, metavar="GLOB", help="Only weights/nodes matching (repeatable)."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Never weights/nodes matching (repeatable)."),
        click.option("--min-params", type=click.IntRange(min=0), default=1024, show_default=True,
                     help="Skip tensors with fewer parameters."),
        click.option("--include-depthwise", is_flag=True,
                     help="Also cluster depthwise kernels (one codebook per tensor)."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def emit(report: dict, result: Any, as_json: bool, human: str) -> None:
    """Print the report and the write summary (or one JSON object); exit 3 on a missed gate."""
    from onnxcomp.errors import QualityGateError

    click.echo(to_json({**report, "write": result.to_dict()}) if as_json else f"{human}\n{render_write_result(result)}")
    if result.gate_failed:
        raise QualityGateError(result.gate_failed, f"the output was still written to {result.path}")


@cli.command("cluster")
@model_argument
@click.option("--bits", type=float, default=None,
              help="Codebook size 2^B per codebook (1..8), e.g. 4; with --allocation mixed|sensitivity the "
                   "average stored bits per weight, codebooks included, e.g. 3.5.")
@click.option("--clusters", type=int, default=None, help="Codebook size K (2..256) instead of --bits.")
@click.option("--allocation", type=click.Choice(CLUSTER_ALLOCATIONS), default="uniform", show_default=True,
              help="uniform: every layer at --bits; mixed: per-layer bits averaging --bits, spent "
                   "where the (calibration-weighted) layer error drops most; sensitivity: spent where the "
                   "measured model-output error drops most (needs --data; slower; takes depthwise kernels).")
@click.option("--iterations", type=click.IntRange(min=1), default=40, show_default=True,
              help="Lloyd iterations per refinement round.")
@click.option("--encoding", default="auto", show_default=True,
              help="Storage: auto (smallest per tensor), dense, codebook, combined, fixed (no "
                   "variable-length code: 3-4x less memory to load), or one kind.")
@click.option("--gptq/--no-gptq", "gptq", default=None,
              help="Assign weights to their codebooks column by column with error feedback through the "
                   "layer-input Hessian (default: on with real --data).")
@click.option("--correction", type=click.Choice(CORRECTIONS), default="auto",
              show_default=True,
              help="Per-channel output refit after clustering on --data (auto: affine with real data); the "
                   "scales go into the codebooks' channel scales, so the file size is unchanged.")
@click.option("--calib-samples", "max_samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration samples for the layer statistics (GPTQ Hessians, importance, sensitivity).")
@cluster_options
@data_options
@gate_options
@output_option
@force_option
@json_option
def cluster_cmd(model: str, bits: float | None, clusters: int | None, allocation: str, iterations: int,
                encoding: str, gptq: bool | None, correction: str, max_samples: int, granularity: str, init: str, include: tuple[str, ...], exclude: tuple[str, ...],
                min_params: int, include_depthwise: bool, threads: int | None, output: str | None,
                force: bool, as_json: bool, max_drop: float | None, min_agreement: float | None,
                **data_opts: Any) -> None:
    """Share weights: k-means each weight into 2^B values, stored as indices + codebook.

    One codebook per output channel by default (per tensor destroys models whose channels differ
    in scale). With --data (real inputs) the k-means is weighted by each input's mean square
    (diagonal of the layer-input Hessian) and weights are assigned GPTQ-style with error feedback.
    Exact zeros stay zero, so it composes with pruning.
    """
    from onnxcomp.pipeline.cluster import run_cluster
    from onnxcomp.encode.select import allowed_kinds
    from onnxcomp.pipeline.write import finish

    if bits is not None and bits == int(bits):
        bits = int(bits)
    cfg = ClusterConfig(bits=bits, clusters=clusters, granularity=granularity, init=init,
                        allocation=allocation, include=include, exclude=exclude, min_params=min_params,
                        include_depthwise=include_depthwise, iterations=iterations, encoding=encoding,
                        gptq=gptq, correction=correction, max_samples=max_samples)
    allowed_kinds(encoding)
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    clustered = run_cluster(original, cfg, data=data, threads=threads)
    result = finish(original, clustered.proto, output, command="cluster", data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement, labels=data_opts.get("labels"),
                    threads=threads)
    emit(clustered.to_dict(), result, as_json, render_clustered(clustered))
