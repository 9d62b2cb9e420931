"""The graph edits of the quantize pass: onnxruntime's integer formats, written in place.

- :func:`insert_qdq`: an activation ``t`` becomes ``QuantizeLinear -> DequantizeLinear`` (uint8,
  per tensor) and every consumer reads the dequantized copy, so onnxruntime fuses the integer
  kernels (QLinearConv, QLinearAdd, QGemm, ...) at load.
- :func:`qdq_weight` / :func:`qdq_bias`: a Conv/Gemm/MatMul weight as int8 + DequantizeLinear
  (per output channel), its bias as int32 at the scale ``x_scale * w_scale``.
- :func:`matmul_nbits`: a MatMul/Gemm node as ``com.microsoft.MatMulNBits`` (block-wise integers
  packed along K, per-block scales and zero points, the bias as its bias input).
- :func:`gather_block`: a Gather over a constant table as ``com.microsoft.GatherBlockQuantized``.

Original weight storage is left in place (a layer can be reverted by restoring its node); unused
tensors are removed at the end (:func:`onnxcomp.graph.edit.remove_dead`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcomp.algo.quant import Grid, pack
from onnxcomp.graph.edit import NameScope, set_attr

MS = "com.microsoft"
INT32_LIMIT = 2**31 - 1


def _init(model: onnx.ModelProto, value: np.ndarray, name: str) -> str:
    value = np.asarray(value)  # a 0-d scale stays a scalar (onnxruntime fuses per-tensor Q/DQ only)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value).reshape(value.shape), name))
    return name


def _after(model: onnx.ModelProto, tensor: str) -> int:
    """The graph position just after the node producing ``tensor`` (0 for a graph input)."""
    for i, node in enumerate(model.graph.node):
        if tensor in node.output:
            return i + 1
    return 0


def insert_qdq(model: onnx.ModelProto, tensor: str, scale: float, zero: int, scope: NameScope,
               readers: set[str] | None = None) -> str:
    """Quantize ``tensor`` (uint8 at ``scale``/``zero``) for its consumers (those whose first output
    is in ``readers``, or all); the dequantized name."""
    s = _init(model, np.array(scale, np.float32), scope(f"{tensor}_scale"))
    z = _init(model, np.array(zero, np.uint8), scope(f"{tensor}_zero"))
    q, dq = scope(f"{tensor}_q"), scope(f"{tensor}_dq")
    nodes = [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=scope(f"{tensor}_Q")),
             helper.make_node("DequantizeLinear", [q, s, z], [dq], name=scope(f"{tensor}_DQ"))]
    for node in model.graph.node:
        if readers is not None and (not node.output or node.output[0] not in readers):
            continue
        for i, x in enumerate(node.input):
            if x == tensor:
                node.input[i] = dq
    pos = _after(model, tensor)
    for k, n in enumerate(nodes):
        model.graph.node.insert(pos + k, n)
    return dq


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid over [lo, hi] (widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    return float(np.float32(scale)), zero


def int8_weight(model: onnx.ModelProto, q: np.ndarray, scale: np.ndarray, axis: int, scope: NameScope,
                base: str, out: str, position: int) -> None:
    """Int8 ``q`` dequantized per channel along ``axis`` into the tensor ``out``, by a
    DequantizeLinear inserted at graph position ``position``."""
    w = _init(model, q.astype(np.int8), scope(f"{base}_int8"))
    s = _init(model, scale.astype(np.float32), scope(f"{base}_scale"))
    z = _init(model, np.zeros(len(scale), np.int8), scope(f"{base}_zero"))
    dq = helper.make_node("DequantizeLinear", [w, s, z], [out], name=scope(f"{base}_DQ"), axis=axis)
    model.graph.node.insert(position, dq)


def qdq_weight(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, q: np.ndarray, scale: np.ndarray,
               axis: int, scope: NameScope, base: str) -> str:
    """Feed ``node.input[slot]`` from int8 ``q`` dequantized per channel along ``axis``."""
    out = scope(f"{base}_dq")
    int8_weight(model, q, scale, axis, scope, base, out, list(model.graph.node).index(node))
    node.input[slot] = out
    return out


def bias_scales(bias: np.ndarray, x_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """Weight scales raised where the int32 bias at ``x_scale * w_scale`` would overflow (or be 0)."""
    need = np.abs(bias) / (x_scale * (INT32_LIMIT // 2))
    return np.maximum(np.maximum(w_scale, need), 1e-12)


def qdq_bias(model: onnx.ModelProto, node: onnx.NodeProto, bias: np.ndarray, x_scale: float,
             w_scale: np.ndarray, scope: NameScope, base: str) -> str:
    """Feed the bias slot (2) from int32 at scale ``x_scale * w_scale``."""
    s = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    q = np.clip(np.rint(bias / s), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
    b = _init(model, q, scope(f"{base}_int32"))
    sn = _init(model, s, scope(f"{base}_scale"))
    z = _init(model, np.zeros(len(s), np.int32), scope(f"{base}_zero"))
    out = scope(f"{base}_dq")
    dq = helper.make_node("DequantizeLinear", [b, sn, z], [out], name=scope(f"{base}_DQ"), axis=0)
    model.graph.node.insert(list(model.graph.node).index(node), dq)
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = out
    return out


def nbits_tensors(q: np.ndarray, grid: Grid, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(packed B [N, blocks, blob], scales [N, blocks], packed zero points or None) of integers
    ``q`` [N, K] on ``grid`` (a partial last block is padded with its zero point)."""
    n, bs, bits = q.shape[0], grid.group, grid.bits
    blocks = -(-k // bs)
    full = np.concatenate([q, grid.columns(grid.zero, blocks * bs)[:, k:]], 1) if blocks * bs > k else q
    packed = pack(full.reshape(n, blocks, bs), bits)
    zeros = None if grid.symmetric else pack(grid.zero, bits)
    return packed, grid.scale.astype(np.float32), zeros


def matmul_nbits(model: onnx.ModelProto, node: onnx.NodeProto, activation: str, q: np.ndarray, grid: Grid,
                 bias: np.ndarray | None, accuracy_level: int, scope: NameScope, base: str) -> None:
    """Turn ``node`` (MatMul/Gemm) into MatMulNBits over ``activation`` with integers ``q`` [N, K];
    the output keeps its name."""
    n, k = q.shape
    packed, scales, zeros = nbits_tensors(q, grid, k)
    inputs = [activation, _init(model, packed, scope(f"{base}_q{grid.bits}")),
              _init(model, scales, scope(f"{base}_scales"))]
    inputs.append(_init(model, zeros, scope(f"{base}_zeros")) if zeros is not None else "")
    if bias is not None:
        inputs += ["", _init(model, bias.astype(np.float32), scope(f"{base}_bias"))]
    while inputs and not inputs[-1]:
        inputs.pop()
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name or scope(f"{base}_nbits"),
                           domain=MS, K=k, N=n, bits=grid.bits, block_size=grid.group,
                           accuracy_level=accuracy_level)
    node.CopyFrom(new)
    ensure_domain(model, MS)


