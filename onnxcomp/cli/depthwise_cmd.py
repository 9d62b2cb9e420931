"""``onnxcomp depthwise``: dense convs -> depthwise + pointwise, or -> grouped convs."""
from __future__ import annotations

import click

from onnxcomp import api
from onnxcomp.config import DepthwiseConfig
from onnxcomp.cli import cli
from onnxcomp.cli.common import (data_options, load_for_write, force_option, gate_options, json_option,
    model_argument, output_option)
from onnxcomp.cli.factorize_cmd import common_options, finish_command


@cli.command("depthwise")
@model_argument
@click.option("--multiplier", type=int, default=None,
              help="Depth multiplier M: depthwise kxk (C -> C*M) + pointwise 1x1; exact at "
                   "M = min(C_out, k*k).")
@click.option("--groups", type=int, default=None,
              help="Grouped conv with G groups on permuted channels (Gathers keep the channel order).")
@click.option("--energy", type=float, default=None,
              help="Alone: the smallest M keeping this fraction of the weight energy (default 0.9); "
                   "with --multiplier/--groups: skip layers that would keep less.")
@common_options
@data_options
@gate_options
@output_option
@force_option
@json_option
def depthwise_cmd(model: str, multiplier: int | None, groups: int | None, energy: float | None,
                  include: tuple[str, ...], exclude: tuple[str, ...], min_params: int,
                  data_aware: bool | None,
                  calib_samples: int, measure: bool, allow_growth: bool, threads: int | None, dry_run: bool,
                  output: str | None, force: bool, as_json: bool, max_drop: float | None,
                  min_agreement: float | None, **data_opts) -> None:
    """Approximate dense convs by depthwise + pointwise convs, or by grouped convs.

    Depthwise: per input channel the best rank-M approximation of its C_out x k*k slice. Grouped:
    a balanced co-clustering of input and output channels keeps the most weight energy inside
    the G diagonal blocks; Gathers on the channel axis permute the input and restore the output
    order, so consumers are untouched. The retained energy is reported per layer.
    """

    DepthwiseConfig(multiplier=multiplier, groups=groups, energy=energy, max_samples=calib_samples)
    original, data = load_for_write(model, max_drop, min_agreement, **data_opts)
    shapes = None
    if data_opts.get("input_shape"):
        from onnxcomp.graph.shapes import parse_input_shapes
        shapes = parse_input_shapes(data_opts["input_shape"])
    compressed = api.depthwise(original, multiplier=multiplier, groups=groups, energy=energy, data=data,
                               data_aware=data_aware, measure=measure, include=include, exclude=exclude,
                               min_params=min_params, allow_growth=allow_growth, max_samples=calib_samples,
                               input_shapes=shapes, threads=threads)
    finish_command("depthwise", original, compressed, data, data_opts, output=output, force=force,
                   as_json=as_json, max_drop=max_drop, min_agreement=min_agreement, threads=threads,
                   dry_run=dry_run)
