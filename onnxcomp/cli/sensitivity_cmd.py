"""``onnxcomp sensitivity``: per-layer quality vs compression level, as a table and a plot."""
from __future__ import annotations

import click

from onnxcomp.report.tables import table
from onnxcomp.pipeline.sweep import METHODS
from onnxcomp.cli import cli
from onnxcomp.cli.common import data_from_options, data_options, json_option, load_model, model_argument


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
    ax.set_xlabel({"prune": "sparsity", "cluster": "bits", "factorize": "MACs ratio",
                   "structured": "channel ratio"}[s.method])
    ax.set_ylabel("relative output error (%)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title(f"{s.method} sensitivity per layer")
    if len(s.layers) <= 20:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli.command("sensitivity")
@model_argument
@click.option("--method", type=click.Choice(METHODS), default="prune", show_default=True,
              help="Compression applied to one layer at a time.")
@click.option("--levels", default=None, metavar="L1,L2,...",
              help="Levels to try (sparsities, bits, MACs ratios or channel ratios).")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="Calibration samples per trial.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel workers (joblib; honours joblib.parallel_config, e.g. Dask or Ray).")
@click.option("--min-params", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Skip tensors with fewer parameters.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Save the sensitivity curves as a PNG.")
@data_options
@json_option
def sensitivity_cmd(model: str, method: str, levels: str | None, samples: int, jobs: int, min_params: int,
                    plot_path: str | None, as_json: bool, **data_opts) -> None:
    """Measure each layer's sensitivity: output error vs compression level, one layer at a time."""
    from onnxcomp.errors import ConfigError
    from onnxcomp.report.tables import to_json
    from onnxcomp.pipeline.sweep import sweep

    parsed = None
    if levels:
        try:
            parsed = [float(x) if method != "cluster" else int(x) for x in levels.split(",")]
        except ValueError:
            raise ConfigError(f"--levels {levels!r} is not a comma-separated list of numbers",
                              "e.g. --levels 0.5,0.8,0.9") from None
    m = load_model(model)
    data = data_from_options(m.proto, **data_opts)
    if data.random:
        raise ConfigError("sensitivity needs real calibration data", "pass --data FILE.npz")
    s = sweep(m.proto, data, method, levels=parsed, samples=samples, jobs=jobs, min_params=min_params)
    if plot_path:
        plot(s, plot_path)
    click.echo(to_json(s) if as_json else render(s) + (f"\nwrote {plot_path}" if plot_path else ""))
