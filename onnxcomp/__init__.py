"""onnxcomp: post-training compression of ONNX models.

The public API, re-exported; see :mod:`onnxcomp.api`.
"""
from .api import Model, as_model, bench, compare, inspect, load, prune, save
from .api import depthwise, factorize
from .api import cluster, compress, pack, unpack
from .calibration import CalibrationData, load_data
from .errors import (ConfigError, DataError, ModelLoadError, ModelSaveError, OnnxCompError,
                     QualityGateError, UnsupportedModelError)
from .evaluate import FidelityReport
from .graph.weights import Weight, find_weights
from .inspection import InspectReport

__all__ = [
    "Model", "as_model", "load", "save", "inspect", "find_weights", "Weight", "InspectReport",
    "OnnxCompError", "ModelLoadError", "ModelSaveError", "ConfigError", "DataError",
    "UnsupportedModelError", "QualityGateError",
    "compare", "bench", "load_data", "CalibrationData", "FidelityReport", "prune",
]
__all__ += ["factorize", "depthwise"]
__all__ += ["cluster", "compress", "pack", "unpack"]
from .api import prune_channels  # noqa: E402
__all__ += ["prune_channels"]
__version__ = "0.1.0"
