"""Deep Compression without retraining: prune -> cluster -> encode (-> pack), stage by stage.

Each stage is measured the way the paper's table reports it: bytes of the stored model after the
stage, the ratio to the original file, and here also the fidelity against the original on the
calibration data (no retraining, so the quality cost must be visible).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxcomp import io
from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.pipeline.cluster import Clustered, as_data, run_cluster
from onnxcomp.config import ClusterConfig, CompressConfig, PruneConfig
from onnxcomp.encode import encode_weights
from onnxcomp.passes.base import PassResult


@dataclass
class Stage:
    """Bytes and fidelity of the model after one stage."""

    name: str
    bytes: int
    ratio: float
    fidelity: Any = None  # FidelityReport (None for the original)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "bytes": self.bytes, "ratio": self.ratio, "note": self.note,
                "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None}


@dataclass
class Pipeline:
    """The compressed model, the stage table and each pass's report."""

    model: Model
    stages: list[Stage] = field(default_factory=list)
    prune: PassResult | None = None
    cluster: Clustered | None = None
    archive: bytes | None = None

    @property
    def proto(self):
        return self.model.proto

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages],
                "passes": [self.prune.to_dict()] + self.cluster.to_dict()["passes"],
                "encodings": self.cluster.to_dict()["encodings"]}


def _size(model: Model) -> int:
    return io.model_bytes(model.proto)


def run_compress(model: ModelLike, cfg: CompressConfig, *, data: Any = None, threads: int | None = None,
                 measure: bool = True) -> Pipeline:
    """Prune a copy to ``cfg.sparsity``, cluster it to ``cfg.bits``, encode; measure every stage."""
    from onnxcomp.encode.pack import pack_bytes
    from onnxcomp.measure.fidelity import compare
    from onnxcomp.passes.prune.prune import PrunePass
    from onnxcomp.pipeline.run import run as run_passes

    original = as_model(model)
    data = as_data(data, original)
    base = _size(original)  # as the stages are measured: lazy external tensors at their bytes

    def stage(name: str, m: Model | None, size: int, note: str = "") -> Stage:
        fid = compare(original, m, data, threads=threads) if measure and m is not None else None
        return Stage(name, size, size / base, fid, note)

    out = Pipeline(original, [Stage("original", base, 1.0, None, "fp32 weights")])
    prune_cfg = PruneConfig(sparsity=cfg.sparsity, allocation=cfg.allocation,
                            granularity="tensor" if cfg.granularity == "tensor" else "channel")
    # dense zeros (+ the per-channel output correction on real data); encoded below for the table
    done = run_passes(original, [PrunePass(prune_cfg)], data=data, encoding="dense", correction="auto",
                      threads=threads)
    pruned, out.prune = done.model, done.results[0]
    stored = pruned.copy()
    names = {c.name for c in out.prune.applied}
    encode_weights(stored.proto, names, "sparse")
    out.stages.append(stage(f"pruned {cfg.sparsity:.0%}", stored, _size(stored), "sparse encodings"))
    cluster_cfg = ClusterConfig(bits=cfg.bits, granularity=cfg.granularity, allocation=cfg.bit_allocation)
    out.cluster = run_cluster(pruned, cluster_cfg, data=data, threads=threads)
    out.model = out.cluster.model
    out.stages.append(stage(f"clustered {cfg.bits:g} bits", out.model, _size(out.model),
                            "codebook / sparse+codebook encodings"))
    if cfg.pack:
        out.archive, _ = pack_bytes(io.serialize(out.model.proto))  # lazy tensors read in
        last = out.stages[-1]
        out.stages.append(Stage("packed (lzma)", len(out.archive), len(out.archive) / base, last.fidelity,
                                "lossless: same fidelity as clustered"))
    return out
