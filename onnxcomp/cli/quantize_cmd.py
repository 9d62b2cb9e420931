"""``onnxcomp quantize``: weights (and activations) in onnxruntime's own integer kernels."""
from __future__ import annotations

from typing import Any

import click

from onnxcomp.cli.common import (Writing, data_options, engine_line, gate_options, holdout_option, json_option,
                                 model_argument, output_options, quiet_option, settings_line, skipped_lines,
                                 threads_option)
from onnxcomp.cli.options import config_options, take
from onnxcomp.config import CorrectionConfig, QuantizeConfig
from onnxcomp.report.tables import fmt_bytes, table


def render_quantized(result: Any) -> str:
    """Per-layer table (format, bits, measured error, bytes) plus skipped weights and notes."""
    r = result.result_of("quantize")
    kinds = {"nbits": "MatMulNBits", "qdq": "QDQ int8", "gather": "GatherBlockQuantized",
             "stored": "int8 + DequantizeLinear"}
    rows = [[c.shown, c.op, kinds.get(c.detail.get("kind"), "?"), str(c.detail.get("bits", "")),
             f"{c.detail.get('error', 0):.2e}", fmt_bytes(c.bytes_before), fmt_bytes(c.bytes_after)]
            for c in r.applied]
    lines = [f"quantize: {settings_line({k: v for k, v in r.settings.items() if k != 'optimized_check'})}"]
    if rows:
        lines.append(table(["weight", "op", "format", "bits", "error", "bytes", "after"], rows, "llllrrr"))
    lines += skipped_lines(r)
    check = r.settings.get("optimized_check")
    if check:
        lines.append(f"optimized session: relative gap {check['gap']:.2e} to the graph's meaning "
                     f"(quantization error {check['error']:.2e}): {'ok' if check['ok'] else 'MISMATCH'}")
    lines += [f"note: {n}" for x in result.results for n in x.notes]
    return "\n".join(lines + [x for x in [engine_line(result)] if x])


@click.command("quantize")
@model_argument
@config_options(QuantizeConfig, CorrectionConfig)
@threads_option
@data_options
@gate_options
@holdout_option
@output_options
@quiet_option
@json_option
def quantize_cmd(model: str, as_json: bool, **kw: Any) -> None:
    """Quantize for onnxruntime's integer kernels: smaller in memory and faster while running.

    MatMul/Gemm weights go to MatMulNBits (2-8 bits, block-wise), convs (and int8 MatMul/Gemm)
    to QDQ int8 with activation ranges calibrated on --data, embeddings to GatherBlockQuantized.
    The integers are chosen by GPTQ toward the original model's outputs, layer by layer, and each
    layer's output channels are refitted; a layer whose measured error is too large stays float.
    The optimized onnxruntime session is checked against the graph before writing.

    Example: onnxcomp quantize model.onnx --data calib.npz --weights int4 --activations none
    """
    from onnxcomp import api

    cfg, corr = take(QuantizeConfig, kw), take(CorrectionConfig, kw)
    w = Writing(model, kw, cfg.tag(), as_json)
    result = api.quantize(w.original, config=cfg, data=w.data, correction=corr.correction, threads=w.threads,
                          progress=w.progress)
    w.finish(result, render_quantized(result), command="quantize")
