"""``onnxcomp prune``: unstructured / N:M pruning stored in sparse encodings."""
from __future__ import annotations

import click

from onnxcomp.config import ALLOCATIONS, CORRECTIONS, GRANULARITIES, SCORES, PruneConfig
from onnxcomp.report.tables import fmt_bytes, fmt_count, fmt_pct, table
from onnxcomp.cli import cli
from onnxcomp.cli.common import (data_options, load_for_write, emit_outcome, force_option, gate_options,
    json_option, model_argument, output_option)
from onnxcomp.cli.structured import run_structured, structured_options


def render_changes(compressed) -> str:
    """Per-layer table (sparsity chosen, encoding, bytes) and the skipped weights with reasons."""
    enc = {e.name: e for e in compressed.encodings}
    lines = []
    for r in compressed.results:
        rows = []
        for c in r.applied:
            e = enc.get(c.name)
            rows.append([c.name, c.op, "x".join(map(str, c.detail.get("shape", []))),
                         fmt_pct(c.detail.get("sparsity")), e.kind if e else "dense",
                         fmt_bytes(c.bytes_before), fmt_bytes(c.bytes_after)])
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if v is not None)
        lines.append(f"{r.pass_name}: {settings}")
        if rows:
            lines.append(table(["weight", "op", "shape", "sparsity", "encoding", "bytes", "after"], rows,
                               "lllrlrr"))
        before = sum(c.params_before for c in r.applied)
        after = sum(c.params_after for c in r.applied)
        if before:
            lines.append(f"pruned {fmt_count(before - after)} of {fmt_count(before)} prunable params "
                         f"({fmt_pct(1 - after / before)}); weights {fmt_bytes(r.total('bytes_before'))}"
                         f" -> {fmt_bytes(r.total('bytes_after'))}")
        for c in r.skipped:
            lines.append(f"skipped {c.name} ({c.op}): {c.reason}")
        lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


@cli.command("prune")
@model_argument
@click.option("--sparsity", type=float, default=None,
              help="Fraction of the prunable parameters to remove overall, e.g. 0.9.")
@click.option("--structured", is_flag=True,
              help="Remove whole channels (real speed) instead of single weights; see --ratio.")
@structured_options
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="auto", show_default=True,
              help="How the sparsity is spread over layers (auto = lamp, the best measured).")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="channel", show_default=True,
              help="Rank weights within each output channel, or within the whole tensor.")
@click.option("--nm", default=None, metavar="N:M", help="N:M pattern along the reduction axis, e.g. 2:4.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only weights/nodes matching (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Never weights/nodes matching (repeatable).")
@click.option("--min-params", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Skip tensors with fewer parameters.")
@click.option("--include-depthwise", is_flag=True, help="Also prune depthwise kernels (fragile).")
@click.option("--max-layer-sparsity", type=float, default=0.98, show_default=True,
              help="No layer is pruned beyond this fraction.")
@click.option("--encoding", default="auto", show_default=True,
              help="Storage: auto (smallest per tensor), dense, sparse, gaps or bitmask.")
@click.option("--score", type=click.Choice(SCORES), default="magnitude", show_default=True,
              help="Weight importance: |w|, or |w| x input RMS on --data (activation).")
@click.option("--correction", type=click.Choice(CORRECTIONS), default="auto",
              show_default=True, help="Refit each pruned layer's output channels (scale and bias) on "
              "--data, layer by layer; auto = affine with real data, none without.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads.")
@data_options
@gate_options
@output_option
@force_option
@json_option
def prune_cmd(model: str, sparsity: float | None, structured: bool, ratio: float | None,
              importance: str, round_to: int, refit: bool | None, max_samples: int, allocation: str, granularity: str, nm: str | None,
              include: tuple[str, ...], exclude: tuple[str, ...], min_params: int,
              include_depthwise: bool, max_layer_sparsity: float, encoding: str, score: str,
              correction: str,
              threads: int | None, output: str | None, force: bool, as_json: bool,
              max_drop: float | None, min_agreement: float | None, **data_opts) -> None:
    """Prune weights (or, with --structured, whole channels) and store them compactly.

    Unstructured: --sparsity is spread across layers by the allocation (LAMP by default); with
    --data (real inputs) each pruned layer's output channels are refitted (scale and bias), layer
    by layer. Tiny tensors and depthwise kernels are skipped. Zeros give no speed in onnxruntime
    CPU: the gain is file size (sparse encodings). Structured (--structured --ratio R): channels
    are removed through BatchNorm, residual Adds and Concats: real speed.
    """
    if structured:
        if sparsity is not None or nm is not None:
            raise click.UsageError("--structured takes --ratio (fraction of channels), not --sparsity/--nm")
        if allocation not in ("auto", "uniform", "sensitivity"):
            raise click.UsageError(f"--structured takes --allocation auto, uniform or sensitivity, "
                                   f"not {allocation}")
        return run_structured(model, ratio, importance, round_to, allocation=allocation, refit=refit,
                              max_samples=max_samples, output=output, force=force, as_json=as_json,
                              include=include, exclude=exclude, max_drop=max_drop,
                              min_agreement=min_agreement, threads=threads, **data_opts)
    if ratio is not None:
        raise click.UsageError("--ratio is for --structured; unstructured pruning takes --sparsity")
    if sparsity is None and nm is None:
        raise click.UsageError("give --sparsity S (e.g. 0.9), --nm N:M, or --structured --ratio R")
    cfg = PruneConfig(sparsity=0.5 if sparsity is None else sparsity, allocation=allocation,
                      granularity=granularity, nm=nm, include=include, exclude=exclude,
                      min_params=min_params, include_depthwise=include_depthwise,
                      encoding=encoding, max_layer_sparsity=max_layer_sparsity, score=score)
    from onnxcomp.encode.select import allowed_kinds
    from onnxcomp.pipeline.write import finish

    allowed_kinds(encoding)
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    from onnxcomp.passes.prune.prune import PrunePass
    from onnxcomp.pipeline.run import run

    compressed = run(original, [PrunePass(cfg)], data=data, encoding=encoding,
                     correction=correction, threads=threads)
    result = finish(original, compressed.proto, output, command="prune", data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement,
                    labels=data_opts.get("labels"), threads=threads)
    emit_outcome(compressed.to_dict(), result, as_json, render_changes(compressed))
