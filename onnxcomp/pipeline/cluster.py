"""Run the cluster pass on a copy of a model and store the result in codebook encodings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.config import ClusterConfig
from onnxcomp.encode import EncodeChoice, encode_weights
from onnxcomp.passes.base import Context, PassResult


@dataclass
class Clustered:
    """A clustered model (not yet written), the pass report and the encoding chosen per weight."""

    model: Model
    result: PassResult
    encodings: list[EncodeChoice] = field(default_factory=list)

    @property
    def proto(self) -> onnx.ModelProto:
        return self.model.proto

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [self.result.to_dict()], "encodings": [e.to_dict() for e in self.encodings]}


def as_data(data: Any, model: Model) -> Any:
    """None stays None; paths and iterables become validated CalibrationData."""
    from onnxcomp.data.calibration import CalibrationData, load_data

    if data is None or isinstance(data, CalibrationData):
        return data
    return load_data(data, model.proto)


def run_cluster(model: ModelLike, cfg: ClusterConfig, *, data: Any = None, threads: int | None = None,
                seed: int = 0, encode: bool = True) -> Clustered:
    """Cluster a copy of ``model`` (the input is untouched), then encode the clustered weights."""
    from onnxcomp.encode.select import allowed_kinds
    from onnxcomp.passes.cluster.cluster import ClusterPass

    allowed_kinds(cfg.encoding)  # reject a bad --encoding before any work
    original = as_model(model)
    data = as_data(data, original)
    work = original.copy()
    result = ClusterPass(cfg).run(work.proto, Context(data=data, threads=threads, seed=seed))
    names = {c.name for c in result.applied}
    if names:
        from onnxcomp.passes.correction import apply_correction

        apply_correction(original.proto, work.proto, names, data, cfg.correction, result, threads=threads,
                         codebooks={c.name: c.detail["granularity"] for c in result.applied})
    encodings = encode_weights(work.proto, names, cfg.encoding) if encode and names else []
    from onnxcomp import io

    work.proto = io.compact(work.proto)  # drop the replaced float bytes; self-contained below 2 GB
    return Clustered(work, result, encodings)
