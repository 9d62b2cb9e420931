"""One frozen dataclass per step; each option is declared once, on its field (help, choices,
default, CLI spelling), and validated in ``__post_init__`` so the API and the command line refuse
the same bad values with the same one-line message. Each step config says what it ``needs``
(real calibration data) so the runner can check every step before the first one runs.
"""
from onnxcomp.config.auto import AutoConfig
from onnxcomp.config.fold import FoldConfig, Folding
from onnxcomp.config.cluster import BitAllocation, ClusterConfig, ClusterGranularity, ClusterInit
from onnxcomp.config.options import Needs, build, cli_spelling, defaults, describe, names, option, spell, spell_value
from onnxcomp.config.quantize import ActivationBits, Int8Config, QuantizeConfig, WeightBits
from onnxcomp.config.prune import (ChannelAllocation, Importance, PruneAllocation, PruneConfig, PruneGranularity,
                                   PruneScore, Selection, SizedSelection, StructuredPruneConfig, parse_nm)
from onnxcomp.config.rewrite import DepthwiseConfig, FactorizeConfig, FactorizeMethod, RewriteConfig
from onnxcomp.config.run import (ENCODING_FAMILIES, ENCODING_KINDS, Correction, CorrectionConfig, DataConfig,
                                 EncodeConfig, Gates, Holdout, Metric, Output, Runtime)

__all__ = ["AutoConfig", "BitAllocation", "ClusterConfig", "ClusterGranularity", "ClusterInit", "Needs", "build", "cli_spelling",
           "defaults", "describe", "names", "option", "spell", "spell_value", "ChannelAllocation", "Importance",
           "PruneAllocation", "PruneConfig", "PruneGranularity", "PruneScore", "Selection", "SizedSelection",
           "StructuredPruneConfig", "parse_nm", "DepthwiseConfig", "FactorizeConfig", "FactorizeMethod",
           "RewriteConfig", "ENCODING_FAMILIES", "ENCODING_KINDS", "Correction", "CorrectionConfig",
           "DataConfig", "EncodeConfig", "Gates", "Holdout", "Int8Config", "Metric", "Output", "Runtime", "STEPS",
           "ActivationBits", "QuantizeConfig", "WeightBits", "FoldConfig", "Folding"]

# the steps of a recipe, by name
STEPS = {"structured": StructuredPruneConfig, "factorize": FactorizeConfig, "depthwise": DepthwiseConfig,
         "prune": PruneConfig, "cluster": ClusterConfig, "int8": Int8Config, "quantize": QuantizeConfig,
         "fold": FoldConfig}
