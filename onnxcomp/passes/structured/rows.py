"""A consumer of pruned channels as a linear least-squares problem: its input rows and weight matrix.

Every layer that reads prunable channels through a weight is, at each output position, a linear
map of an input vector (plus a bias):

- Conv (1-D or 2-D, group 1): im2col patches, one per output position, in kernel order ``(c, i, j)``
  (a 1-D conv as the 2-D conv of height 1 it equals);
- ConvTranspose (2-D, group 1): the input vector at each position, scattered through the kernel
  to ``out x kh x kw`` outputs (exactly a matrix product when stride = kernel and no padding,
  an approximation of the overlapping outputs otherwise);
- Gemm (transA = 0, alpha = beta = 1) and MatMul with a constant 2-D right operand: the rows.

A MatMul's bias is the constant of the ``Add`` that directly follows it (as exporters write a
Linear layer). :class:`Fit` accumulates the normal equations of ``min ||Y - [X, 1] W||²`` from
rows sampled at random output positions (bounded per layer) and writes weight and bias back.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.edit import ConstEval, get_attr, set_input, uses
from onnxcomp.graph.shapes import conv_attrs, same_pads

ROWS = 32768  # at most this many sampled rows (output positions) per layer
MIN_ROWS = 2048
ROWS_PER_UNKNOWN = 8


def kind_of(node: onnx.NodeProto, w: np.ndarray | None) -> tuple[str | None, str | None]:
    """(kind, None) for a supported consumer, else (None, why)."""
    op = node.op_type
    if w is None:
        return None, "weight not readable"
    if op in ("Conv", "ConvTranspose"):
        if int(get_attr(node, "group", 1)) != 1 or w.ndim not in ((3, 4) if op == "Conv" else (4,)):
            return None, f"only {'1-D and ' if op == 'Conv' else ''}2-D {op}s with group 1 are fitted"
        return ("conv" if op == "Conv" else "convt"), None
    if op == "Gemm":
        if get_attr(node, "transA", 0) or get_attr(node, "alpha", 1.0) != 1.0 or get_attr(node, "beta", 1.0) != 1.0:
            return None, "Gemm with transA/alpha/beta is not fitted"
        return "matrix", None
    if op == "MatMul" and w.ndim == 2:
        return "matrix", None
    return None, f"{op} is not fitted"


def bias_slot(model: onnx.ModelProto, node: onnx.NodeProto, ev: ConstEval, n_out: int) -> tuple | None:
    """(node, slot) holding the layer's bias (None when it has none): input 2 of Conv/Gemm, or the
    constant of the Add right after a MatMul."""
    if node.op_type != "MatMul":
        return (node, 2)
    users = uses(model.graph).get(node.output[0], [])
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add, slot = users[0]
    other = add.input[1 - slot]
    v = ev.value(other)
    if v is None or v.size != n_out or (v.ndim and v.shape[-1] != n_out):
        return None
    return (add, 1 - slot)


class Fit:
    """One layer's least-squares problem: row geometry, current weights as a ``[D (+1), out]``
    matrix (bias last), and the normal equations accumulated from sampled rows."""

    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, kind: str, ev: ConstEval) -> None:
        self.node, self.kind = node, kind
        self.w0 = np.asarray(ev.value(node.input[1]))
        self.trans_b = node.op_type == "Gemm" and bool(get_attr(node, "transB", 0))
        n_out = self.n_out
        n_bias = self.w0.shape[1] if kind == "convt" else n_out  # a ConvTranspose: one bias per output channel
        self.bias_at = bias_slot(model, node, ev, n_out)
        b = None
        if self.bias_at is not None:
            at, slot = self.bias_at
            has = slot < len(at.input) and at.input[slot]
            b = ev.value(at.input[slot]) if has else np.zeros(n_bias, self.w0.dtype)  # a new bias: the weight's dtype
            if b is None or b.size != n_bias:
                self.bias_at, b = None, None
        self.b0 = b
        self.dim = self.features + (1 if self.bias_at is not None else 0)
        self.gram = np.zeros((self.dim, self.dim))
        self.cross: np.ndarray | None = None
        self.rows = 0

    @property
    def n_out(self) -> int:
        w = self.w0
        if self.kind == "conv":
            return w.shape[0]
        if self.kind == "convt":
            return int(np.prod(w.shape[1:]))
        return w.shape[0] if self.trans_b else w.shape[1]

    @property
    def features(self) -> int:
        w = self.w0
        if self.kind == "conv":
            return int(np.prod(w.shape[1:]))
        if self.kind == "convt":
            return w.shape[0]
        return w.shape[1] if self.trans_b else w.shape[0]

    @property
    def per_channel(self) -> int:
        """Columns per input channel (the kernel area of a conv, else 1)."""
        return int(np.prod(self.w0.shape[2:])) if self.kind == "conv" else 1

    @property
    def budget(self) -> int:
        """Rows to sample in all: a few per unknown, within bounds."""
        return int(np.clip(ROWS_PER_UNKNOWN * self.dim, MIN_ROWS, ROWS))

    def out_columns(self, kept_out: np.ndarray) -> np.ndarray:
        """The matrix columns of the kept output channels."""
        return np.repeat(kept_out, int(np.prod(self.w0.shape[2:]))) if self.kind == "convt" else kept_out

    def matrix(self) -> np.ndarray:
        """Current weights as a [dim, out] float64 matrix (bias as the last row)."""
        w = self.w0
        if self.kind == "conv":
            m = w.reshape(len(w), -1).T
        elif self.kind == "convt":
            m = w.reshape(len(w), -1)
        else:
            m = w.T if self.trans_b else w
        if self.bias_at is not None:
            b = np.asarray(self.b0, np.float64).reshape(-1)
            if self.kind == "convt":  # one bias per output channel, repeated over the kernel taps
                b = np.repeat(b, int(np.prod(w.shape[2:])))
            m = np.concatenate([m, b.reshape(1, -1)], 0)
        return m.astype(np.float64)

    def write(self, model: onnx.ModelProto, m: np.ndarray, scope) -> None:
        """Store a [dim, out] matrix as the layer's weight (and bias)."""
        w0 = self.w0
        b = m[-1] if self.bias_at is not None else None
        m = m[:-1] if self.bias_at is not None else m
        if self.kind == "conv":
            w = m.T.reshape(w0.shape)
        elif self.kind == "convt":
            w = m.reshape(w0.shape)
            if b is not None:  # the bias is per output channel: average over the taps
                b = b.reshape(w0.shape[1], -1).mean(1)
        else:
            w = m.T if self.trans_b else m
        base = self.node.name or self.node.output[0]
        set_input(model, self.node, 1, np.ascontiguousarray(w, dtype=w0.dtype), scope, f"{base}_refit_w")
        if b is not None:
            at, slot = self.bias_at
            shape = np.shape(self.b0)
            set_input(model, at, slot, b.astype(w0.dtype).reshape(shape), scope, f"{base}_refit_b")
        self.w0 = np.ascontiguousarray(w, dtype=w0.dtype)
        if b is not None:
            self.b0 = b.astype(w0.dtype).reshape(np.shape(self.b0))

    # ----------------------------------------------------------------- rows
    def draw(self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, n_rows: int):
        """Up to ``n_rows`` random input rows of ``x`` (bias column included) and, with ``y``, the
        outputs they produce: ``(A [P, dim], Y [P, out] or None)``."""
        x = np.asarray(x)
        if self.kind == "conv":
            if self.w0.ndim == 3:  # 1-D: the 2-D conv of height 1 it equals
                x, y = x[:, :, None], (None if y is None else np.asarray(y)[:, :, None])
            (kh, kw), *attrs = conv_attrs(self.node, self.w0.shape)  # a 1-D conv's as height 1
            out_hw = tuple(y.shape[2:]) if y is not None else _conv_out(self.node, x.shape[2:], (kh, kw), attrs)
            a, (n, i, j) = _conv_rows(self.node, x, (kh, kw), rng, n_rows, out_hw, attrs)
            t = None if y is None else y[n, :, i, j]
        elif self.kind == "convt":
            kh, kw = self.w0.shape[2:]
            total = len(x) * x.shape[2] * x.shape[3]
            flat = rng.choice(total, size=min(n_rows, total), replace=False)
            n, rest = np.divmod(flat, x.shape[2] * x.shape[3])
            i, j = np.divmod(rest, x.shape[3])
            a = x[n, :, i, j]
            t = None
            if y is not None:
                sh, sw = get_attr(self.node, "strides", [1, 1])
                taps = [y[n, :, i * sh + p, j * sw + q] for p in range(kh) for q in range(kw)]
                t = np.stack(taps, 2).reshape(len(flat), -1)  # [P, out, kh*kw] -> matches W[c, o, p, q]
        else:
            a = x.reshape(-1, x.shape[-1])
            t = None if y is None else y.reshape(-1, y.shape[-1])
            if len(a) > n_rows:
                pick = rng.choice(len(a), n_rows, replace=False)
                a, t = a[pick], (None if t is None else t[pick])
        a = np.asarray(a, np.float32)
        if self.bias_at is not None:
            a = np.concatenate([a, np.ones((len(a), 1), np.float32)], 1)
        return a, t

    def add(self, a: np.ndarray, t: np.ndarray | None = None) -> None:
        self.gram += (a.T @ a).astype(np.float64)  # float32 products per batch, float64 sums across batches
        if t is not None:
            cross = (a.T @ np.asarray(t, np.float32)).astype(np.float64)
            self.cross = cross if self.cross is None else self.cross + cross
        self.rows += len(a)

    def second_moment(self) -> np.ndarray:
        """``E[x xᵀ]`` over the rows seen (bias entry included)."""
        return self.gram / max(self.rows, 1)


