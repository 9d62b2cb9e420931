"""The layer behind each weight whose name the exporter made up, in a run's rows and notes."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from onnxcomp.graph.weights import Weight
from onnxcomp.passes.base import PassResult

# weight names exporters generate from a counter: torch's legacy exporter (onnx::MatMul_314), its
# dynamo exporter (val_111), tf2onnx's constant folding (const_fold_opt__429), bare numbers
GENERATED = re.compile(r"^(onnx::.*|_?val_\d+|const_fold_opt__\d+|\d+)$")


def layer_names(weights: Iterable[Weight]) -> dict[str, str]:
    """{weight name: the name of the first node that reads it} for the weights whose names were
    generated (a Hugging Face BERT exported by torch lists twelve ``onnx::MatMul_3xx``: only the
    node's name, ``/encoder/layer.1/output/dense/MatMul``, says which layer each is;
    --include/--exclude match either)."""
    out = {}
    for w in weights:
        named = [u.node.name for u in w.uses if u.node.name]
        if GENERATED.match(w.name) and named:
            out[w.name] = named[0]
    return out


def label_layers(results: Sequence[PassResult], weights: Iterable[Weight]) -> None:
    """Give each change of a weight named from a counter (``onnx::MatMul_314``) its layer's name
    (``detail["layer"]``, which the tables show), and name the layer in the notes too (a note
    that lists the output layers held at the target read ``onnx::MatMul_314, onnx::MatMul_330``).
    A bare number is left as it is in the notes: it could be any figure of the text."""
    shown = layer_names(weights)
    if not shown:
        return
    for c in (c for r in results for c in r.changes if c.name in shown):
        c.detail.setdefault("layer", shown[c.name])
    named = sorted((n for n in shown if not n.isdigit()), key=len, reverse=True)
    if not named:
        return
    pattern = re.compile(r"(?<![\w:/.])(" + "|".join(map(re.escape, named)) + r")(?![\w.])")
    for r in results:
        r.notes = [pattern.sub(lambda m: shown[m.group(1)], n) for n in r.notes]
