"""Measured per-layer sensitivity: how far the outputs move when one layer alone is compressed.

A probe copy of the model takes the chosen weights as graph *inputs*, so one onnxruntime session
evaluates every (layer, level) trial by feeding modified weights: no session per trial. The loss
of a trial is the mean relative squared error of the model outputs against the probe's own
uncompressed outputs on a fixed calibration subset.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxcomp.data.sampling import batch_unit, take_samples
from onnxcomp.graph.weights import Weight, find_weights, remove_storage
from onnxcomp.io.sessions import session
from onnxcomp.measure.outputs import output_error, output_parts


class Probe:
    """One onnxruntime session over a copy whose selected weights are inputs."""

    def __init__(self, model: onnx.ModelProto, weights: Sequence[Weight], batches: list[dict],
                 threads: int | None = None, logits: bool = False) -> None:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        by_name = find_weights(probe, nested=True).by_name()
        self.names = [w.name for w in weights]
        self.values: dict[str, np.ndarray] = {}
        for w in weights:
            pw = by_name[w.name]
            self.values[w.name] = pw.values().reshape(pw.stored_shape or pw.shape)
            remove_storage(probe, pw)
            elem = helper.np_dtype_to_tensor_dtype(pw.dtype)
            probe.graph.input.append(helper.make_tensor_value_info(w.name, elem, list(pw.stored_shape)))
        probe.graph.ClearField("value_info")
        if logits:
            to_logits(probe.graph)
        self.parts = output_parts(probe)
        self.sess = session(probe, threads=threads)
        self.batches = batches
        self.reference = [self._run({}) for _ in (0,)][0]

    def _run(self, overrides: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        feeds = {n: overrides.get(n, v) for n, v in self.values.items()}
        return [self.sess.run(None, {**b, **feeds}) for b in self.batches]

    def loss(self, overrides: dict[str, np.ndarray]) -> float:
        """Mean over batches and outputs of ||y' - y||^2 / ||y||^2 with ``overrides`` fed (per
        slice of a concatenated output, see :mod:`onnxcomp.measure.outputs`)."""
        stored = {n: v.reshape(self.values[n].shape) for n, v in overrides.items()}
        return relative_error(self.reference, self._run(stored), self.parts)


def to_logits(graph: onnx.GraphProto) -> None:
    """Graph outputs computed by Softmax/LogSoftmax are read before it, as logits. For a gain
    (a small perturbation's effect, extrapolated linearly): probabilities saturate, so a confident
    position hides how far its logits moved until its argmax flips (the PP-OCRv4 recogniser's
    gains put mid-network layers at rank 16, character agreement 0.27). Losses measured at the
    compression level itself keep the deployed outputs: there the saturation is real."""
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        node = producer.get(out.name)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.input[0]:
            out.CopyFrom(helper.make_empty_tensor_value_info(node.input[0]))


def relative_error(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]],
                   parts: Sequence | None = None) -> float:
    """Mean over batches and outputs of ``||y' - y||² / ||y||²`` (``[batch][output]`` lists);
    ``parts`` (per output, from :func:`onnxcomp.measure.outputs.output_parts`) measures an output
    that concatenates several heads slice by slice."""
    errs = []
    for ref, new in zip(reference, outputs):
        for k, (a, b) in enumerate(zip(ref, new)):
            errs.append(output_error(a, b, parts[k] if parts else None))
    return float(np.mean(errs)) if errs else 0.0


MACS_PER_SECOND = 1e10  # the cost model behind the sample budgets (not a timing: reproducible)


def estimated_seconds(model: onnx.ModelProto, batches: Sequence[dict], *, samples: int) -> float | None:
    """Predicted seconds to run ``samples`` samples shaped like ``batches[0]``: the model's MACs
    over MACS_PER_SECOND. A timing would make the sample budgets (and so the results) depend on
    how loaded the machine is. None when shape inference cannot count the MACs."""
    from onnxcomp.errors import ConfigError
    from onnxcomp.measure.inspect import inspect

    if not batches:
        return None
    shapes = {k: (1,) + tuple(np.shape(v)[1:]) for k, v in batches[0].items()}
    try:
        macs = inspect(model, input_shapes=shapes).total_macs
    except (ConfigError, ValueError, KeyError, IndexError, TypeError, onnx.checker.ValidationError):
        return None  # shapes it cannot take: no estimate (every sample is kept)
    return macs * samples / MACS_PER_SECOND if macs else None


def measure_curves(model: onnx.ModelProto, weights: Sequence[Weight], levels: Sequence[float],
                   compress: Callable[[Weight, np.ndarray, float], np.ndarray], data: Iterable[dict],
                   *, samples: int = 32, budget_s: float = 240.0, threads: int | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[np.ndarray, dict]:
    """losses[l, j]: the probe loss when ``weights[l]`` alone is compressed to ``levels[j]``.

    ``compress(weight, values, level)`` returns the compressed values. The number of samples is
    lowered (to no fewer than 4) when the trials would exceed ``budget_s`` seconds.
    """
    batches = take_samples(data, samples)
    probe = Probe(model, weights, batches, threads=threads)
    t0 = time.perf_counter()
    n = sum(len(next(iter(b.values()))) for b in batches)
    per_run = estimated_seconds(model, batches, samples=n) or 0.0
    trials = len(weights) * len(levels)
    if trials * per_run > budget_s and n > 4:
        keep = max(4, int(n * budget_s / (trials * per_run)))
        probe.batches = take_samples(batches, keep, batch_unit(model))
        probe.reference = probe._run({})
        n = keep
    losses = np.zeros((len(weights), len(levels)))
    for i, w in enumerate(weights):
        base = probe.values[w.name].reshape(w.shape)
        for j, level in enumerate(levels):
            losses[i, j] = probe.loss({w.name: compress(w, base, level)})
        if progress:
            progress("sensitivity", i + 1, len(weights))
    return losses, {"samples": n, "trials": trials, "seconds": round(time.perf_counter() - t0, 1)}


def layer_gains(model: onnx.ModelProto, perturbed: dict[str, np.ndarray], errors: dict[str, float],
                data: Iterable[dict], *, samples: int, threads: int | None = None) -> tuple[dict[str, float], dict]:
    """How much of a layer's own output error reaches the model outputs, per layer.

    ``perturbed[name]``: the weight's values (stored layout) with a small approximation error whose
    relative output error energy at the layer is ``errors[name]``; the gain is the model's relative
    output error energy (on logits, see :func:`to_logits`) with that weight alone replaced, divided by
    ``errors[name]``. One probe
    session (weights as inputs), one run per layer on the same ``samples`` samples.
    """
    weights = [w for w in find_weights(model, nested=True) if w.name in perturbed]
    batches = take_samples(data, samples, batch_unit(model))
    t0 = time.perf_counter()
    probe = Probe(model, weights, batches, threads=threads, logits=True)
    gains = {w.name: probe.loss({w.name: perturbed[w.name]}) / max(errors[w.name], 1e-12) for w in weights}
    n = sum(len(next(iter(b.values()))) for b in batches)
    return gains, {"samples": n, "runs": len(weights) + 1, "seconds": round(time.perf_counter() - t0, 1)}


CHECK_SAMPLES = 32  # calibration samples on which a pass compares its candidates' outputs


def output_errors(reference: onnx.ModelProto, models: Sequence[onnx.ModelProto], data: Iterable[dict], *,
                  samples: int = CHECK_SAMPLES, threads: int | None = None) -> list[float]:
    """Per model, the mean over batches and outputs of ``||y' - y||² / ||y||²`` (per slice of a
    concatenated output) against ``reference`` on the first ``samples`` samples (one run of each model)."""
    batches = take_samples(data, samples, batch_unit(reference))

    def outputs(model: onnx.ModelProto) -> list[list[np.ndarray]]:
        sess = session(model, threads=threads)
        return [sess.run(None, b) for b in batches]

    ref, parts = outputs(reference), output_parts(reference)
    return [relative_error(ref, outputs(m), parts) for m in models]
