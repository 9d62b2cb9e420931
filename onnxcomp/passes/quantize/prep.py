"""Exact graph preparation before quantizing: the opset the integer formats need, and zero Pads
folded into the convolutions that read them.

- QDQ with per-channel weights needs opset 13 (DequantizeLinear's ``axis``). The opset is raised
  only when onnx's version converter can adapt every node and the converted model computes the
  same outputs on a calibration batch; otherwise a one-line error says which op stopped it.
- A ``Pad`` (constant mode, zero value, constant pads on the spatial axes only) read only by
  Convs is folded into their ``pads``: exporters that emulate "same" padding write one before
  every strided conv, and between two integer kernels it would run in float.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxcomp.errors import UnsupportedModelError, first_line
from onnxcomp.graph.edit import ConstEval, get_attr, remove_dead, set_attr


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def changed_ops(model: onnx.ModelProto, target: int) -> list[str]:
    """The default-domain ops whose definition changes between the model's opset and ``target``."""
    from onnx import defs

    old = opset_of(model)
    out = set()
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        try:
            if defs.get_schema(n.op_type, old).since_version != defs.get_schema(n.op_type, target).since_version:
                out.add(n.op_type)
        except Exception:  # noqa: BLE001 - an op onnx does not know
            out.add(n.op_type)
    return sorted(out)


def raise_opset(model: onnx.ModelProto, target: int, batch: dict[str, np.ndarray] | None,
                why: str) -> onnx.ModelProto:
    """``model`` at opset ``target`` (same outputs), or an UnsupportedModelError on one line."""
    from onnx import version_converter

    old = opset_of(model)
    fix = "use --activations none (weight-only formats need no opset change), or re-export the model " \
          f"at opset {target} or later"
    try:
        new = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
        raise UnsupportedModelError(f"{why} needs opset {target}; this model's opset {old} cannot be raised "
                                    f"({first_line(exc)})", fix) from None
    if batch is not None:
        from onnxcomp.io.sessions import session

        try:
            a = session(model).run(None, batch)
            b = session(new).run(None, batch)
            same = all(np.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(a, b))
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(f"{why} needs opset {target}; the model converted from opset {old} "
                                        f"does not run ({first_line(exc)})", fix) from None
        if not same:
            ops = ", ".join(changed_ops(model, target)) or "unknown"
            raise UnsupportedModelError(f"{why} needs opset {target}; converted from opset {old} the model "
                                        f"computes different outputs (ops that changed: {ops})", fix)
    return new


def fold_pads(model: onnx.ModelProto) -> int:
    """Fold zero spatial Pads into the Convs reading them (in place); the number folded."""
    g = model.graph
    ev = ConstEval(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    folded = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        pads = _spatial_pads(pad, ev)
        users = readers.get(pad.output[0], [])
        if pads is None or pad.output[0] in outputs or not users or \
                any(u.op_type != "Conv" or u.input[0] != pad.output[0] for u in users):
            continue
        if any((get_attr(u, "auto_pad", b"NOTSET") or b"NOTSET") not in (b"NOTSET", "NOTSET") for u in users):
            continue
        if any(len(pads) != 2 * (len(_kernel(u, ev) or ())) for u in users):
            continue
        for u in users:
            old = list(get_attr(u, "pads", [0] * len(pads)))
            set_attr(u, "pads", [a + b for a, b in zip(old, pads)])
            u.input[0] = pad.input[0]
        folded += 1
    if folded:
        remove_dead(model)
    return folded


def _kernel(conv: onnx.NodeProto, ev: ConstEval) -> tuple[int, ...] | None:
    shape = get_attr(conv, "kernel_shape")
    if shape is not None:
        return tuple(shape)
    w = ev.value(conv.input[1])
    return None if w is None else tuple(w.shape[2:])


def _spatial_pads(pad: onnx.NodeProto, ev: ConstEval) -> list[int] | None:
    """[begin..., end...] over the spatial axes when ``pad`` adds zeros there only, else None."""
    mode = get_attr(pad, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    if len(pad.input) > 1:
        value = ev.value(pad.input[1])
        if value is None:
            return None
        pads = [int(v) for v in value.reshape(-1)]
        if len(pad.input) > 2 and pad.input[2]:
            fill = ev.value(pad.input[2])
            if fill is None or np.any(fill != 0):
                return None
        if len(pad.input) > 3 and pad.input[3]:
            return None  # explicit axes: rare, left alone
    else:
        pads = [int(v) for v in get_attr(pad, "pads", [])]
        if float(get_attr(pad, "value", 0.0)) != 0.0:
            return None
    rank = len(pads) // 2
    if rank < 3 or any(p < 0 for p in pads):
        return None
    begin, end = pads[:rank], pads[rank:]
    if any(begin[:2]) or any(end[:2]):
        return None  # batch or channel padding
    return begin[2:] + end[2:]


def first_batch(data: Any) -> dict[str, np.ndarray] | None:
    if data is None:
        return None
    return next(iter(data), None)



def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold inference BatchNormalization into the Conv before it (in place); the number folded.

    The Conv must be the BN's only producer with a constant kernel, the BN its only reader and
    its statistics constant; the Conv then writes the BN's output (new weight and bias tensors,
    the old ones are removed when nothing else reads them)."""
    from onnx import numpy_helper

    from onnxcomp.graph.edit import NameScope

    g = model.graph
    ev = ConstEval(model)
    scope = NameScope(model)
    readers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    folded = 0
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(bn.input[0]) != 1 or bn.input[0] in outputs:
            continue
        if any(o for o in bn.output[1:]) or len(bn.input) < 5:
            continue
        w = ev.value(conv.input[1])
        stats = [ev.value(x) for x in bn.input[1:5]]
        b = ev.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0] if w is not None else 0)
        if w is None or b is None or any(s is None for s in stats) or w.dtype != np.float32:
            continue
        gamma, beta, mean, var = (s.astype(np.float64).reshape(-1) for s in stats)
        k = gamma / np.sqrt(var + float(get_attr(bn, "epsilon", 1e-5)))
        new_w = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        new_b = ((b.astype(np.float64) - mean) * k + beta).astype(np.float32)
        wn, bn_name = scope(f"{conv.input[1]}_bn"), scope(f"{conv.output[0]}_bias")
        g.initializer.extend([numpy_helper.from_array(new_w, wn), numpy_helper.from_array(new_b, bn_name)])
        conv.input[1] = wn
        if len(conv.input) < 3:
            conv.input.append(bn_name)
        else:
            conv.input[2] = bn_name
        conv.output[0] = bn.output[0]
        g.node.remove(bn)
        folded += 1
    if folded:
        remove_dead(model)
    return folded
