"""Least-squares refit of the consumers of pruned channels (He et al. 2017; ThiNet).

After channels are removed, each consumer (Conv with group 1, Gemm, MatMul) that lost input
channels is refit so that, fed with the *pruned* model's activations, it reproduces the
*original* model's output (pre-activation) on the kept output channels:

    min_W ||Y_orig - [X_pruned, 1] W||^2 + lam ||W - W_0||^2

a ridge regression pulled towards the current weights W_0 (so little data cannot hurt much),
solved for all output channels at once from accumulated normal equations. Convs use im2col
patches at randomly sampled output positions (bounded rows). Consumers are refit one after
another in graph order on the streaming engine: each sees the activations of the model with
every earlier consumer already refit, so upstream errors are corrected as they accumulate.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.channels.types import kept_mask
from onnxcomp.graph.edit import ConstEval, get_attr, remove_dead, set_input

RIDGE = 3e-2  # x mean diagonal of the Gram matrix; 1e-3..1e-1 tried on effnet_lite0 and the digit models
ROWS = 32768  # at most this many sampled rows (output positions) per consumer
MIN_ROWS = 2048
ROWS_PER_UNKNOWN = 8


class _Target:
    """One consumer being refit: its geometry, the rows drawn so far and its normal equations."""

    def __init__(self, node: onnx.NodeProto, kept_out: np.ndarray | None, w: np.ndarray, b: np.ndarray | None):
        self.node, self.kept_out, self.w0, self.b0 = node, kept_out, w, b
        op = node.op_type
        self.bias = op in ("Conv", "Gemm")
        self.trans_b = op == "Gemm" and bool(get_attr(node, "transB", 0))
        d = (int(np.prod(w.shape[1:])) if op == "Conv" else (w.shape[1] if self.trans_b else w.shape[0]))
        self.dim = d + (1 if self.bias else 0)
        self.gram = np.zeros((self.dim, self.dim))
        self.cross = None
        self.rows = 0

    def add(self, a: np.ndarray, y: np.ndarray) -> None:
        a = np.asarray(a, np.float32)
        if self.bias:
            a = np.concatenate([a, np.ones((len(a), 1), np.float32)], 1)
        self.gram += a.T @ a  # float32 products per batch, float64 sums across batches
        cross = a.T @ np.asarray(y, np.float32)
        self.cross = cross.astype(np.float64) if self.cross is None else self.cross + cross
        self.rows += len(a)

    @property
    def budget(self) -> int:
        """Rows to sample in all: a few per unknown, within bounds."""
        return int(np.clip(ROWS_PER_UNKNOWN * self.dim, MIN_ROWS, ROWS))

    def initial(self) -> np.ndarray:
        """Current weights as a [dim, out] matrix (bias as the last row)."""
        if self.node.op_type == "Conv":
            w = self.w0.reshape(len(self.w0), -1).T
        else:
            w = self.w0.T if self.trans_b else self.w0
        if self.bias:
            b = self.b0 if self.b0 is not None else np.zeros(w.shape[1])
            w = np.concatenate([w, b.reshape(1, -1)], 0)
        return w.astype(np.float64)

    def solve(self) -> tuple[np.ndarray, np.ndarray | None]:
        if not (np.isfinite(self.gram).all() and np.isfinite(self.cross).all()):
            return self.w0, self.b0  # inputs holding NaN/Inf (or overflowing squares): no refit
        w0 = self.initial()
        lam = RIDGE * max(float(np.trace(self.gram)) / self.dim, 1e-12)
        from scipy.linalg import solve

        w = solve(self.gram + lam * np.eye(self.dim), self.cross + lam * w0, assume_a="pos")
        bias = w[-1] if self.bias else None
        w = w[:-1] if self.bias else w
        if self.node.op_type == "Conv":
            w = w.T.reshape(self.w0.shape)
        elif self.trans_b:
            w = w.T
        with np.errstate(over="ignore", invalid="ignore"):
            w, bias = w.astype(self.w0.dtype), None if bias is None else bias.astype(self.w0.dtype)
        if not np.isfinite(w).all() or (bias is not None and not np.isfinite(bias).all()):
            return self.w0, self.b0  # a solve that overflowed: keep the pruned weights as they are
        return w, bias


def _conv_rows(node: onnx.NodeProto, x: np.ndarray, kshape: tuple, rng: np.random.Generator,
               n_rows: int, out_hw: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """im2col rows [P, C*kh*kw] at ``n_rows`` random output positions, and the positions."""
    kh, kw = kshape
    sh, sw = get_attr(node, "strides", [1, 1])
    dh, dw = get_attr(node, "dilations", [1, 1])
    ho, wo = out_hw
    pads = _pads(node, x.shape[2:], (kh, kw), (sh, sw), (dh, dw), (ho, wo))
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    total = len(x) * ho * wo
    flat = rng.choice(total, size=min(n_rows, total), replace=False)
    n, rest = np.divmod(flat, ho * wo)
    i, j = np.divmod(rest, wo)
    cols = [xp[n, :, i * sh + a * dh, j * sw + b * dw] for a in range(kh) for b in range(kw)]
    a = np.stack(cols, axis=2).reshape(len(flat), -1)  # [P, C, kh*kw] -> matches W[o, c, a, b]
    return a, (n, i, j)


def _pads(node, in_hw, k, s, d, out_hw) -> list[int]:
    auto = get_attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (o - 1) * st + (kk - 1) * dd + 1 - i) for o, st, kk, dd, i in zip(out_hw, s, k, d, in_hw)]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return [lo[0], lo[1], total[0] - lo[0], total[1] - lo[1]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    return list(get_attr(node, "pads", [0, 0, 0, 0]))


def _supported(node: onnx.NodeProto, w: np.ndarray | None) -> str | None:
    op = node.op_type
    if w is None:
        return "weight not readable"
    if op == "Conv" and (int(get_attr(node, "group", 1)) != 1 or w.ndim != 4):
        return "only 2-D convs with group 1 are refit"
    if op == "Gemm" and (get_attr(node, "transA", 0) or get_attr(node, "alpha", 1.0) != 1.0
                         or get_attr(node, "beta", 1.0) != 1.0):
        return "Gemm with transA/alpha/beta is not refit"
    if op not in ("Conv", "Gemm", "MatMul"):
        return f"{op} is not refit"
    return None


def _targets(plan, ev: ConstEval) -> tuple[list, list[str]]:
    """Consumers that lost input channels and can be refit, and notes on the others."""
    targets, notes = [], []
    for c in plan.cg.consumers:
        if kept_mask(plan.keep, c.ids).all():
            continue
        why = _supported(c.node, ev.value(c.node.input[1]))
        if why:
            notes.append(f"not refit: {c.name}: {why}")
            continue
        targets.append(c)
    return targets, notes


def refit_consumers(original: onnx.ModelProto, pruned: onnx.ModelProto, plan, ctx,
                    record: dict | None = None) -> list[str]:
    """Refit every consumer that lost input channels, one after another in graph order; notes.

    One walk of the streaming engine: each consumer is fitted on the pruned model's inputs (every
    consumer before it already refit) toward the original model's outputs on its kept channels.
    """
    from onnxcomp.graph.edit import NameScope
    from onnxcomp.measure.engine import Engine

    targets, notes = _targets(plan, ConstEval(pruned))
    producer = {id(p.node): p for p in plan.cg.producers}
    by_output = {c.node.output[0]: c for c in targets}
    scope = NameScope(pruned)
    rows_fit = 0
    with Engine(pruned, original, ctx.data, threads=ctx.threads, progress=ctx.progress, label="refit",
                record=record) as eng:
        for k, site in enumerate(eng.walk([(out, 0) for out in by_output])):
            c, y_ref = by_output[site.name], site.y_ref()
            if y_ref is None:
                continue
            ev, node = ConstEval(pruned), site.node
            p = producer.get(id(c.node))
            b = ev.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            t = _Target(node, None if p is None else kept_mask(plan.keep, p.ids), ev.value(node.input[1]), b)
            rng = np.random.default_rng(ctx.seed + k)
            for x, y in zip(site.x(), y_ref):
                _accumulate(t, x, y, rng, max(64, -(-t.budget * len(x) // max(eng.samples, 1))))
            w, bias = t.solve()
            base = node.name or node.output[0]
            set_input(pruned, node, 1, w, scope, f"{base}_refit_w")
            if bias is not None:
                set_input(pruned, node, 2, bias, scope, f"{base}_refit_b")
            rows_fit = max(rows_fit, t.rows)
    remove_dead(pruned)
    if targets:
        notes.insert(0, f"least-squares refit of {len(targets)} consumer(s) on up to {rows_fit} rows each "
                        "(pruned-model inputs, every consumer before it refit; original outputs)")
    return notes


def _accumulate(t: _Target, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_rows: int) -> None:
    if t.node.op_type == "Conv":
        a, (n, i, j) = _conv_rows(t.node, x, t.w0.shape[2:], rng, n_rows, y.shape[2:])
        y = y[n, :, i, j]
    else:
        a = x.reshape(-1, x.shape[-1])
        y = y.reshape(-1, y.shape[-1])
        if len(a) > n_rows:
            pick = rng.choice(len(a), n_rows, replace=False)
            a, y = a[pick], y[pick]
    if t.kept_out is not None:
        y = y[:, t.kept_out]
    t.add(a, y)


def mean_shifts(cg, keep: np.ndarray, stats) -> dict[int, np.ndarray]:
    """Per consumer (by node id): the average output the removed input channels contributed.

    Conv (group 1) and Gemm (alpha = beta = 1, transA = 0) consumers only; computed from the
    original weights, so call it before the channels are removed.
    """
    shifts = {}
    for c in cg.consumers:
        removed = ~kept_mask(keep, c.ids)
        op = c.node.op_type
        if not removed.any() or c.tensor not in stats.mean or c.weight.source == "constant_of_shape" or \
                _supported(c.node, c.weight.values()) or op not in ("Conv", "Gemm"):
            continue
        w = np.moveaxis(np.asarray(c.weight.values(), np.float64), c.axis, 1)  # [out, in, ...]
        w = w.reshape(w.shape[0], w.shape[1], -1).sum(2)
        shifts[id(c.node)] = w[:, removed] @ stats.mean[c.tensor][removed]
    return shifts


def add_shifts(model: onnx.ModelProto, cg, keep: np.ndarray, shifts: dict[int, np.ndarray]) -> int:
    """Fold ``shifts`` into the consumers' biases (kept output channels only); returns how many."""
    from onnxcomp.graph.edit import NameScope

    producer = {id(p.node): p for p in cg.producers}
    ev, scope, done = ConstEval(model), NameScope(model), 0
    for c in cg.consumers:
        delta = shifts.get(id(c.node))
        if delta is None:
            continue
        p = producer.get(id(c.node))
        if p is not None:
            delta = delta[kept_mask(keep, p.ids)]
        node = c.node
        has_bias = len(node.input) > 2 and node.input[2]
        # a new bias takes the weight's dtype (a float16 conv refuses a float32 bias)
        bias = ev.value(node.input[2]) if has_bias else np.zeros(len(delta), c.weight.dtype)
        if bias is None or bias.size != len(delta):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            new = (bias.reshape(-1) + delta).astype(bias.dtype)
        if not np.isfinite(new).all():
            continue  # activations holding Inf/NaN (or a float16 overflow): no shift
        set_input(model, node, 2, new.reshape(bias.shape), scope, f"{node.name or node.output[0]}_bias")
        done += 1
    remove_dead(model)
    return done
