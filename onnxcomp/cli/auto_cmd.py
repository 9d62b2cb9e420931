"""``onnxcomp auto``: the smallest or fastest model within a quality drop, plus its recipe."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click

from onnxcomp import api
from onnxcomp.report.tables import fmt_pct, table
from onnxcomp.cli import cli
from onnxcomp.cli.common import (FractionType, data_from_options, data_options, emit_outcome, force_option,
    json_option, load_model, model_argument, output_option)


def _latencies(original: api.Model, trials, threads: int | None) -> None:
    """Measure the passing candidates side by side with the original (interleaved, 1 thread)."""
    from onnxcomp.measure.bench import bench

    ok = [t for t in trials if t.ok]
    if not ok:
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "original.onnx"]
        api.save(original.proto, paths[0], verify=False)
        for i, t in enumerate(ok):
            paths.append(api.save(t.model.proto, Path(tmp) / f"c{i}.onnx", verify=False))
        report = bench(paths, threads=threads or 1, runs=30, warmup=3)
    for t, entry in zip(ok, report.entries[1:]):
        t.latency_ratio = entry.ratios.get("p50_ms")


def render(trials, chosen, target_name: str, target: float) -> str:
    rows = [["*" if t is chosen else "", " + ".join(f"{k}({', '.join(f'{a}={b}' for a, b in v.items())})"
                                                   for k, v in t.steps),
             f"{t.size_ratio:.3f}x", "-" if t.macs_ratio is None else f"{t.macs_ratio:.3f}x",
             "-" if t.latency_ratio is None else f"{t.latency_ratio:.3f}x", fmt_pct(t.drop, 2),
             "yes" if t.ok else "no"] for t in trials]
    return "\n".join([f"auto: target {target_name} <= {target:g}",
                      table(["", "recipe", "size", "MACs", "latency", "drop", "within"], rows,
                            "llrrrrl")])


@cli.command("auto")
@model_argument
@click.option("--target-size", type=float, default=None, help="File size as a fraction of the input, e.g. 0.125.")
@click.option("--target-latency", type=float, default=None,
              help="onnxruntime latency (1 thread, p50) as a fraction of the input's, e.g. 0.5.")
@click.option("--target-macs", type=float, default=None, help="MACs as a fraction of the input's, e.g. 0.5.")
@click.option("--max-drop", type=FractionType(), default=0.01, show_default=True,
              help="Largest quality drop allowed on held-out calibration samples (top-1 agreement, "
                   "or cosine for non-class outputs; accuracy with labels).")
@click.option("--int8", is_flag=True, help="End with onnxruntime's static QDQ int8 quantization.")
@click.option("--recipe", "recipe_out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the recipe (default: <output stem>.yaml).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime threads.")
@data_options
@output_option
@force_option
@json_option
def auto_cmd(model: str, target_size: float | None, target_latency: float | None,
             target_macs: float | None, max_drop: float, int8: bool, recipe_out: str | None,
             threads: int | None, output: str | None, force: bool, as_json: bool, **data_opts) -> None:
    """Search recipes for a size, latency or MACs target within --max-drop; write model + recipe.

    Size: the fewest cluster bits within the drop, then the most pruning on top. Speed:
    structured channel pruning, then factorization. Exits 3 (writing the best it reached)
    when the target cannot be met within the drop.
    """
    from onnxcomp.pipeline import auto, recipe as recipes
    from onnxcomp.errors import ConfigError
    from onnxcomp.pipeline.write import finish

    targets = {k: v for k, v in (("size", target_size), ("latency", target_latency),
                                 ("macs", target_macs)) if v is not None}
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --target-size, --target-latency, --target-macs")
    (kind, target), = targets.items()
    if not 0 < target <= 1:
        raise ConfigError(f"--target-{kind} {target} is outside (0, 1]", "give a fraction, e.g. 0.5")
    original = load_model(model)
    data = data_from_options(original.proto, **data_opts)
    search = auto.Search(original, data, max_drop, threads=threads, labels=data_opts.get("labels"))
    trials = auto.for_size(search, target) if kind == "size" else auto.for_speed(search, target)
    if kind == "latency":
        _latencies(original, trials, threads)
    key = {"size": "size_ratio", "macs": "macs_ratio", "latency": "latency_ratio"}[kind]
    chosen = auto.choose(trials, key)
    if int8 and chosen is not None and chosen.ok:
        with_int8 = search.evaluate(chosen.steps + [("int8", {})])
        if with_int8.ok:
            chosen = with_int8
    rec = recipes.make(chosen.steps, encoding="auto", source=Path(model).name, max_drop=max_drop,
                       calib_samples=search.calib_samples)
    result = finish(original, chosen.model.proto, output, command="auto", data=data, force=force,
                    threads=threads)
    rec_path = recipes.dump(rec, recipe_out or result.path.with_suffix(".yaml"))
    reached = getattr(chosen, key)
    missed = None
    if not chosen.ok:
        missed = f"no candidate stayed within --max-drop {max_drop:g} (best drop {chosen.drop:.4f})"
    elif reached is None or reached > target:
        missed = f"best {kind} ratio within the drop is {reached}, above the target {target:g}"
    result.gate_failed = missed
    report = {"target": {kind: target}, "chosen": chosen.to_dict(), "recipe": str(rec_path),
              "trials": [t.to_dict() for t in trials]}
    emit_outcome(report, result, as_json,
                 render(trials, chosen, kind, target) + f"\nrecipe: {rec_path}")
