"""``onnxcomp depthwise``: dense convs -> depthwise + pointwise, or -> grouped convs."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import Writing, model_argument, writing_options
from onnxcomp.cli.factorize_cmd import dry_run_option, finish_rewrite
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import DepthwiseConfig


@click.command("depthwise")
@model_argument
@config_options(DepthwiseConfig)
@dry_run_option
@writing_options
def depthwise_cmd(model: str, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Approximate dense convs by depthwise + pointwise convs, or by grouped convs.

    Depthwise: per input channel the best rank-M approximation of its C_out x k*k slice. Grouped:
    a balanced co-clustering of input and output channels keeps the most weight energy inside
    the G diagonal blocks; Gathers on the channel axis permute the input and restore the output
    order, so consumers are untouched. The retained energy is reported per layer.

    Example: onnxcomp depthwise model.onnx --multiplier 2 --data calib.npz
    """
    from onnxcomp import api

    cfg = take(DepthwiseConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.depthwise(w.original, config=cfg, data=w.data, input_shapes=w.input_shapes or None,
                           threads=w.threads, progress=w.progress)
    finish_rewrite(w, result, dry_run, "depthwise")
