"""onnxcomp: post-training compression of ONNX models.

The public API, re-exported; see :mod:`onnxcomp.api`.
"""
from onnxcomp.io.model import Model, as_model
from onnxcomp.api import bench, compare, inspect, load, prune, save
from onnxcomp.api import depthwise, factorize
from onnxcomp.api import cluster, compress, pack, unpack
from onnxcomp.data.calibration import CalibrationData, load_data
from onnxcomp.errors import (ConfigError, DataError, ModelLoadError, ModelSaveError, OnnxCompError,
    QualityGateError, UnsupportedModelError)
from onnxcomp.measure.fidelity import FidelityReport
from onnxcomp.graph.weights import Weight, find_weights
from onnxcomp.measure.inspect import InspectReport

__all__ = [
    "Model", "as_model", "load", "save", "inspect", "find_weights", "Weight", "InspectReport",
    "OnnxCompError", "ModelLoadError", "ModelSaveError", "ConfigError", "DataError",
    "UnsupportedModelError", "QualityGateError",
    "compare", "bench", "load_data", "CalibrationData", "FidelityReport", "prune",
]
__all__ += ["factorize", "depthwise"]
__all__ += ["cluster", "compress", "pack", "unpack"]
from onnxcomp.api import prune_channels  # noqa: E402
__all__ += ["prune_channels"]
__version__ = "0.1.0"
