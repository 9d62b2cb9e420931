"""The last step of ``onnxcomp auto --int8``: onnxruntime's own static QDQ quantization.

This reuses :func:`onnxruntime.quantization.quantize_static` (per-channel int8 weights, QDQ
format) with a calibration reader over the same data; onnxcomp does not re-implement it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx

from onnxcomp import io
from onnxcomp.errors import ConfigError, UnsupportedModelError
from onnxcomp.passes.base import Context, Pass, PassResult


class _Reader:
    """onnxruntime CalibrationDataReader over CalibrationData batches."""

    def __init__(self, data: Any, limit: int = 64) -> None:
        self._batches = [b for _, b in zip(range(limit), data)]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_int8(model: onnx.ModelProto, data: Any, per_channel: bool = True) -> onnx.ModelProto:
    """Static QDQ int8 quantization of ``model`` calibrated on ``data`` (real inputs)."""
    if data is None or getattr(data, "random", False):
        raise ConfigError("int8 quantization needs real calibration data", "pass --data")
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError:  # pragma: no cover - part of onnxruntime
        raise UnsupportedModelError("onnxruntime.quantization is not available",
                                    "install the full onnxruntime package") from None
    with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-int8")) as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        io.write_model(model, src, external=io.needs_external_data(model))  # lazy tensors copied
        try:
            quantize_static(str(src), str(dst), _Reader(data), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer fails on some graphs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(f"onnxruntime's int8 quantizer failed: {first}",
                                        "run auto without --int8") from None
        return onnx.load(str(dst))


class Int8Pass(Pass):
    """Replace the model in place by onnxruntime's static QDQ int8 quantization of it."""

    name = "int8"

    def plan(self, model: onnx.ModelProto, ctx: Context) -> None:
        return None

    def apply(self, model: onnx.ModelProto, plan: None, ctx: Context) -> PassResult:
        quantized = quantize_int8(model, ctx.data, per_channel=self.config.per_channel)
        model.CopyFrom(quantized)
        return PassResult(self.name, settings={"per_channel": self.config.per_channel},
                          notes=["onnxruntime static QDQ int8 (per-channel weights, uint8 activations)"])
