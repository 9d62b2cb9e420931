"""The compression passes, one file or folder each; :func:`make_pass` builds one from its step config.

Shared by every pass: :mod:`.base` (Pass, PassResult, Context). Shared by the local rewrites
(factorize, depthwise): :mod:`.rewrite` (layers, conv geometry, graph edits) and
:mod:`.layerstats`.
"""
from __future__ import annotations

import importlib
from typing import Any


def make_pass(config: Any):
    """The pass that carries out a step config (PruneConfig -> PrunePass, ...)."""
    from onnxcomp.config import (ClusterConfig, CorrectionConfig, DepthwiseConfig, FactorizeConfig, FoldConfig,
                                 Int8Config, PruneConfig, QuantizeConfig, StructuredPruneConfig)
    table = {PruneConfig: ("prune.prune", "PrunePass"), StructuredPruneConfig: ("structured.structured",
             "StructuredPrunePass"), FactorizeConfig: ("factorize.factorize", "FactorizePass"),
             DepthwiseConfig: ("depthwise", "DepthwisePass"), ClusterConfig: ("cluster.cluster", "ClusterPass"),
             CorrectionConfig: ("correction", "CorrectionPass"), Int8Config: ("quantize.quantize", "QuantizePass"),
             QuantizeConfig: ("quantize.quantize", "QuantizePass"), FoldConfig: ("fold", "FoldPass")}
    for cls, (module, name) in table.items():
        if type(config) is cls:  # only the pass asked for is imported (start-up: scipy.optimize etc.)
            return getattr(importlib.import_module(f"onnxcomp.passes.{module}"), name)(config)
    raise TypeError(f"no pass takes a {type(config).__name__}")