def _auto_pad(node: onnx.NodeProto) -> str:
    auto = get_attr(node, "auto_pad", b"NOTSET")
    return auto.decode() if isinstance(auto, bytes) else auto


def _conv_out(node: onnx.NodeProto, in_hw, k, attrs: tuple) -> tuple[int, int]:
    s, p, d = attrs
    auto = _auto_pad(node)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return tuple(-(-i // st) for i, st in zip(in_hw, s))
    p = [0, 0, 0, 0] if auto == "VALID" else p
    return tuple((i + p[a] + p[a + 2] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a, i in enumerate(in_hw))


def _conv_rows(node: onnx.NodeProto, x: np.ndarray, kshape: tuple, rng: np.random.Generator,
               n_rows: int, out_hw: tuple[int, int], attrs: tuple) -> tuple[np.ndarray, tuple]:
    """im2col rows [P, C*kh*kw] at ``n_rows`` random output positions, and the positions."""
    kh, kw = kshape
    (sh, sw), pads, (dh, dw) = attrs
    ho, wo = out_hw
    auto = _auto_pad(node)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(x.shape[2:], kshape, (sh, sw), (dh, dw), auto)
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    total = len(x) * ho * wo
    flat = rng.choice(total, size=min(n_rows, total), replace=False)
    n, rest = np.divmod(flat, ho * wo)
    i, j = np.divmod(rest, wo)
    cols = [xp[n, :, i * sh + a * dh, j * sw + b * dw] for a in range(kh) for b in range(kw)]
    a = np.stack(cols, axis=2).reshape(len(flat), -1)  # [P, C, kh*kw] -> matches W[o, c, a, b]
    return a, (n, i, j)
