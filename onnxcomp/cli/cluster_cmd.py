"""``onnxcomp cluster``: k-means weight sharing stored as codebook indices + tables."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import (Writing, engine_line, model_argument, settings_line, skipped_lines,
                                 writing_options)
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import ClusterConfig, CorrectionConfig, EncodeConfig
from onnxcomp.report.tables import fmt_bytes, table


def render_clustered(result: Any) -> str:
    """Per-layer table (bits, granularity, SQNR, encoding, bytes) plus skipped weights and notes."""
    enc = {e.name: e for e in result.encodings}
    r = result.result_of("cluster")
    rows = []
    for c in r.applied:
        e = enc.get(c.name)
        rows.append([c.shown, c.op, "x".join(map(str, c.detail["shape"])), f"{c.detail['bits']:g}",
                     c.detail["granularity"], f"{c.detail['sqnr_db']:.1f}", e.kind if e else "dense",
                     fmt_bytes(c.bytes_before), fmt_bytes(e.bytes if e else c.bytes_before)])
    settings = settings_line(r.settings)
    lines = [f"cluster: {settings}"]
    if rows:
        lines.append(table(["weight", "op", "shape", "bits", "codebook", "SQNR dB", "encoding", "bytes",
                            "after"], rows, "lllrlrlrr"))
    lines += skipped_lines(r)
    lines += [f"note: {n}" for x in result.results for n in x.notes]
    return "\n".join(lines + [x for x in [engine_line(result)] if x])


@click.command("cluster")
@model_argument
@config_options(ClusterConfig, CorrectionConfig, EncodeConfig)
@writing_options
def cluster_cmd(model: str, as_json: bool, **kw: Any) -> None:
    """Share weights: k-means each weight into 2^B values, stored as indices + codebook.

    One codebook per output channel by default (per tensor destroys models whose channels differ
    in scale). With --data (real inputs) the k-means is weighted by each input's mean square
    (diagonal of the layer-input Hessian) and weights are assigned GPTQ-style with error feedback.
    Exact zeros stay zero, so it composes with pruning.

    Example: onnxcomp cluster model.onnx --bits 4 --data calib.npz
    """
    from onnxcomp import api

    cfg, corr, enc = take(ClusterConfig, kw), take(CorrectionConfig, kw), take(EncodeConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.cluster(w.original, config=cfg, data=w.data, correction=corr.correction, encoding=enc.encoding,
                         threads=w.threads, progress=w.progress)
    w.finish(result, render_clustered(result), command="cluster")
