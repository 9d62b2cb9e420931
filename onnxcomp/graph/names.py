"""Names a user can read: the layer behind a weight whose own name the exporter made up."""
from __future__ import annotations

import re
from typing import Iterable

from onnxcomp.graph.weights import Weight

# weight names exporters generate from a counter: torch's legacy exporter (onnx::MatMul_314), its
# dynamo exporter (val_111), tf2onnx's constant folding (const_fold_opt__429), bare numbers
GENERATED = re.compile(r"^(onnx::.*|_?val_\d+|const_fold_opt__\d+|\d+)$")


def layer_names(weights: Iterable[Weight]) -> dict[str, str]:
    """{weight name: the name of the node that reads it} for the weights whose names were generated
    (a Hugging Face BERT exported by torch lists twelve ``onnx::MatMul_3xx``: which layer each is,
    only the node's name, ``/encoder/layer.1/output/dense/MatMul``, says; --include/--exclude
    match either)."""
    out = {}
    for w in weights:
        named = [u.node.name for u in w.uses if u.node.name]
        if GENERATED.match(w.name) and named:
            out[w.name] = named[0]
    return out
