"""Which channels go, chosen by the output error each removal causes (needs real calibration data).

One walk of the streaming engine over the model measures, for every layer that reads prunable
channels (a *consumer*), the second moment of its input rows (:class:`.rows.Fit`) and the mean
and power of each input channel. In every group, units are then removed one after another by
the least output error they add to the consumers once the kept channels are refit by least
squares (:func:`onnxcomp.algo.groupobs.removal_curve`), or in the order of another importance
score; the cumulative error against units removed is the group's curve for the allocator.
Consumers that cannot be fitted (grouped or 1-D convs), whose rows are longer than ``MAX_DIM``,
or whose calibration data gives fewer rows than features (a classifier after global pooling sees
one row per sample: there the second moment is singular, a least-squares refit fits the sample
exactly and prices every removal near zero) count with the energy their channels carry,
``E[x²]·||w||²``; only fitted ones are refit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.algo.groupobs import Problem, mean_fold, removal_curve
from onnxcomp.graph.channels.types import ChannelGraph, ChannelGroup, Consumer
from onnxcomp.graph.edit import ConstEval
from onnxcomp.passes.structured.rows import Fit, kind_of

MAX_DIM = 4608  # larger input rows: energy only (the D x D statistics get big)


@dataclass
class Measured:
    """One consumer's statistics: its OBS problem (``h`` = E[x xᵀ] of its input rows, bias last
    when it has one, ``w`` its weight as a [D, out] matrix; or energy only: one feature per channel,
    ``h`` = diag E[x²]), E[x], E[x²] per input channel, and E[row] of its fitted rows."""

    consumer: Consumer
    fit: Fit | None  # None: neither compensated nor refit
    h: np.ndarray
    w: np.ndarray
    per_channel: int
    mean: np.ndarray
    power: np.ndarray
    row_mean: np.ndarray | None = None


def _channel_moments(x: np.ndarray, axis: int, acc: list) -> None:
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, x.shape[axis])
    acc[0] = acc[0] + x.sum(0)
    acc[1] = acc[1] + (x ** 2).sum(0)
    acc[2] += len(x)


def measure(model: onnx.ModelProto, cg: ChannelGraph, consumers: list[Consumer], ctx, full: bool = True,
            record: dict | None = None) -> dict[int, Measured]:
    """Statistics of every consumer's input in one engine walk of ``model`` (keyed by id(node));
    without ``full``, no second moments (energy-only problems: what activation scores need)."""
    from onnxcomp.measure.engine import Engine

    ev = ConstEval(model)
    by_out = {}
    for c in consumers:
        by_out.setdefault(c.node.output[0], c)
    out: dict[int, Measured] = {}
    with Engine(model, None, ctx.data, threads=ctx.threads, progress=ctx.progress, label="channel statistics",
                record=record) as eng:
        for k, site in enumerate(eng.walk([(o, 0) for o in by_out])):
            c = by_out[site.name]
            kind, _ = kind_of(c.node, ev.value(c.node.input[1]))
            fit = Fit(model, c.node, kind, ev) if kind is not None else None
            moments = full and fit is not None and fit.dim <= MAX_DIM
            rng = np.random.default_rng(ctx.seed + k)
            acc, row_sum = [0.0, 0.0, 0], 0.0
            for x in site.x():
                _channel_moments(x, cg.layouts[c.tensor].axis, acc)
                if fit is not None:
                    a, _ = fit.draw(x, None, rng, max(64, -(-fit.budget * len(x) // max(eng.samples, 1))))
                    row_sum = row_sum + a.sum(0, dtype=np.float64)
                    if moments:
                        fit.add(a)
                    else:
                        fit.rows += len(a)
            mean, power = acc[0] / max(acc[2], 1), acc[1] / max(acc[2], 1)
            row_mean = None if fit is None else row_sum / max(fit.rows, 1)
            moments = moments and fit.rows >= fit.dim  # fewer rows: least squares fits the sample exactly
            if moments:
                h, w, per = fit.second_moment(), fit.matrix(), fit.per_channel
            else:  # energy only: one feature per channel, no cross terms
                wv = np.moveaxis(np.asarray(c.weight.values(), np.float64), c.axis, 0)
                w, h, per = wv.reshape(len(wv), -1), np.diag(power), 1
            if fit is not None:
                fit.gram, fit.rows = None, 0  # the moments are kept in h and row_mean
            out[id(c.node)] = Measured(c, fit, h, w, per, mean, power, row_mean)
    return out


def _unit_index(cg: ChannelGraph, group: ChannelGroup) -> dict[int, int]:
    return {int(cg.unit_of[u[0]]): i for i, u in enumerate(group.units)}


def problems(cg: ChannelGraph, group: ChannelGroup, measured: dict[int, Measured]) -> list[Problem]:
    """One OBS problem per consumer reading ``group``: its rows of each unit of the group."""
    index = _unit_index(cg, group)
    out = []
    for m in measured.values():
        ids = m.consumer.ids
        cols: list[list[int]] = [[] for _ in group.units]
        for j, cid in enumerate(ids):
            if cid >= 0:
                u = index.get(int(cg.unit_of[cid]))
                if u is not None:
                    cols[u].extend(range(j * m.per_channel, (j + 1) * m.per_channel))
        if any(cols):
            out.append(Problem(m.w, m.h, [np.array(c, np.int64) for c in cols]))
    return out


def curve(cg: ChannelGraph, group: ChannelGroup, measured: dict[int, Measured], max_remove: int,
          scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(units in removal order, cumulative relative output error after each removal, from 0).

    Greedy by least added error, or lowest ``scores`` first when given."""
    order = None if scores is None else np.argsort(scores, kind="stable")
    removed, added = removal_curve(problems(cg, group, measured), group.size, max_remove, order)
    return removed, np.concatenate([[0.0], np.cumsum(added)])


