"""The Python API: load a model, inspect it, compress it, save it.

>>> import onnxcomp as oc
>>> m = oc.load("models/resnet_digits.onnx")
>>> r = oc.inspect(m)
>>> oc.save(m, "/tmp/copy.onnx")

Every compression function takes the options of its step config by the same names the command
line uses (``round_to`` for ``--round-to``; see :mod:`onnxcomp.config`), or a ready ``config``,
and runs it through the one runner (:func:`onnxcomp.pipeline.run.run`). It returns a
:class:`~onnxcomp.pipeline.run.Result`; save ``result.model`` with :func:`save`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onnxcomp import io
from onnxcomp.config import (ClusterConfig, CorrectionConfig, DepthwiseConfig, EncodeConfig, FactorizeConfig,
                             PruneConfig, QuantizeConfig, StructuredPruneConfig, build)
from onnxcomp.io.model import Model, ModelLike, as_model, load_model
from onnxcomp.measure.inspect import InspectReport
from onnxcomp.measure.inspect import inspect as _inspect
from onnxcomp.pipeline.run import Result, run


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
            samples: int | None = None, threads: int | None = None):
    """Fidelity of ``candidate`` against ``original`` on the same inputs (see onnxcomp.measure.fidelity).

    ``data``: a path (.npz, .npy, folder), None for random data, or an iterable of batches.
    """
    from onnxcomp.measure.fidelity import compare as _compare

    return _compare(original, candidate, data, labels=labels, per_layer=per_layer, threads=threads,
                    input_shapes=input_shapes, batch_size=batch_size, num_samples=samples)


def bench(models, *, threads: int | None = 1, provider: str = "CPUExecutionProvider", runs: int = 50,
          warmup: int = 5, batch_size: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None,
          ort_format: bool = False, mobile_check: bool = False):
    """Benchmark model files side by side in onnxruntime, one child process each (see onnxcomp.measure.bench)."""
    from onnxcomp.measure.bench import bench as _bench

    return _bench(list(models), threads=threads, provider=provider, runs=runs, warmup=warmup, batch=batch_size,
                  input_shapes=input_shapes, ort_format=ort_format, mobile_check=mobile_check)


def _step(cls: type, config: Any, options: dict[str, Any], name: str) -> Any:
    """The step config: ``config`` as given, or built from the options (unknown names refused)."""
    given = {k: v for k, v in options.items()}
    if config is not None:
        if given:
            raise TypeError(f"{name}: give either config= or options, not both ({', '.join(given)})")
        return config
    return build(cls, given, step=name)


def prune(model: ModelLike, sparsity: float | None = None, *, data: Any = None, structured: bool = False,
          correction: str = "auto", encoding: str = "auto", config: PruneConfig | None = None,
          input_shapes: dict | None = None, threads: int | None = None, progress: Any = None,
          **options: Any) -> Result:
    """Prune single weights (or N:M, or with ``structured=True`` whole channels: :func:`prune_channels`).

    ``sparsity``: the fraction of the prunable parameters removed (default 0.5); further options
    are the fields of :class:`onnxcomp.config.PruneConfig` (allocation, granularity, nm, score, ...).
    With real calibration ``data`` each pruned layer's output channels are refitted (``correction``).
    """
    if structured:
        if sparsity is not None:
            _contradiction()
        return prune_channels(model, data=data, input_shapes=input_shapes, threads=threads, progress=progress,
                              **options)
    if sparsity is not None:
        options["sparsity"] = sparsity
    cfg = _step(PruneConfig, config, options, "prune")
    return run(model, [cfg], data=data, correction=CorrectionConfig(correction), encoding=EncodeConfig(encoding),
               input_shapes=input_shapes, threads=threads, progress=progress)


def _contradiction() -> None:
    from onnxcomp.config import spell
    from onnxcomp.errors import ConfigError

    raise ConfigError(f"{spell('structured')} takes {spell('ratio')} (fraction of channels), not {spell('sparsity')}",
                      f"give {spell('ratio')} R with {spell('structured')}")


def prune_channels(model: ModelLike, ratio: float | None = None, *, data: Any = None,
                   config: StructuredPruneConfig | None = None, input_shapes: dict | None = None,
                   threads: int | None = None, seed: int = 0, progress: Any = None, **options: Any) -> Result:
    """Structured pruning: remove whole channels and every tensor coupled to them (real speed).

    ``ratio``: fraction of channels removed (default 0.5); options: the fields of
    :class:`onnxcomp.config.StructuredPruneConfig`. Real calibration ``data`` turns on activation
    importance, sensitivity allocation and the least-squares refit. ``result.result.groups`` lists
    every group, pruned or frozen (with the reason).
    """
    if ratio is not None:
        options["ratio"] = ratio
    cfg = _step(StructuredPruneConfig, config, options, "prune --structured")
    return run(model, [cfg], data=data, correction=None, encoding="dense", input_shapes=input_shapes,
               threads=threads, seed=seed, progress=progress)


def factorize(model: ModelLike, method: str | None = None, *, data: Any = None,
              config: FactorizeConfig | None = None, input_shapes: dict | None = None, threads: int | None = None,
              progress: Any = None, **options: Any) -> Result:
    """Low-rank factorization of convs and Gemm/MatMul (spatial, tucker2, svd, auto).

    Options: the fields of :class:`onnxcomp.config.FactorizeConfig` (``ratio`` = the fraction of each
    layer's MACs removed, default 0.5; or ``rank`` / ``energy``). Real calibration ``data`` makes
    the factors data-aware (lower output error at the same rank).
    """
    if method is not None:
        options["method"] = method
    cfg = _step(FactorizeConfig, config, options, "factorize")
    return run(model, [cfg], data=data, correction=None, encoding="dense", input_shapes=input_shapes,
               threads=threads, progress=progress)


def depthwise(model: ModelLike, *, data: Any = None, config: DepthwiseConfig | None = None,
              input_shapes: dict | None = None, threads: int | None = None, progress: Any = None,
              **options: Any) -> Result:
    """Dense convs -> depthwise + pointwise (``multiplier``) or grouped convs (``groups``).

    ``energy`` alone picks the smallest multiplier keeping that fraction of the weight energy
    (default 0.9); with ``multiplier``/``groups`` it is a floor below which a layer is skipped.
    """
    cfg = _step(DepthwiseConfig, config, options, "depthwise")
    return run(model, [cfg], data=data, correction=None, encoding="dense", input_shapes=input_shapes,
               threads=threads, progress=progress)


def cluster(model: ModelLike, bits: float | None = None, *, data: Any = None, correction: str = "auto",
            encoding: str = "auto", config: ClusterConfig | None = None, threads: int | None = None,
            seed: int = 0, progress: Any = None, **options: Any) -> Result:
    """k-means weight sharing (2^bits or ``clusters`` values per codebook), stored as indices + codebooks.

    Options: the fields of :class:`onnxcomp.config.ClusterConfig` (granularity, allocation, ...).
    Real calibration ``data`` weights the k-means, assigns weights GPTQ-style to match the
    original outputs, and refits each layer's channels (``correction``; the scales go into the
    codebooks' channel scales, so the file stays the same size).
    """
    if bits is not None:
        options["bits"] = bits
    cfg = _step(ClusterConfig, config, options, "cluster")
    return run(model, [cfg], data=data, correction=CorrectionConfig(correction), encoding=EncodeConfig(encoding),
               threads=threads, seed=seed, progress=progress)


def quantize(model: ModelLike, *, data: Any = None, correction: str = "auto", config: QuantizeConfig | None = None,
             threads: int | None = None, seed: int = 0, progress: Any = None, **options: Any) -> Result:
    """Weights (and activations) in onnxruntime's integer kernels: MatMulNBits, QDQ int8, GatherBlockQuantized.

    Options: the fields of :class:`onnxcomp.config.QuantizeConfig` (``weights`` int8/int4/int2,
    ``activations`` int8/none, ``block``, ...). Real calibration ``data`` is needed for int8
    activations and GPTQ; each layer's output channels are refitted (``correction``).
    """
    cfg = _step(QuantizeConfig, config, options, "quantize")
    return run(model, [cfg], data=data, correction=CorrectionConfig(correction), encoding="dense",
               threads=threads, seed=seed, progress=progress)


def compress(model: ModelLike, sparsity: float = 0.9, bits: float = 4, *, data: Any = None,
             granularity: str = "auto", allocation: str = "auto", bit_allocation: str = "uniform",
             correction: str = "auto", pack: bool = False, threads: int | None = None,
             progress: Any = None, measure: bool = True, encoding: str = "auto") -> Result:
    """Deep Compression without retraining: prune -> cluster -> encode (-> ``pack``).

    ``result.stages`` gives bytes and fidelity after each stage (measured on ``data``; random
    data when None; sizes only with ``measure=False``); ``result.archive`` the packed bytes;
    ``encoding`` as :class:`onnxcomp.config.EncodeConfig` (``smallest``: every weight in its
    smallest encoding, whatever onnxruntime needs to load it).
    """
    from onnxcomp.pipeline.deep import compress as _compress

    prune_cfg = PruneConfig(sparsity=sparsity, allocation=allocation,
                            granularity="tensor" if granularity == "tensor" else "channel")
    cluster_cfg = ClusterConfig(bits=bits, granularity=granularity, allocation=bit_allocation)
    return _compress(model, prune_cfg, cluster_cfg, data=data, correction=CorrectionConfig(correction),
                     threads=threads, pack=pack, progress=progress, measure=measure,
                     encoding=EncodeConfig(encoding).encoding)


def replay(model: ModelLike, recipe: str | os.PathLike | dict, *, data: Any = None, threads: int | None = None,
           progress: Any = None) -> Result:
    """Run a recipe (a YAML file written by ``onnxcomp auto``, or its dict) on ``model``."""
    from onnxcomp.pipeline import recipe as recipes

    rec = recipe if isinstance(recipe, dict) else recipes.load(recipe)
    return recipes.apply(model, rec, data=data, threads=threads, progress=progress)


def pack(model: str | os.PathLike, output: str | os.PathLike | None = None, *, force: bool = False):
    """Write ``model`` (an .onnx file) as an entropy-coded .onnxc archive; returns a PackReport."""
    from onnxcomp.encode.packfile import pack_file

    return pack_file(model, output, force=force)


def unpack(archive: str | os.PathLike, output: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Restore the byte-identical .onnx file from an archive (sha256 checked); returns its path."""
    from onnxcomp.encode.packfile import unpack_file

    return unpack_file(archive, output, force=force)


def sensitivity(model: ModelLike, data: Any, method: str = "prune", *, levels=None, samples: int = 32,
                jobs: int = 1, min_params: int = 1024, progress: Any = None):
    """Each layer's output error with only that layer compressed, at each level (see onnxcomp.pipeline.sweep)."""
    from onnxcomp.pipeline.sweep import sweep

    m = as_model(model)
    return sweep(m.proto, data, method, levels=levels, samples=samples, jobs=jobs, min_params=min_params,
                 progress=progress)


def auto(model: ModelLike, data: Any, *, config: Any = None, threads: int | None = None, labels: Any = None,
         progress: Any = None, **options: Any):
    """Search recipes for a size, latency or MACs target within ``max_drop`` (see onnxcomp.pipeline.auto):
    it stops at the first candidate meeting the target; ``keep_going`` searches on for the best.

    Options: the fields of :class:`onnxcomp.config.AutoConfig` (``target_size``, ``target_latency``,
    ``target_macs``, ``max_drop``, ``int8``, ``keep_going``, ``jobs`` candidates at once, ``scheduler``
    a dask.distributed address), or a ready ``config``.
    """
    from onnxcomp.config import AutoConfig
    from onnxcomp.pipeline.auto import search

    cfg = _step(AutoConfig, config, options, "auto")
    return search(as_model(model), data, cfg, threads=threads, labels=labels, progress=progress)
