"""The Python API: load a model, inspect it, compress it, save it.

>>> import onnxcomp as oc
>>> m = oc.load("models/resnet_digits.onnx")
>>> r = oc.inspect(m)
>>> oc.save(m, "/tmp/copy.onnx")
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxcomp import io
from onnxcomp.io.model import Model, ModelLike, as_model, load_model
from onnxcomp.measure.inspect import InspectReport
from onnxcomp.measure.inspect import inspect as _inspect


def load(path: str | os.PathLike, *, lazy: bool = False) -> Model:
    """Load an ONNX model (with external data beside it); raises ModelLoadError on bad input.

    ``lazy``: big external tensors stay on disk until read (see :func:`onnxcomp.io.load`); the
    proto then refers to them by absolute path, so save it with :func:`save`, not onnx.save.
    """
    return load_model(path, lazy=lazy)


def save(model: ModelLike, path: str | os.PathLike, *, force: bool = False, verify: bool = True) -> Path:
    """Save atomically (verified by onnx.checker and an onnxruntime load); never onto the source."""
    m = as_model(model)
    return io.save(m.proto, path, input_path=m.path, force=force, verify=verify)


def inspect(model: ModelLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> InspectReport:
    """Per-layer params, MACs, weight bytes and sparsity, with totals per op type."""
    m = as_model(model)
    return _inspect(m.proto, input_shapes=input_shapes, file_size=m.file_size,
                    name=str(m.path) if m.path else "")


def compare(original: ModelLike, candidate: ModelLike, data=None, *, labels=None, per_layer: bool = False,
            input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 16,
            num_samples: int | None = None, threads: int | None = None):
    """Fidelity of ``candidate`` against ``original`` on the same inputs (see onnxcomp.measure.fidelity).

    ``data``: a path (.npz, .npy, folder), None for random data, or an iterable of batches.
    """
    from onnxcomp.measure.fidelity import compare as _compare

    return _compare(original, candidate, data, labels=labels, per_layer=per_layer, threads=threads,
                    input_shapes=input_shapes, batch_size=batch_size, num_samples=num_samples)


def bench(models, *, threads: int | None = 1, provider: str = "CPUExecutionProvider", runs: int = 50,
          warmup: int = 5, batch: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None,
          ort_format: bool = False, mobile_check: bool = False):
    """Benchmark model files side by side in onnxruntime, one child process each (see onnxcomp.measure.bench)."""
    from onnxcomp.measure.bench import bench as _bench

    return _bench(list(models), threads=threads, provider=provider, runs=runs, warmup=warmup, batch=batch,
                  input_shapes=input_shapes, ort_format=ort_format, mobile_check=mobile_check)


def prune(model: ModelLike, sparsity: float = 0.5, *, data=None, allocation: str = "auto",
          granularity: str = "channel", nm: tuple[int, int] | str | None = None,
          include=(), exclude=(), min_params: int = 1024, include_depthwise: bool = False,
          encoding: str = "auto", max_layer_sparsity: float = 0.98, correction: str = "auto",
          score: str = "magnitude", structured: bool = False, threads: int | None = None, **structured_options):
    """Prune weights (unstructured or N:M) with a layer-adaptive budget; returns a Compressed.

    ``sparsity`` is the fraction of the prunable parameters removed overall. ``data``: real
    calibration inputs (path, CalibrationData or iterable of batches) enable data-aware scores
    and per-channel output correction (``correction``: auto, affine, bias, none). ``structured=True`` removes whole channels instead
    (see :func:`prune_channels`). Save the result with ``oc.save(result.model, path)``.
    """
    if structured:
        return prune_channels(model, data=data, include=include, exclude=exclude,
                              threads=threads, **structured_options)
    from onnxcomp.config import PruneConfig
    from onnxcomp.passes.prune.prune import PrunePass
    from onnxcomp.pipeline.run import run

    cfg = PruneConfig(sparsity=sparsity, allocation=allocation, granularity=granularity, nm=nm,
                      include=include, exclude=exclude, min_params=min_params,
                      include_depthwise=include_depthwise, encoding=encoding,
                      max_layer_sparsity=max_layer_sparsity, score=score)
    return run(model, [PrunePass(cfg)], data=data, encoding=encoding, correction=correction,
               threads=threads)


def factorize(model: ModelLike, method: str = "auto", *, rank: int | None = None, energy: float | None = None,
              ratio: float | None = None, round_to: int = 8, data=None, data_aware: bool | None = None,
              measure: bool = False, include=(), exclude=(), min_params: int = 1024,
              allow_growth: bool = False, hooi_iters: int = 2, max_samples: int = 64,
              max_error: float | None = None, sequential: bool = True, waves: int = 8,
              input_shapes: dict[str, tuple[int, ...]] | None = None, threads: int | None = None):
    """Low-rank factorization of convs and Gemm/MatMul (spatial, tucker2, svd, auto); returns a Compressed.

    Ranks: ``rank``, ``energy`` (fraction of squared singular values kept) or ``ratio`` (target
    MACs per layer; default 0.5), rounded up to ``round_to``. Real calibration ``data`` makes
    the factors data-aware (lower output error at the same rank). See onnxcomp.passes.factorize.factorize.
    """
    from onnxcomp.config import FactorizeConfig
    from onnxcomp.passes.factorize.factorize import FactorizePass
    from onnxcomp.pipeline.run import run

    cfg = FactorizeConfig(method=method, rank=rank, energy=energy, ratio=ratio, round_to=round_to,
                          data_aware=data_aware, measure=measure, include=include, exclude=exclude,
                          min_params=min_params, allow_growth=allow_growth, hooi_iters=hooi_iters,
                          max_samples=max_samples, max_error=max_error, sequential=sequential, waves=waves)
    return run(model, [FactorizePass(cfg)], data=data, encoding="dense", correction="none",
               input_shapes=input_shapes, threads=threads)


def depthwise(model: ModelLike, *, multiplier: int | None = None, groups: int | None = None,
              energy: float | None = None, data=None, data_aware: bool | None = None, measure: bool = False,
              include=(), exclude=(), min_params: int = 1024, allow_growth: bool = False,
              max_samples: int = 64, input_shapes: dict[str, tuple[int, ...]] | None = None,
              threads: int | None = None):
    """Dense convs -> depthwise + pointwise (``multiplier``) or grouped convs (``groups``); returns a Compressed.

    ``energy`` alone picks the smallest multiplier keeping that fraction of the weight energy
    (default 0.9); with ``multiplier``/``groups`` it is a floor below which a layer is skipped.
    """
    from onnxcomp.config import DepthwiseConfig
    from onnxcomp.passes.depthwise import DepthwisePass
    from onnxcomp.pipeline.run import run

    cfg = DepthwiseConfig(multiplier=multiplier, groups=groups, energy=energy, data_aware=data_aware,
                          measure=measure, include=include, exclude=exclude, min_params=min_params,
                          allow_growth=allow_growth, max_samples=max_samples)
    return run(model, [DepthwisePass(cfg)], data=data, encoding="dense", correction="none",
               input_shapes=input_shapes, threads=threads)


def cluster(model: ModelLike, bits: float | None = None, *, clusters: int | None = None,
            granularity: str = "auto", init: str = "linear", allocation: str = "uniform", data=None,
            include=(), exclude=(), min_params: int = 1024, include_depthwise: bool = False,
            iterations: int = 40, encoding: str = "auto", threads: int | None = None, seed: int = 0,
            gptq: bool | None = None, correction: str = "auto", max_samples: int = 128):
    """k-means weight sharing (2^bits or ``clusters`` values per codebook); returns a Clustered.

    ``granularity``: tensor, channel, shared (one codebook over per-channel-scaled weights), grid
    (a uniform step per channel in a variable-length code) or auto (default: channel, or
    shared/grid per layer where a mixed/sensitivity allocation finds it cheaper for the error). Real calibration ``data`` weights the k-means by E[x^2] of each input. The result's
    ``model`` is encoded (indices + codebook); save it with ``oc.save(result.model, path)``.
    """
    from onnxcomp.pipeline.cluster import run_cluster
    from onnxcomp.config import ClusterConfig

    cfg = ClusterConfig(bits=bits, clusters=clusters, granularity=granularity, init=init,
                        allocation=allocation, include=include, exclude=exclude, min_params=min_params,
                        include_depthwise=include_depthwise, iterations=iterations, encoding=encoding,
                        gptq=gptq, correction=correction, max_samples=max_samples)
    return run_cluster(model, cfg, data=data, threads=threads, seed=seed)


def compress(model: ModelLike, sparsity: float = 0.9, bits: float = 4, *, data=None,
             granularity: str = "auto", allocation: str = "auto", bit_allocation: str = "uniform",
             threads: int | None = None):
    """Deep Compression without retraining: prune -> cluster -> encode; returns a Pipeline.

    ``result.model`` is the encoded model; ``result.stages`` gives bytes and fidelity after each
    stage (measured on ``data``; random data when None). Pack it with :func:`pack`.
    """
    from onnxcomp.pipeline.deep import run_compress
    from onnxcomp.config import CompressConfig

    cfg = CompressConfig(sparsity=sparsity, bits=bits, granularity=granularity, allocation=allocation,
                         bit_allocation=bit_allocation)
    return run_compress(model, cfg, data=data, threads=threads)


def pack(model: str | os.PathLike, output: str | os.PathLike | None = None, *, force: bool = False):
    """Write ``model`` (an .onnx file) as an entropy-coded .onnxc archive; returns a PackReport."""
    from onnxcomp.encode.packfile import pack_file

    return pack_file(model, output, force=force)


def unpack(archive: str | os.PathLike, output: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Restore the byte-identical .onnx file from an archive (sha256 checked); returns its path."""
    from onnxcomp.encode.packfile import unpack_file

    return unpack_file(archive, output, force=force)


