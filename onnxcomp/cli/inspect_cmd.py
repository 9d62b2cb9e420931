"""``onnxcomp inspect``: where the parameters and the compute sit."""
from __future__ import annotations

import click

from typing import Any

from onnxcomp.cli.common import emit, json_option, load_model, model_argument
from onnxcomp.cli.options import config_options
from onnxcomp.config import DataConfig
from onnxcomp.report.tables import fmt_bytes, fmt_count, fmt_pct, table


def render(r: Any, top: int | None = None) -> str:
    """The human-readable inspect report."""
    layers = r.layers if top is None else sorted(r.layers, key=lambda x: -(x.macs or 0))[:top]
    rows = []
    for x in layers:
        geom = ""
        if x.kernel:
            geom = "x".join(map(str, x.kernel))
            if x.stride and any(s != 1 for s in x.stride):
                geom += f" /{'x'.join(map(str, x.stride))}"
            if x.groups > 1:
                geom += f" g{x.groups}"
        rows.append([x.name, x.op, geom, "x".join(map(str, x.weight_shape or [])) or "-",
                     fmt_count(x.params), fmt_count(x.macs), fmt_bytes(x.weight_bytes),
                     fmt_pct(x.sparsity), x.storage or "-"])
    out = [f"model: {r.model}   opset {r.opset}   IR {r.ir_version}   file {fmt_bytes(r.file_size)}",
           "inputs: " + ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in r.inputs.items()),
           "", table(["layer", "op", "kernel", "weight", "params", "MACs", "bytes", "zeros", "storage"],
                     rows, "llllrrrrl"), ""]
    op_rows = [[op, e["count"], fmt_count(e["params"]), fmt_pct(e["params_share"]),
                fmt_count(e["macs"]) + (" +?" if e["unknown_macs"] else ""), fmt_pct(e["macs_share"])]
               for op, e in sorted(r.by_op.items(), key=lambda kv: -kv[1]["params"])]
    out.append(table(["op", "layers", "params", "% params", "MACs", "% MACs"], op_rows))
    macs = fmt_count(r.total_macs) if r.total_macs is not None else \
        f"unknown (known part {fmt_count(r.known_macs)})"
    out += ["", f"total: {fmt_count(r.total_params)} params ({fmt_bytes(r.weight_bytes)} of weights), "
                f"{macs} MACs per sample",
            "weights stored as: " + (", ".join(f"{k} {v}" for k, v in r.storage.items()) or "none")]
    if r.quantized:
        out.append(f"already quantized, left alone: {len(r.quantized)} tensor(s)")
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out)


@click.command("inspect")
@model_argument
@config_options(DataConfig, only=("input_shape",))
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Show only the N layers with the most MACs.")
@json_option
def inspect_cmd(model: str, input_shape: tuple[str, ...], top: int | None, as_json: bool) -> None:
    """Show per-layer params, MACs, weight bytes and sparsity, with totals per op type.

    MACs are per sample: a dynamic batch dimension counts as 1; other dynamic dimensions need
    --input-shape, or their MACs are reported unknown.

    Example: onnxcomp inspect model.onnx --top 10
    """
    from onnxcomp import api
    from onnxcomp.graph.shapes import parse_input_shapes

    shapes = parse_input_shapes(input_shape)
    m = load_model(model)
    report = api.inspect(m, input_shapes=shapes)
    emit(report, as_json, lambda r: render(r, top))
