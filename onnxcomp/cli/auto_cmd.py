"""``onnxcomp auto``: the smallest or fastest model within a quality drop, plus its recipe."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import (Writing, data_options, json_option, model_argument, output_options, quiet_option,
                                 threads_option)
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import AutoConfig
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
@config_options(AutoConfig)
@click.option("--recipe", "recipe_out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the recipe (default: <output stem>.yaml).")
@threads_option
@data_options
@output_options
@quiet_option
@json_option
def auto_cmd(model: str, recipe_out: str | None, as_json: bool, **kw: Any) -> None:
    """Search recipes for a size, latency or MACs target within --max-drop; write model + recipe.

    Needs real calibration data (--data): a quarter of it is held out to measure the drop. Size:
    the fewest cluster bits within the drop, then the most pruning on top. Speed: structured
    channel pruning, then factorization (with --int8 and a latency target: int8 alone first,
    then each candidate ends with int8). Stops at the first candidate that meets the target
    (--search keeps going for the best). --jobs N evaluates N candidates at once;
    --scheduler ADDRESS runs them on a dask.distributed cluster. Exits 3 when the target cannot be
    met within the drop, writing the best candidate within it (or, if none is, the one that
    dropped least).

    Example: onnxcomp auto model.onnx --data calib.npz --target-size 0.1 --max-drop 0.01
    """
    from onnxcomp import api
    from onnxcomp.errors import ConfigError
    from onnxcomp.pipeline import recipe as recipes

    cfg = take(AutoConfig, kw)  # every option checked before the model and data are read
    if kw.get("data") is None:
        raise ConfigError("onnxcomp auto needs real calibration data", "pass --data FILE.npz")
    w = Writing(model, kw, "auto", as_json)
    out = api.auto(w.original, w.data, config=cfg, threads=w.threads, labels=w.data_cfg.labels,
                   progress=w.progress)
    written = w.write(out.chosen, "auto")
    rec_path = recipes.dump(out.recipe, recipe_out or written.path.with_suffix(".yaml"))
    written.gate_failed = out.missed
    written.warnings += out.warnings
    (kind, target), = out.target.items()
    report = {**out.to_dict(), "recipe": str(rec_path)}
    text = render(out.trials, out.chosen, kind, target) + f"\nhold-out: {out.holdout}\nrecipe: {rec_path}"
    w.finish(out.chosen, text, report, written=written)