def prune_channels(model: ModelLike, ratio: float = 0.5, *, importance: str = "auto", allocation: str = "auto",
                   round_to: int = 8, refit: bool | None = None, data=None, include=(), exclude=(),
                   max_samples: int = 256, input_shapes: dict[str, tuple[int, ...]] | None = None,
                   threads: int | None = None, seed: int = 0, config=None):
    """Structured pruning: remove whole channels and every tensor coupled to them; returns a Compressed.

    ``ratio`` is the fraction of channels removed (``allocation`` uniform: in every prunable
    group; sensitivity: the same MACs saving where the output moves least). Real calibration
    ``data`` turns on activation importance, sensitivity allocation and the least-squares refit.
    ``result.results[0].groups`` lists every group, pruned or frozen (with the reason). Save with
    ``oc.save(result.model, path)``. ``config``: a ready StructuredPruneConfig (overrides the rest).
    """
    from onnxcomp.config import StructuredPruneConfig
    from onnxcomp.passes.base import Context
    from onnxcomp.passes.structured.structured import StructuredPrunePass
    from onnxcomp.pipeline.run import Compressed, as_data

    cfg = config or StructuredPruneConfig(ratio=ratio, importance=importance, allocation=allocation,
                                          round_to=round_to, refit=refit, include=include, exclude=exclude,
                                          max_samples=max_samples)
    original = as_model(model)
    data = as_data(data, original, input_shapes)
    ctx = Context(data=data, input_shapes=dict(input_shapes or {}), threads=threads, seed=seed)
    work = original.copy()
    work.path = None
    result = StructuredPrunePass(cfg).run(work.proto, ctx)
    return Compressed(work, [result])
