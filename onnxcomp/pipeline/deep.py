"""Deep Compression without retraining: prune -> cluster -> encode (-> pack), stage by stage.

Each stage is measured the way the paper's table reports it: bytes of the stored model after the
stage, the ratio to the original file, and here also the fidelity against the original on the
calibration data (no retraining, so the quality cost must be visible). Both steps go through the
one runner (:func:`onnxcomp.pipeline.run.run`); the stages are measured between them.
"""
from __future__ import annotations

from typing import Any

from onnxcomp import io
from onnxcomp.config import ClusterConfig, CorrectionConfig, PruneConfig
from onnxcomp.encode import encode_weights
from onnxcomp.io.model import Model, ModelLike, as_model
from onnxcomp.passes.base import Context
from onnxcomp.pipeline.run import Result, Stage, as_data, run


def compress(model: ModelLike, prune: PruneConfig, cluster: ClusterConfig, *, data: Any = None,
             correction: CorrectionConfig | str = "auto", threads: int | None = None, pack: bool = False,
             measure: bool = True, progress: Any = None, encoding: str = "auto") -> Result:
    """Prune a copy, cluster it, encode; ``result.stages`` gives bytes and fidelity after each stage
    (measured on ``data``; random data when None) and ``result.archive`` the packed bytes."""
    from onnxcomp.encode.pack import pack_bytes
    from onnxcomp.measure.fidelity import compare

    original = as_model(model)
    data = as_data(data, original)
    base = io.model_bytes(original.proto)  # as the stages are measured: lazy external tensors at their bytes
    stages = [Stage("original", base, 1.0, None, "fp32 weights")]

    def stage(name: str, m: Model, note: str) -> Stage:
        size = io.model_bytes(m.proto)
        fid = compare(original, m, data, threads=threads) if measure else None
        return Stage(name, size, size / base, fid, note)

    def after(i: int, work: Model, ctx: Context) -> None:
        if i == 0:  # the pruned model as the sparse encodings would store it
            stored = work.copy()
            encode_weights(stored.proto, {c.name for c in ctx.history[0].applied}, "sparse")
            stages.append(stage(f"pruned {prune.level:.0%}", stored, "sparse encodings"))

    out = run(original, [prune, cluster], data=data, correction=correction, encoding=encoding, threads=threads,
              progress=progress, after_step=after)
    stages.append(stage(f"clustered {cluster.budget_bits:g} bits", out.model, "codebook / sparse+codebook encodings"))
    if pack:
        out.archive, _ = pack_bytes(io.serialize(out.proto))  # lazy tensors read in
        last = stages[-1]
        stages.append(Stage("packed (lzma)", len(out.archive), len(out.archive) / base, last.fidelity,
                            "lossless: same fidelity as clustered"))
    out.stages = stages
    return out