def compensated(m: Measured, keep_pos: np.ndarray) -> np.ndarray | None:
    """The consumer's kept rows unchanged and the removed channels' mean folded into its bias
    (None when it has none). A least-squares refit of the kept rows on the original model's
    statistics was measured worse after the engine refit (effnet_lite0 at 0.3: top-1 agreement
    0.719 against 0.744) and is not done."""
    if m.fit is None or m.fit.bias_at is None or m.row_mean is None:
        return None
    rows = np.concatenate([np.repeat(keep_pos, m.fit.per_channel), [True]])
    out = mean_fold(m.fit.matrix(), m.row_mean, rows)
    return out if np.isfinite(out).all() else None  # activations holding Inf/NaN: no shift


def compensations(cg: ChannelGraph, measured: dict[int, Measured], keep: np.ndarray) -> list:
    """``(consumer position in cg.consumers, kind, matrix)`` for every measured consumer losing input
    channels under ``keep``: :func:`compensated`, restricted to its own kept output channels."""
    from onnxcomp.graph.channels.types import kept_mask

    producer = {id(p.node): p for p in cg.producers}
    out = []
    for i, c in enumerate(cg.consumers):
        m = measured.get(id(c.node))
        if m is None or m.fit is None or m.consumer is not c:
            continue
        keep_pos = kept_mask(keep, c.ids)
        if keep_pos.all():
            continue
        matrix = compensated(m, keep_pos)
        if matrix is None:
            continue
        p = producer.get(id(c.node))
        out.append((i, m.fit.kind, matrix if p is None else matrix[:, m.fit.out_columns(kept_mask(keep, p.ids))]))
    return out


def write_compensations(model: onnx.ModelProto, cg: ChannelGraph, comps: list) -> None:
    """Store :func:`compensations` into ``model`` (channels already removed; ``cg`` bound to it)."""
    from onnxcomp.graph.edit import NameScope

    ev, scope = ConstEval(model), NameScope(model)
    for i, kind, matrix in comps:
        Fit(model, cg.consumers[i].node, kind, ev).write(model, matrix, scope)
