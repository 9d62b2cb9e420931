"""``onnxcomp auto``: the smallest or fastest model within a quality drop, plus its recipe."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import (Writing, data_options, json_option, model_argument, output_options, quiet_option,
                                 threads_option)
from onnxcomp.report.tables import fmt_pct, table


def render(trials, chosen, target_name: str, target: float) -> str:
    rows = [["*" if t is chosen else "", " + ".join(f"{k}({', '.join(f'{a}={b}' for a, b in v.items())})"
                                                   for k, v in t.steps),
             f"{t.size_ratio:.3f}x", "-" if t.macs_ratio is None else f"{t.macs_ratio:.3f}x",
             "-" if t.latency_ratio is None else f"{t.latency_ratio:.3f}x", fmt_pct(t.drop, 2),
             "-" if t.drop_bound is None else fmt_pct(t.drop_bound, 1), "yes" if t.ok else "no"] for t in trials]
    return "\n".join([f"auto: target {target_name} <= {target:g}",
                      table(["", "recipe", "size", "MACs", "latency", "drop", "drop <= (95 %)", "within"], rows,
                            "llrrrrrl")])


@click.command("auto")
@model_argument
@click.option("--target-size", type=float, default=None, help="File size as a fraction of the input, e.g. 0.125.")
@click.option("--target-latency", type=float, default=None,
              help="onnxruntime latency (1 thread, p50) as a fraction of the input's, e.g. 0.5.")
@click.option("--target-macs", type=float, default=None, help="MACs as a fraction of the input's, e.g. 0.5.")
@click.option("--max-drop", type=str, default="0.01", show_default=True, metavar="D",
              help="Largest quality drop allowed on held-out calibration samples (top-1 agreement, "
                   "or cosine for non-class outputs; accuracy with labels); 0.01 or 1%.")
@click.option("--int8", is_flag=True, help="End with QDQ int8 quantization (the quantize step: integer kernels, calibrated on --data).")
@click.option("--search", "keep_going", is_flag=True,
              help="Keep searching for the smallest / fastest after a candidate meets the target (slower).")
@click.option("--recipe", "recipe_out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the recipe (default: <output stem>.yaml).")
@threads_option
@data_options
@output_options
@quiet_option
@json_option
def auto_cmd(model: str, target_size: float | None, target_latency: float | None, target_macs: float | None,
             max_drop: str, int8: bool, keep_going: bool, recipe_out: str | None, as_json: bool,
             **kw: Any) -> None:
    """Search recipes for a size, latency or MACs target within --max-drop; write model + recipe.

    Needs real calibration data (--data): a quarter of it is held out to measure the drop. Size:
    the fewest cluster bits within the drop, then the most pruning on top. Speed: structured
    channel pruning, then factorization. Stops at the first candidate that meets a size or MACs
    target (--search keeps going for the best). Exits 3 (writing the best it reached) when the
    target cannot be met within the drop.

    Example: onnxcomp auto model.onnx --data calib.npz --target-size 0.1 --max-drop 0.01
    """
    from onnxcomp import api
    from onnxcomp.config import Gates
    from onnxcomp.errors import ConfigError
    from onnxcomp.pipeline import recipe as recipes

    drop = Gates(max_drop=max_drop).max_drop
    if sum(v is not None for v in (target_size, target_latency, target_macs)) != 1:
        raise click.UsageError("give exactly one of --target-size, --target-latency, --target-macs")
    if kw.get("data") is None:
        raise ConfigError("onnxcomp auto needs real calibration data", "pass --data FILE.npz")
    w = Writing(model, kw, "auto", as_json)
    out = api.auto(w.original, w.data, target_size=target_size, target_latency=target_latency,
                   target_macs=target_macs, max_drop=drop, int8=int8, threads=w.threads, labels=w.data_cfg.labels,
                   progress=w.progress, keep_going=keep_going)
    written = w.write(out.chosen, "auto")
    rec_path = recipes.dump(out.recipe, recipe_out or written.path.with_suffix(".yaml"))
    written.gate_failed = out.missed
    written.warnings += out.warnings
    (kind, target), = out.target.items()
    report = {**out.to_dict(), "recipe": str(rec_path)}
    w.finish(out.chosen, render(out.trials, out.chosen, kind, target) + f"\nrecipe: {rec_path}", report,
             written=written)
