"""``onnxcomp sensitivity``: per-layer quality vs compression level, as a table and a plot."""
from __future__ import annotations

import click

from typing import Any

from onnxcomp.cli.common import json_option, load_data, load_model, model_argument, quiet_option
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import DataConfig, SizedSelection
from onnxcomp.report.tables import table

METHODS = ("prune", "cluster", "factorize", "structured")


def render(s) -> str:
    rows = [[name] + [f"{100 * v:.2f}" for v in row] for name, row in zip(s.layers, s.losses)]
    head = [f"{s.method} sensitivity: relative output error in % with one layer compressed "
            f"({s.samples} samples)"]
    return "\n".join(head + [table(["layer"] + [str(lv) for lv in s.levels], rows)] +
                     [f"note: {n}" for n in s.notes])


def plot(s, path: str) -> None:
    """Loss vs level per layer (the seed's pruning-sensitivity figure)."""
    try:
        import matplotlib
    except ImportError:
        from onnxcomp.errors import ConfigError

        raise ConfigError("--plot needs matplotlib", "pip install 'onnxcomp[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    x = [float(v) for v in s.levels]
    for name, row in zip(s.layers, s.losses):
        ax.plot(x, [100 * v for v in row], marker="o", label=name)
    ax.set_xlabel({"prune": "sparsity", "cluster": "bits", "factorize": "fraction of MACs removed",
                   "structured": "channel ratio"}[s.method])
    ax.set_ylabel("relative output error (%)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(f"{s.method} sensitivity per layer")
    if len(s.layers) <= 20:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command("sensitivity")
@model_argument
@click.option("--method", type=click.Choice(METHODS), default="prune", show_default=True,
              help="Compression applied to one layer at a time.")
@click.option("--levels", default=None, metavar="L1,L2,...",
              help="Levels to try (sparsities, bits, fractions of MACs removed or channel ratios).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel workers (joblib; honours joblib.parallel_config, e.g. Dask or Ray).")
@config_options(SizedSelection, only=("min_params",))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save the sensitivity curves as a PNG.")
@config_options(DataConfig, defaults={"samples": 32})
@quiet_option
@json_option
def sensitivity_cmd(model: str, method: str, levels: str | None, jobs: int, min_params: int,
                    plot_path: str | None, quiet: bool, as_json: bool, **kw: Any) -> None:
    """Measure each layer's sensitivity: output error vs compression level, one layer at a time.

    Needs real calibration data (--data); --samples of it are run per trial (default 32 here).

    Example: onnxcomp sensitivity model.onnx --data calib.npz --method cluster --plot sens.png
    """
    from onnxcomp import api
    from onnxcomp.errors import ConfigError
    from onnxcomp.report.tables import to_json

    dcfg = take(DataConfig, kw)

    parsed = None
    if levels:
        try:
            parsed = [float(x) if method != "cluster" else int(x) for x in levels.split(",")]
        except ValueError:
            raise ConfigError(f"--levels {levels!r} is not a comma-separated list of numbers",
                              "e.g. --levels 0.5,0.8,0.9") from None
    if dcfg.data is None:
        raise ConfigError("sensitivity needs real calibration data", "pass --data FILE.npz")
    m = load_model(model)
    data = load_data(m.proto, dcfg)
    from onnxcomp.cli.progress import progress_for

    bars = progress_for(quiet)
    s = api.sensitivity(m, data, method, levels=parsed, samples=dcfg.samples, jobs=jobs, min_params=min_params,
                        progress=bars)
    if bars is not None:
        bars.close()
    if plot_path:
        plot(s, plot_path)
    click.echo(to_json(s) if as_json else render(s) + (f"\nwrote {plot_path}" if plot_path else ""))