def nbits_scales(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[2]))


def set_tensor(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace the initializer ``name`` (same name)."""
    t = next(t for t in model.graph.initializer if t.name == name)
    value = np.asarray(value)
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value).reshape(value.shape), name))


def unsigned_weights(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """A QDQ layer's int8 weight stored as uint8 with zero point 128: the same values, run by
    onnxruntime's u8 x u8 kernels. Its u8 x s8 kernels on x86 CPUs without VNNI add pairs of
    products in int16 (VPMADDUBSW), which saturates for inputs near 255 times weights near 127
    (255 x 127 x 2 > 32767); the u8 x u8 ones do not. False when the layer has no int8 weight."""
    dq = next((n for n in model.graph.node if node.input[1] in n.output), None)
    inits = {t.name: t for t in model.graph.initializer}
    if dq is None or dq.op_type != "DequantizeLinear" or not {dq.input[0], dq.input[1]} <= inits.keys():
        return False
    q = numpy_helper.to_array(inits[dq.input[0]])
    if q.dtype != np.int8:
        return False
    set_tensor(model, dq.input[0], (q.astype(np.int16) + 128).astype(np.uint8))
    zero = np.full(numpy_helper.to_array(inits[dq.input[1]]).shape, 128, np.uint8)  # one per scale
    if len(dq.input) > 2 and dq.input[2] in inits and sum(dq.input[2] in n.input for n in model.graph.node) == 1:
        set_tensor(model, dq.input[2], zero)  # its own zero point (int8 zeros) becomes 128s
    elif len(dq.input) > 2:
        dq.input[2] = _init(model, zero, NameScope(model)(f"{dq.input[0]}_zero"))
    else:
        dq.input.append(_init(model, zero, NameScope(model)(f"{dq.input[0]}_zero")))
    return True


def gather_block(model: onnx.ModelProto, node: onnx.NodeProto, q: np.ndarray, grid: Grid,
                 scope: NameScope, base: str) -> None:
    """Turn a Gather (axis 0) over a [V, D] table into GatherBlockQuantized (blocks along D)."""
    v, d = q.shape
    data = pack(q, grid.bits) if grid.bits < 8 else q.astype(np.uint8)
    inputs = [_init(model, data, scope(f"{base}_q{grid.bits}")), node.input[1],
              _init(model, grid.scale.astype(np.float32), scope(f"{base}_scales")),
              _init(model, pack(grid.zero, grid.bits) if grid.bits < 8 else grid.zero.astype(np.uint8),
                    scope(f"{base}_zeros"))]
    new = helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=node.name or scope(base),
                           domain=MS, bits=grid.bits, block_size=grid.group, gather_axis=0, quantize_axis=1)
    node.CopyFrom(new)
    ensure_domain(model, MS)


def float_inputs(model: onnx.ModelProto, origin: dict[str, str]) -> int:
    """Float Conv/Gemm/MatMul layers read the float tensors, not their dequantized copies.

    Between a DequantizeLinear and a QuantizeLinear onnxruntime turns even a float-weight Conv into
    QLinearConv, quantizing its weights itself (per tensor): on effnet_lite0, depthwise convs left
    float that way took the KL to the original from 0.002 to 0.36. Returns the inputs rewired."""
    dq_weights = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    count = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.input and \
                node.input[0] in origin and (len(node.input) < 2 or node.input[1] not in dq_weights):
            node.input[0] = origin[node.input[0]]
            count += 1
    return count


def ensure_domain(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def drop_alpha_beta(node: onnx.NodeProto) -> None:
    """Gemm alpha and beta back to 1 (the scales now hold them)."""
    if node.op_type == "Gemm":
        set_attr(node, "alpha", 1.0)
        set_attr(node, "beta", 1.0)


def bias_add(model: onnx.ModelProto, node: onnx.NodeProto, n: int) -> tuple[str, np.ndarray] | None:
    """(initializer, value) of the constant [n] vector an Add alone reading ``node``'s output adds."""
    readers = [m for m in model.graph.node if node.output[0] in m.input]
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    other = [x for x in readers[0].input if x != node.output[0]]
    init = next((t for t in model.graph.initializer if other and t.name == other[0]), None)
    if init is None or sum(other[0] in m.input for m in model.graph.node) != 1:
        return None
    value = numpy_helper.to_array(init)
    return (init.name, value) if value.size == n and value.shape[-1] == n and value.dtype == np.float32 else None


def set_nbits_bias(model: onnx.ModelProto, node: onnx.NodeProto, bias: np.ndarray, scope: NameScope,
                   base: str) -> None:
    """A MatMulNBits node's bias input (slot 5) set to ``bias``."""
    if len(node.input) > 5 and node.input[5]:
        set_tensor(model, node.input[5], bias.astype(np.float32))
        return
    while len(node.input) < 5:
        node.input.append("")
    node.input.append(_init(model, bias.astype(np.float32), scope(f"{base}_bias")))
