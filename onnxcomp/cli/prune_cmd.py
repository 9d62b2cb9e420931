"""``onnxcomp prune``: single weights (sparse encodings) or, with --structured, whole channels."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import (Writing, engine_line, fold_lines, model_argument, refuse_given, settings_line,
                                 skipped_lines, writing_options)
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import CorrectionConfig, EncodeConfig, PruneConfig, StructuredPruneConfig, names
from onnxcomp.report.tables import fmt_bytes, fmt_count, fmt_pct, table

UNSTRUCTURED = tuple(n for n in names(PruneConfig) + names(CorrectionConfig) + names(EncodeConfig)
                     if n not in ("include", "exclude", "allocation"))
STRUCTURED = tuple(n for n in names(StructuredPruneConfig) if n not in ("include", "exclude", "allocation"))


def render_changes(result: Any) -> str:
    """Per-layer table (sparsity chosen, encoding, bytes) and the skipped weights with reasons."""
    enc = {e.name: e for e in result.encodings}
    lines = []
    for r in result.results:
        if r.pass_name == "correction":
            lines += [f"note: {n}" for n in r.notes]
            continue
        rows = []
        for c in r.applied:
            e = enc.get(c.name)
            rows.append([c.shown, c.op, "x".join(map(str, c.detail.get("shape", []))),
                         fmt_pct(c.detail.get("sparsity")), e.kind if e else "dense",
                         fmt_bytes(c.bytes_before), fmt_bytes(c.bytes_after)])
        settings = settings_line(r.settings)
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
        lines += skipped_lines(r)
        lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines + [x for x in [engine_line(result)] if x])


def render_structured(result: Any) -> str:
    """Groups pruned (channels before -> after) and frozen (with the reason), MACs and params."""
    r = result.result_of("structured")
    rows = []
    for g in r.groups:
        names_ = ", ".join(g["producers"][:2]) + (f" +{len(g['producers']) - 2}" if len(g["producers"]) > 2 else "")
        rows.append([g["group"], names_, f"{g['channels']} -> {g['kept']}", g["status"], g["reason"] or ""])
    s = r.settings
    lines = [f"structured pruning: ratio {s['ratio']}, importance {s['importance']}, allocation "
             f"{s['allocation']}, round-to {s['round_to']}, refit {'on' if s['refit'] else 'off'}",
             table(["group", "producers", "channels", "status", "reason"], rows, "rllll") if rows else
             "no channel groups: no Conv, ConvTranspose, Gemm or MatMul has a float weight"]
    mb, ma = s["macs_before"], s["macs_after"]
    pb, pa = r.total("params_before"), r.total("params_after")
    lines.append(f"MACs per sample: {fmt_count(mb)} -> {fmt_count(ma)} ({fmt_pct(ma / mb if mb else 1.0)}); "
                 f"producer params {fmt_count(pb)} -> {fmt_count(pa)}")
    lines += [f"note: {n}" for n in r.notes] + fold_lines(result)
    return "\n".join(lines + [x for x in [engine_line(result)] if x])


def run_structured(model: str, kw: dict[str, Any], as_json: bool) -> None:
    """Structured pruning end to end (prune --structured and prune-channels)."""
    from onnxcomp import api

    cfg = take(StructuredPruneConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.prune_channels(w.original, config=cfg, data=w.data, threads=w.threads, input_shapes=w.input_shapes,
                                progress=w.progress)
    w.finish(result, render_structured(result), command="prune")


@click.command("prune")
@model_argument
@config_options(PruneConfig)
@click.option("--structured", is_flag=True,
              help="Remove whole channels (real speed) instead of single weights; see --ratio.")
@config_options(StructuredPruneConfig, skip=("include", "exclude", "allocation"))
@config_options(CorrectionConfig, EncodeConfig)
@writing_options
@click.pass_context
def prune_cmd(ctx: click.Context, model: str, structured: bool, as_json: bool, **kw: Any) -> None:
    """Prune weights (or, with --structured, whole channels) and store them compactly.

    Unstructured: --sparsity is spread across layers by the allocation (LAMP by default); with
    --data (real inputs) each pruned layer's output channels are refitted (scale and bias), layer
    by layer. Tiny tensors and depthwise kernels are skipped. Zeros give no speed in onnxruntime
    CPU: the gain is file size (sparse encodings). Structured (--structured --ratio R): channels
    are removed through BatchNorm, residual Adds and Concats: real speed.

    Example: onnxcomp prune model.onnx --sparsity 0.9 --data calib.npz
    """
    from onnxcomp import api

    if structured:
        refuse_given(ctx, UNSTRUCTURED, "to --structured (it takes --ratio, the fraction of channels removed)")
        for n in UNSTRUCTURED:
            kw.pop(n, None)
        return run_structured(model, kw, as_json)
    refuse_given(ctx, STRUCTURED, "without --structured (unstructured pruning takes --sparsity or --nm)")
    for n in STRUCTURED:
        kw.pop(n)
    if kw["sparsity"] is None and kw["nm"] is None:
        raise click.UsageError("give --sparsity S (e.g. 0.9), --nm N:M, or --structured --ratio R")
    cfg, corr, enc = take(PruneConfig, kw), take(CorrectionConfig, kw), take(EncodeConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.prune(w.original, config=cfg, data=w.data, correction=corr.correction, encoding=enc.encoding,
                       threads=w.threads, progress=w.progress)
    w.finish(result, render_changes(result), command="prune")


@click.command("prune-channels")
@model_argument
@config_options(StructuredPruneConfig)
@writing_options
def prune_channels_cmd(model: str, as_json: bool, **kw: Any) -> None:
    """Remove whole channels for real speed (the same as `onnxcomp prune --structured`).

    Channels are removed from every coupled tensor: the producing filters, BatchNorm, the other
    branch of a residual Add, squeeze-excitation blocks, Concat/Split/Slice offsets and the
    consumers' inputs. Groups an op without a rule touches are frozen and listed with the reason.
    With real --data: activation importance, sensitivity allocation and a least-squares refit.

    Example: onnxcomp prune-channels model.onnx --ratio 0.3 --data calib.npz
    """
    run_structured(model, kw, as_json)
