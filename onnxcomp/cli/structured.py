"""``onnxcomp prune --structured`` (alias ``onnxcomp prune-channels``): remove whole channels.

``structured_options`` adds the options only structured pruning has; the prune command applies
it and calls :func:`run_structured` when ``--structured`` is given. ``prune-channels`` is the same
thing as a command of its own.
"""
from __future__ import annotations

from typing import Any, Callable

import click

from onnxcomp import api
from onnxcomp.config import STRUCTURED_ALLOCATIONS, STRUCTURED_IMPORTANCE, StructuredPruneConfig
from onnxcomp.report.tables import fmt_count, fmt_pct, table
from onnxcomp.cli import cli
from onnxcomp.cli.common import (data_options, load_for_write, emit_outcome, force_option, gate_options,
    json_option, model_argument, output_option)


def structured_options(f: Callable) -> Callable:
    """--ratio, --importance, --round-to, --refit/--no-refit, --calib-samples."""
    opts = [
        click.option("--ratio", type=float, default=None,
                     help="Fraction of channels to remove, e.g. 0.3 (uniform: in every prunable group; "
                          "sensitivity: the same MACs saving, spent where the output moves least). "
                          "Default 0.5."),
        click.option("--importance", type=click.Choice(STRUCTURED_IMPORTANCE), default="auto", show_default=True,
                     help="Channel score: l1/l2 filter norm (BN-scaled), bn |gamma|, activation energy "
                          "at the consumers (needs --data); auto = activation with --data, else l1."),
        click.option("--round-to", "round_to", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Kept channels per group are a multiple of this (at least one multiple)."),
        click.option("--refit/--no-refit", "refit", default=None,
                     help="Least-squares refit of the consumers on the kept channels (default: on with "
                          "real --data, never with random data)."),
        click.option("--calib-samples", "max_samples", type=click.IntRange(min=1), default=256,
                     show_default=True, help="At most this many calibration samples for scores and refit."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def render(compressed: Any) -> str:
    """Groups pruned (channels before -> after) and frozen (with the reason), MACs and params."""
    r = compressed.results[-1]
    rows = []
    for g in r.groups:
        names = ", ".join(g["producers"][:2]) + (f" +{len(g['producers']) - 2}" if len(g["producers"]) > 2 else "")
        rows.append([g["group"], names, f"{g['channels']} -> {g['kept']}", g["status"], g["reason"] or ""])
    s = r.settings
    lines = [f"structured pruning: ratio {s['ratio']}, importance {s['importance']}, allocation "
             f"{s['allocation']}, round-to {s['round_to']}, refit {'on' if s['refit'] else 'off'}",
             table(["group", "producers", "channels", "status", "reason"], rows, "rllll")]
    mb, ma = s["macs_before"], s["macs_after"]
    pb, pa = r.total("params_before"), r.total("params_after")
    lines.append(f"MACs per sample: {fmt_count(mb)} -> {fmt_count(ma)} ({fmt_pct(ma / mb if mb else 1.0)}); "
                 f"producer params {fmt_count(pb)} -> {fmt_count(pa)}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def run_structured(model_path: str, ratio: float | None, importance: str = "auto", round_to: int = 8, *,
                   allocation: str = "auto", refit: bool | None = None, max_samples: int = 256,
                   output: str | None = None, force: bool = False, as_json: bool = False,
                   include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                   max_drop: float | None = None, min_agreement: float | None = None,
                   threads: int | None = None, **data_opts: Any) -> None:
    """Structured pruning end to end: load, prune, refit, write (verified), compare, gates, print."""
    from onnxcomp.graph.shapes import parse_input_shapes
    from onnxcomp.pipeline.write import finish

    cfg = StructuredPruneConfig(ratio=0.5 if ratio is None else ratio, importance=importance,
                                allocation=allocation, round_to=round_to, refit=refit, max_samples=max_samples,
                                include=include, exclude=exclude)  # bad values fail before any work
    original, data = load_for_write(model_path, max_drop, min_agreement, **data_opts)
    compressed = api.prune_channels(original, config=cfg, data=data, threads=threads,
                                    input_shapes=parse_input_shapes(data_opts.get("input_shape", ())))
    result = finish(original, compressed.proto, output, command="prune", data=data, force=force,
                    max_drop=max_drop, min_agreement=min_agreement, labels=data_opts.get("labels"),
                    threads=threads)
    emit_outcome(compressed.to_dict(), result, as_json, render(compressed))


@cli.command("prune-channels")
@model_argument
@structured_options
@click.option("--allocation", type=click.Choice(STRUCTURED_ALLOCATIONS), default="auto", show_default=True,
              help="uniform: the ratio in every group; sensitivity: measured per group (needs --data); "
                   "auto = sensitivity with --data, else uniform.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only groups whose producers match (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Never groups with a producer matching (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads.")
@data_options
@gate_options
@output_option
@force_option
@json_option
def prune_channels_cmd(model: str, ratio: float | None, importance: str, round_to: int, refit: bool | None,
                       max_samples: int, allocation: str, include: tuple[str, ...], exclude: tuple[str, ...],
                       threads: int | None, output: str | None, force: bool, as_json: bool,
                       max_drop: float | None, min_agreement: float | None, **data_opts: Any) -> None:
    """Remove whole channels for real speed (the same as `onnxcomp prune --structured`).

    Channels are removed from every coupled tensor: the producing filters, BatchNorm, the other
    branch of a residual Add, squeeze-excitation blocks, Concat/Split/Slice offsets and the
    consumers' inputs. Groups an op without a rule touches are frozen and listed with the reason.
    With real --data: activation importance, sensitivity allocation and a least-squares refit.
    """
    run_structured(model, ratio, importance, round_to, allocation=allocation, refit=refit,
                   max_samples=max_samples, output=output, force=force, as_json=as_json, include=include,
                   exclude=exclude, max_drop=max_drop, min_agreement=min_agreement, threads=threads,
                   **data_opts)
