"""``onnxcomp compress``: the Deep Compression pipeline (prune -> cluster -> encode -> pack)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxcomp import api
from onnxcomp.config import ALLOCATIONS, CLUSTER_ALLOCATIONS, CLUSTER_GRANULARITIES, CompressConfig
from onnxcomp.report.tables import fmt_bytes, fmt_ratio, table
from onnxcomp.cli import cli
from onnxcomp.cli.cluster_cmd import emit
from onnxcomp.cli.common import (data_options, load_for_write, force_option, gate_options, json_option,
    model_argument, output_option)


def _quality(fid: Any) -> str:
    if fid is None:
        return "-"
    if fid.accuracy is not None:
        return f"acc {100 * fid.accuracy['candidate']:.2f} %"
    metric, value = fid.headline
    label = {"top1_agreement": "top-1 agr", "cosine": "cosine"}.get(metric, metric)
    return "-" if value is None else f"{label} {100 * value:.2f} %" if metric == "top1_agreement" \
        else f"{label} {value:.5f}"


def render_stages(pipe: Any) -> str:
    """The paper's table: bytes after each stage, ratio to the original, fidelity on the data."""
    rows = [[s.name, fmt_bytes(s.bytes), fmt_ratio(s.ratio), f"{1 / s.ratio:.1f}x" if s.ratio else "-",
             _quality(s.fidelity), s.note] for s in pipe.stages]
    first = next((s.fidelity for s in pipe.stages if s.fidelity is not None), None)
    lines = [table(["stage", "bytes", "ratio", "smaller", "fidelity", "stored as"], rows, "lrrrll")]
    if first is not None:
        lines.append(f"data: {first.data}")
    skipped = [c for c in pipe.cluster.result.skipped]
    if skipped:
        lines.append(f"not clustered: {len(skipped)} weight(s) ({', '.join(sorted({c.reason.split(' (')[0] for c in skipped}))})")
    lines += [f"note: {n}" for n in pipe.prune.notes + pipe.cluster.result.notes]
    return "\n".join(lines)


@cli.command("compress")
@model_argument
@click.option("--prune", "sparsity", type=float, default=0.9, show_default=True,
              help="Fraction of the prunable parameters removed (stage 1).")
@click.option("--bits", type=float, default=4, show_default=True,
              help="Codebook bits (stage 2), 1..8; an average (e.g. 3.5) with --bit-allocation mixed|sensitivity.")
@click.option("--granularity", type=click.Choice(CLUSTER_GRANULARITIES), default="auto", show_default=True,
              help="Codebook per tensor, per output channel, shared with per-channel scales, or a uniform "
                   "grid per channel in a variable-length code; auto: per channel, or shared/grid where "
                   "--bit-allocation mixed|sensitivity finds it cheaper.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="auto", show_default=True,
              help="How the pruning budget is spread over layers (see onnxcomp prune).")
@click.option("--bit-allocation", type=click.Choice(CLUSTER_ALLOCATIONS), default="uniform", show_default=True,
              help="uniform bits, or mixed per-layer bits averaging --bits.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), default=None,
              help="Replay a recipe (YAML, e.g. written by onnxcomp auto) instead of --prune/--bits.")
@click.option("--pack", "pack", is_flag=True, help="Also write OUT.onnxc, the entropy-coded archive (stage 3).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads.")
@data_options
@gate_options
@output_option
@force_option
@json_option
def compress_cmd(model: str, sparsity: float, bits: float, granularity: str, allocation: str, bit_allocation: str,
                 recipe_path: str | None, pack: bool, threads: int | None, output: str | None, force: bool,
                 as_json: bool, max_drop: float | None, min_agreement: float | None, **data_opts: Any) -> None:
    """Prune, cluster and encode (Deep Compression without retraining); print the stage table.

    Bytes after each stage, the ratio to the original and the fidelity on the data (random data
    when --data is not given: no quality guarantee). With --pack the .onnxc archive is written too.
    """
    from onnxcomp.encode.packfile import SUFFIX
    from onnxcomp.pipeline.deep import run_compress
    from onnxcomp.pipeline.write import finish

    if recipe_path is not None:
        return _replay(model, recipe_path, pack=pack, threads=threads, output=output, force=force,
                       as_json=as_json, max_drop=max_drop, min_agreement=min_agreement, **data_opts)
    cfg = CompressConfig(sparsity=sparsity, bits=bits, granularity=granularity, allocation=allocation,
                         bit_allocation=bit_allocation, pack=pack)
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    pipe = run_compress(original, cfg, data=data, threads=threads)
    result = finish(original, pipe.proto, output, command="compress", data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement, labels=data_opts.get("labels"),
                    threads=threads)
    report = pipe.to_dict()
    if pack:
        archive = api.pack(result.path, Path(result.path).with_suffix(SUFFIX), force=force)
        report["archive"] = archive.to_dict()
        pipe.stages[-1].bytes = archive.archive_bytes
        pipe.stages[-1].ratio = archive.archive_bytes / pipe.stages[0].bytes
        report["stages"][-1].update(bytes=archive.archive_bytes, ratio=pipe.stages[-1].ratio, path=archive.path)
    emit(report, result, as_json, render_stages(pipe) + (f"\nwrote {report['archive']['output']}" if pack else ""))


def _replay(model: str, recipe_path: str, *, pack: bool, threads: int | None, output: str | None,
            force: bool, as_json: bool, max_drop: float | None, min_agreement: float | None,
            **data_opts: Any) -> None:
    """compress --recipe: run a recipe's steps, write (verified), optionally pack."""
    from onnxcomp.pipeline import recipe as recipes
    from onnxcomp.encode.packfile import SUFFIX
    from onnxcomp.pipeline.write import finish

    rec = recipes.load(recipe_path)  # a bad recipe fails before any work
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    compressed = recipes.apply(original, rec, data=data, threads=threads)
    result = finish(original, compressed.proto, output, command="compress", data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement, labels=data_opts.get("labels"),
                    threads=threads)
    report: dict[str, Any] = {"recipe": rec}
    lines = [f"recipe {recipe_path}: " + " -> ".join(next(iter(s)) for s in rec["steps"])]
    if pack:
        archive = api.pack(result.path, Path(result.path).with_suffix(SUFFIX), force=force)
        report["archive"] = archive.to_dict()
        lines.append(f"wrote {report['archive']['output']} ({archive.archive_bytes} bytes)")
    emit(report, result, as_json, "\n".join(lines))
