"""Calibration-based pruning: OBS/SparseGPT updates from each layer's input second moments.

Statistics come from :func:`onnxcomp.measure.patchstats.collect_covariances` (im2col patches for 1-D,
2-D and 3-D convs, rows for Gemm/MatMul), gathered in chunks so at most ~1 GB of D×D matrices is alive.
Layers it cannot describe (batched MatMul, grouped ConvTranspose, GRU recurrence) fall back to
magnitude masks, with a note.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import onnx

from onnxcomp.encode.tables import Layout
from onnxcomp.graph import einsum
from onnxcomp.graph.shapes import conv_attrs
from onnxcomp.graph.weights import Weight
from onnxcomp.algo.obs import prune_obs
from onnxcomp.measure.patchstats import collect_covariances
from onnxcomp.measure.stats import StatsRequest

STATS_BYTES = 1 << 30
MAX_DIM = 4608
REFERENCE_BYTES = 1 << 30  # above this the model is not copied: OBS on the new inputs, toward W itself
LEDOIT = True  # shrink the statistics by their Ledoit-Wolf intensity (False: D / (D + n); benchmarks/shrinkage.py)


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), default)


def _auto_pad(node: onnx.NodeProto) -> str:
    return next((a.s.decode() for a in node.attribute if a.name == "auto_pad"), "NOTSET")


def request(w: Weight) -> StatsRequest | None:
    """How the weight meets its input, or None when OBS cannot model it (also when a consumer sits
    inside an If/Loop/Scan body: the walk sees main-graph tensors only)."""
    node = w.uses[0].node
    if w.nested:
        return None
    if w.role == "conv" and len(w.shape) in (3, 4, 5):
        auto = _auto_pad(node)
        if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return None
        # a 1-D conv is a 2-D one over rows of height 1 (conv_patches reads x[N, C, L]); a 3-D one
        # (video, volumes) is measured over every spatial axis
        kernel, strides, pads, dilations = conv_attrs(node, w.shape)
        return StatsRequest(w.name, node.input[0], "conv", kernel, strides, pads, dilations, w.group, auto_pad=auto)
    if w.role == "convtranspose" and len(w.shape) == 4 and w.group == 1:
        return _transposed(w, node)
    if w.role in ("gemm_b", "matmul_b") and len(w.shape) == 2:
        trans_a = any(a.name == "transA" and a.i for a in node.attribute) if w.role == "gemm_b" else False
        return StatsRequest(w.name, node.input[0], "matrix", transposed=trans_a)
    if w.role == einsum.ROLE and (x := einsum.activation(node, w.uses[0].index)) is not None:
        return StatsRequest(w.name, x, "matrix")  # bsi,io->bso: a MatMul by the weight
    return None


def _transposed(w: Weight, node: onnx.NodeProto) -> StatsRequest | None:
    """A ConvTranspose as the stride-1 conv it equals: its input spread out by the strides, padded by
    ``d (k - 1) - pad`` (plus output_padding at the end), the kernel flipped (see :func:`_rows`)."""
    if _auto_pad(node) not in ("NOTSET", "VALID") or any(a.name == "output_shape" for a in node.attribute):
        return None
    k, d = tuple(w.shape[2:]), tuple(_ints(node, "dilations", [1, 1]))
    p, extra = _ints(node, "pads", [0, 0, 0, 0]), _ints(node, "output_padding", [0, 0])
    pads = (d[0] * (k[0] - 1) - p[0], d[1] * (k[1] - 1) - p[1],
            d[0] * (k[0] - 1) - p[2] + extra[0], d[1] * (k[1] - 1) - p[3] + extra[1])
    if min(pads) < 0:
        return None  # pads wider than the kernel crop the output: not a padded conv
    return StatsRequest(w.name, node.input[0], "conv", k, (1, 1), pads, d,
                        upsample=tuple(_ints(node, "strides", [1, 1])))


def stats_request(w: Weight) -> StatsRequest | None:
    """:func:`request`, and for the calibrated walks of prune and cluster the recurrent weights too
    (:mod:`onnxcomp.passes.prune.recurrent`)."""
    from onnxcomp.passes.prune import recurrent

    return recurrent.request(w) if w.role in ("rnn_w", "rnn_r") and not w.nested else request(w)


def _rows(w: Weight, values: np.ndarray) -> np.ndarray:
    """[out, D] in the patch order of the statistics."""
    if w.role == "conv":
        return values.reshape(values.shape[0], -1)
    if w.role == "convtranspose":  # [in, out, kh, kw] -> per output channel, the kernel flipped
        return values.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1].reshape(values.shape[1], -1)
    if w.role in ("rnn_w", "rnn_r"):  # a row per gate unit, the directions side by side
        return Layout.of(w.shape, w.out_axis).rows(values.reshape(-1))
    return values if w.out_axis == 0 else values.T  # Gemm transB=1 is [N, K]; else [K, N]


def _unrows(w: Weight, rows: np.ndarray) -> np.ndarray:
    if w.role == "conv":
        return rows.reshape(w.shape)
    if w.role == "convtranspose":
        c_in, c_out, kh, kw = w.shape
        return rows.reshape(c_out, c_in, kh, kw)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    if w.role in ("rnn_w", "rnn_r"):
        return Layout.of(w.shape, w.out_axis).unrows(rows).reshape(w.shape)
    return rows if w.out_axis == 0 else rows.T


def _dim(w: Weight) -> int:
    if w.role in ("rnn_w", "rnn_r", "convtranspose"):
        return int(w.size // w.shape[w.out_axis])
    return int(np.prod(w.shape[1:])) if w.role == "conv" else w.shape[w.in_axis]


def walk_stats(eng, weights: list[Weight], reqs: dict[str, StatsRequest | None], *, seed: int,
               ledoit: bool) -> Iterator[tuple[Weight, list | None]]:
    """(weight, its statistics or None) in graph order over one walk of ``eng``; the caller writes
    each weight before the next is measured. One site per node output: an LSTM's W is measured
    first, then R on the hidden states the op computes with the new W (the site is the node's
    first output: an LSTM's Y may be absent)."""
    from onnxcomp.measure.stats import accumulate
    from onnxcomp.passes.prune import recurrent

    sites: dict[str, list[Weight]] = {}
    for w in sorted(weights, key=lambda w: w.role == "rnn_r"):
        sites.setdefault(next(o for o in w.uses[0].node.output if o), []).append(w)
    items = [(out, out, 0 if any(reqs[w.name] for w in ws) else None) for out, ws in sites.items()]
    for out, site in eng.each(items):
        for w in sites[out]:
            req, stats = reqs[w.name], None
            if site is not None and req is not None:
                if w.role != "rnn_r":
                    xs, refs = site.x(), site.x_ref()
                else:  # the states R multiplies: the initial one (the work stream's for both) and Y's
                    h0 = recurrent.initial_state(w)
                    h0s = eng.work.get(h0) if h0 else None
                    xs, refs = (recurrent.hidden_states(y, w, h0s) for y in (site.y(), site.y_ref()))
                stats = accumulate(xs, refs, req, samples=eng.samples, seed=seed, ledoit=ledoit)
                if stats is not None and all(np.max(np.diag(s.cov), initial=0.0) <= 0 for s in stats):
                    stats = None  # its input was zero on every sample: the fit would zero the weight
                if stats is not None and w.role == "rnn_r":
                    stats = recurrent.own(stats, w, eng.work.model)
                if stats is not None and w.role in ("rnn_w", "rnn_r"):
                    stats = recurrent.block_diagonal(stats, w)
            yield w, stats
            if site is not None and len(sites[out]) > 1:
                site.changed()  # the node runs again with the weight just written


def hessians(model: onnx.ModelProto, weights: list[Weight], data: Iterable, *,
             threads: int | None = None, max_samples: int = 64) -> Iterator[tuple[Weight, list]]:
    """(weight, per-group LayerStats) for every weight OBS can model, ~1 GB of matrices at a time."""
    todo = [(w, r) for w in weights if (r := request(w)) is not None and _dim(w) <= MAX_DIM]
    chunk: list[tuple[Weight, StatsRequest]] = []
    size = 0
    for item in todo + [None]:
        cost = 0 if item is None else 8 * _dim(item[0]) ** 2 * max(1, item[0].group)
        if chunk and (item is None or size + cost > STATS_BYTES):
            stats = collect_covariances(model, [r for _, r in chunk], data, threads=threads,
                                        max_samples=max_samples)
            for w, r in chunk:
                if r.key in stats:  # statistics that are not finite are dropped
                    yield w, stats[r.key]
            chunk, size = [], 0
        if item is not None:
            chunk.append(item)
            size += cost


def obs_values(model: onnx.ModelProto, weights: list[Weight], levels: dict[str, float],
               data: Iterable, *, nm: tuple[int, int] | None, rowwise: bool,
               fallback: Callable[[Weight, np.ndarray, float], np.ndarray],
               threads: int | None = None, notes: list[str] | None = None, seed: int = 0,
               progress=None, record: dict | None = None) -> Iterator[tuple[Weight, np.ndarray]]:
    """(weight, pruned values) in graph order, each written by the caller before the next is solved.

    One walk of the streaming engine: each layer is pruned on the inputs the already pruned layers
    produce, toward the outputs of the model as it was before the pass (its least-squares target
    ``W E[x_o x_qᵀ] E[x_q x_qᵀ]⁻¹``, then OBS masks and updates on ``E[x_q x_qᵀ]``; both moments
    shrunk by their measured Ledoit-Wolf intensity, see docs/pruning.md). Layers the
    statistics cannot describe fall back to ``fallback`` (magnitude masks), with a note.
    """
    from onnxcomp.io import model_bytes
    from onnxcomp.measure.engine import Engine

    reference = None
    if model_bytes(model) <= REFERENCE_BYTES:
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
    reqs = {w.name: (r if (r := stats_request(w)) is not None and _dim(w) <= MAX_DIM else None) for w in weights}
    with Engine(model, reference, data, threads=threads, progress=progress, label="prune", record=record) as eng:
        for w, stats in walk_stats(eng, weights, reqs, seed=seed, ledoit=LEDOIT):
            if stats is None:
                if notes is not None:
                    notes.append(f"{w.name}: magnitude mask (no OBS statistics for this layer)")
                yield w, fallback(w, w.values(), levels[w.name])
            else:
                yield w, _solve(w, stats, levels[w.name], nm, rowwise)


def gptq_values(w: Weight, original: np.ndarray, clustered: np.ndarray, groups: list,
                per_tensor: bool, table: np.ndarray | None = None) -> np.ndarray:
    """Re-assign ``clustered`` (values from its codebooks) with GPTQ error feedback.

    ``table`` [rows or 1, K]: every value each output row may take (NaN pads); without it, the
    values the row already uses.
    """
    from onnxcomp.algo.obs import assign_gptq

    rows, crow = _rows(w, original), _rows(w, clustered)
    if table is None:
        uniq = [np.unique(crow)] * len(crow) if per_tensor else [np.unique(r) for r in crow]
        table = np.full((len(crow), max(len(u) for u in uniq)), np.nan)
        for i, u in enumerate(uniq):
            table[i, : len(u)] = u
    table = np.broadcast_to(np.asarray(table, np.float64), (len(crow), np.shape(table)[-1]))
    zero = rows == 0
    parts = zip(np.split(rows, len(groups)), np.split(table, len(groups)), np.split(zero, len(groups)), groups)
    solved = [assign_gptq(r, g.cov, t, keep_zero=z if z.any() else None) for r, t, z, g in parts]
    return _unrows(w, np.concatenate(solved, axis=0)).astype(clustered.dtype)


def _solve(w: Weight, groups: list, level: float, nm, rowwise: bool) -> np.ndarray:
    """OBS-pruned values of ``w``: toward its output-matched target when the statistics have cross
    moments (the pruned zeros of the target are chosen by OBS saliency on the new inputs)."""
    rows = _rows(w, w.values()).astype(np.float64)
    parts = np.split(rows, len(groups), axis=0)
    solved = [prune_obs(g.target(p), g.cov, level, rowwise=rowwise, nm=nm) for p, g in zip(parts, groups)]
    return _unrows(w, np.concatenate(solved, axis=0)).astype(w.dtype)
