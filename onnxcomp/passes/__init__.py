"""The compression passes, one file or folder each; :func:`make_pass` builds one from its step config.

Shared by every pass: :mod:`.base` (Pass, PassResult, Context). Shared by the local rewrites
(factorize, depthwise): :mod:`.rewrite` (layers, conv geometry, graph edits) and
:mod:`.layerstats`.
"""
from __future__ import annotations

from typing import Any


def make_pass(config: Any):
    """The pass that carries out a step config (PruneConfig -> PrunePass, ...)."""
    from onnxcomp.config import (ClusterConfig, CorrectionConfig, DepthwiseConfig, FactorizeConfig, Int8Config,
                                 PruneConfig, QuantizeConfig, StructuredPruneConfig)
    from onnxcomp.passes.cluster.cluster import ClusterPass
    from onnxcomp.passes.correction import CorrectionPass
    from onnxcomp.passes.depthwise import DepthwisePass
    from onnxcomp.passes.factorize.factorize import FactorizePass
    from onnxcomp.passes.prune.prune import PrunePass
    from onnxcomp.passes.quantize.quantize import QuantizePass
    from onnxcomp.passes.structured.structured import StructuredPrunePass

    table = {PruneConfig: PrunePass, StructuredPruneConfig: StructuredPrunePass, FactorizeConfig: FactorizePass,
             DepthwiseConfig: DepthwisePass, ClusterConfig: ClusterPass, CorrectionConfig: CorrectionPass,
             Int8Config: QuantizePass, QuantizeConfig: QuantizePass}
    for cls, p in table.items():
        if type(config) is cls:
            return p(config)
    raise TypeError(f"no pass takes a {type(config).__name__}")
