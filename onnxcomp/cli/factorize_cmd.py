"""``onnxcomp factorize``: low-rank rewrites of convs and Gemm/MatMul that make onnxruntime faster
(the per-layer report is shared with ``onnxcomp depthwise``)."""
from __future__ import annotations

from typing import Any, Callable

import click

from onnxcomp.cli.common import (Writing, engine_line, fold_lines, model_argument, settings_line,
                                 skipped_lines, writing_options)
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import FactorizeConfig
from onnxcomp.report.tables import fmt_count, fmt_pct, fmt_ratio, table


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
        if r.pass_name == "fold":
            continue  # its note comes last
        settings = settings_line(r.settings, skip=(None, False))
        lines.append(f"{r.pass_name}: {settings}")
        rows = []
        for c in r.applied:
            d = c.detail
            err = d.get("output_error")
            rows.append([c.shown, c.op, _size(c), _arrow(c.macs_before, c.macs_after),
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
        lines += skipped_lines(r)
        lines += [f"note: {n}" for n in r.notes]
    lines += fold_lines(compressed)
    return "\n".join(lines + [x for x in [engine_line(compressed)] if x])


def model_macs(original, compressed, input_shapes) -> tuple[int | None, int | None]:
    """Total MACs per sample before and after (None where shape inference cannot tell)."""
    from onnxcomp import api

    return (api.inspect(original, input_shapes=input_shapes).total_macs,
            api.inspect(compressed.model, input_shapes=input_shapes).total_macs)


def dry_run_option(f: Callable) -> Callable:
    return click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")(f)


def finish_rewrite(w: Writing, result: Any, dry_run: bool, command: str) -> None:
    """Write (verified) and print the per-layer table with the write summary; or just the table."""
    from onnxcomp.report.tables import to_json

    macs = model_macs(w.original, result, w.input_shapes or None)
    human = render_changes(result, macs)
    if dry_run:
        click.echo(to_json({**result.to_dict(), "model_macs": macs}) if w.as_json
                   else human + "\ndry run: nothing written")
        return
    w.finish(result, human, {**result.to_dict(), "model_macs": macs}, command=command)


@click.command("factorize")
@model_argument
@config_options(FactorizeConfig)
@dry_run_option
@writing_options
def factorize_cmd(model: str, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Factorize convs and Gemm/MatMul into low-rank pairs/triples that run faster.

    A layer is rewritten only where its MACs drop (and, with --measure, where onnxruntime runs it
    faster); every rewrite keeps the original output tensor names. With real --data the factors
    minimise each layer's output error on it (whitening by the input covariance, least-squares
    refit), the default; random data is only for smoke runs.

    Example: onnxcomp factorize model.onnx --ratio 0.5 --data calib.npz
    """
    from onnxcomp import api

    cfg = take(FactorizeConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.factorize(w.original, config=cfg, data=w.data, input_shapes=w.input_shapes or None,
                           threads=w.threads, progress=w.progress)
    finish_rewrite(w, result, dry_run, "factorize")
