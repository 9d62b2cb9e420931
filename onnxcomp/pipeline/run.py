"""Run passes on a copy of a model, then store every changed weight in its smallest encoding."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import onnx

from onnxcomp import io
from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.config import CORRECTIONS
from onnxcomp.encode import EncodeChoice, encode_weights
from onnxcomp.errors import ConfigError
from onnxcomp.passes.base import Context, Pass, PassResult


@dataclass
class Compressed:
    """A compressed model (not yet written) with one PassResult per pass and the encodings chosen."""

    model: Model
    results: list[PassResult] = field(default_factory=list)
    encodings: list[EncodeChoice] = field(default_factory=list)

    @property
    def proto(self) -> onnx.ModelProto:
        return self.model.proto

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [r.to_dict() for r in self.results],
                "encodings": [e.to_dict() for e in self.encodings]}


def as_data(data: Any, model: Model, input_shapes: dict | None = None) -> Any:
    """None stays None (data-free); anything else becomes validated CalibrationData."""
    from onnxcomp.data.calibration import CalibrationData, load_data

    if data is None or isinstance(data, CalibrationData):
        return data
    return load_data(data, model.proto, input_shapes=input_shapes)


def run(model: ModelLike, passes: Sequence[Pass], *, data: Any = None, encoding: str = "auto",
        correction: str = "auto", input_shapes: dict | None = None, threads: int | None = None,
        progress: bool = False, seed: int = 0) -> Compressed:
    """Apply ``passes`` in order to a copy of ``model``, correct, and encode the changed weights.

    A model loaded lazily (``io.load(path, lazy=True)``, as the CLI does) is copied without its
    big tensors: passes read each weight from disk when they need it. The result holds only live
    bytes; above 2 GB, weights no pass changed stay references to the input's external data.

    Needs are checked before anything runs: a pass that needs real calibration data refuses
    random or missing data with a one-line error. ``correction`` (auto = affine with real data,
    none without) refits each changed layer's output channels on the calibration data, layer by
    layer (:mod:`onnxcomp.passes.correction`).
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"--correction {correction!r} is not one of {', '.join(CORRECTIONS)}",
                          "choose auto, affine, bias or none")
    original = as_model(model)
    data = as_data(data, original, input_shapes)
    ctx = Context(data=data, input_shapes=dict(input_shapes or {}), threads=threads,
                  progress=progress, seed=seed)
    for p in passes:
        if p.needs_data and not ctx.has_real_data:
            raise ConfigError(f"{p.name} needs real calibration data",
                              "pass --data with inputs from your task (e.g. a calib.npz)")
    work = original.copy()
    work.path = None
    results = [p.run(work.proto, ctx) for p in passes]
    if results:
        from onnxcomp.graph.weights import find_weights
        from onnxcomp.measure.inspect import subgraph_notes

        results[0].notes += subgraph_notes(find_weights(original.proto))
    touched = {c.name for r in results for c in r.applied}
    if touched:
        from onnxcomp.passes.correction import apply_correction

        apply_correction(original.proto, work.proto, touched, data, correction, results[-1], threads=threads)
    encodings = encode_weights(work.proto, names=touched, encoding=encoding) if touched else []
    if touched:
        # the rewritten weights' old and intermediate bytes stay in the proto's arena until it is
        # freed: keep a copy of the live bytes only (lazy tensors read in when below 2 GB)
        work.proto = io.compact(work.proto)
    sizes = {e.name: e.bytes for e in encodings}
    for r in results:
        for c in r.applied:
            if c.name in sizes:
                c.bytes_after = sizes[c.name]
    return Compressed(work, results, encodings)
