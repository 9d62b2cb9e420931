"""onnxcomp: post-training compression of ONNX models.

The public API, re-exported from :mod:`onnxcomp.api` and the layers below it. Names are
resolved on first use, so ``import onnxcomp`` (and the command line's start-up) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "onnxcomp.api": ("load", "save", "inspect", "compare", "bench", "prune", "prune_channels", "factorize",
                     "depthwise", "cluster", "quantize", "compress", "replay", "pack", "unpack"),
    "onnxcomp.io.model": ("Model", "as_model"),
    "onnxcomp.data.calibration": ("CalibrationData", "load_data"),
    "onnxcomp.errors": ("OnnxCompError", "ModelLoadError", "ModelSaveError", "ConfigError", "DataError",
                        "UnsupportedModelError", "QualityGateError"),
    "onnxcomp.measure.fidelity": ("FidelityReport",),
    "onnxcomp.graph.weights": ("Weight", "find_weights"),
    "onnxcomp.measure.inspect": ("InspectReport",),
    "onnxcomp.pipeline.run": ("Result",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxcomp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
