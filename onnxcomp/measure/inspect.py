"""Where the parameters and the compute of a model sit: per layer, per op type, in total."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxcomp.graph.channels.groups import static_shapes
from onnxcomp.graph.shapes import node_macs
from onnxcomp.graph import foreign
from onnxcomp.graph.weights import COMPUTE_OPS, ENCODED_WHY, Weight, find_weights
from onnxcomp.io import stored_size

LAYER_OPS = COMPUTE_OPS + ("LSTM", "GRU", "RNN", "Einsum")  # layers with weights: MACs and params per node


@dataclass
class LayerInfo:
    """One compute node: its geometry, its weights and its cost."""

    name: str
    op: str
    weight: str | None
    weight_shape: list[int] | None
    kernel: list[int] | None
    stride: list[int] | None
    groups: int
    params: int
    macs: int | None
    weight_bytes: int
    sparsity: float | None  # None: stored encoded (not decoded to count)
    storage: str | None
    shared: bool = False


@dataclass
class InspectReport:
    """The result of :func:`inspect`; ``to_dict`` is the ``--json`` output."""

    model: str
    file_size: int | None
    opset: int
    ir_version: int
    inputs: dict[str, list]
    total_params: int
    total_macs: int | None
    known_macs: int
    weight_bytes: int
    by_op: dict[str, dict]
    layers: list[LayerInfo]
    storage: dict[str, int]
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
        return d


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return None


def zero_fraction(weight: Weight) -> float:
    """Fraction of exact zeros in a weight (cheap for ConstantOfShape)."""
    if weight.source == "constant_of_shape":
        return 1.0 if float(weight.values().reshape(-1)[:1][0]) == 0.0 else 0.0
    values = weight.values()
    return float(np.count_nonzero(values == 0)) / max(values.size, 1)


SUBGRAPH_VERDICTS = {
    "run": "are left alone by this command (prune and cluster, which change values only, take them)",
    "values": "are left alone (prune and cluster take the tensors a body's layer reads straight from storage)",
    "inspect": "are left alone by the layer rewrites (prune and cluster, which change values only, take them)"}


def subgraph_notes(found, verdict: str = "run") -> list[str]:
    """Notes naming the weights a command leaves alone: those If/Loop/Scan subgraphs hold or read
    (``verdict``: who leaves them, see SUBGRAPH_VERDICTS), those already stored behind a decoder, and
    Einsum operands that are not one matrix product."""
    notes = []
    for pick, what, hint in (
            (lambda why: "subgraph" in why, "inside or read by If/Loop/Scan subgraphs " + SUBGRAPH_VERDICTS[verdict],
             ""),
            (lambda why: why == ENCODED_WHY, "are already compressed (a decoder computes them at load) and left "
             "alone by every pass", "; to compress further, start from the original model"),
            (lambda why: why.startswith("already quantized"), "are already quantized (" + ", ".join(sorted(
                {why.split("(", 1)[1].split(")")[0] for why in found.skipped.values() if why.startswith("already q")})) +
             ") and left alone by every pass", "; to compress further, start from the float model"),
            (lambda why: why.startswith("an Einsum operand"), "are Einsum operands that are not one matrix "
             "product (every pass leaves them alone)", ""),
            (lambda why: why.endswith(foreign.WHY), "are read by ops outside the ONNX standard (" +
             ", ".join(ops := sorted({w.split(" ")[0] for w in found.skipped.values() if w.endswith(foreign.WHY)})) +
             ") and left alone by every pass", foreign.hint(ops))):
        names = [n for n, why in found.skipped.items() if pick(why)]
        if names:
            more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
            notes.append(f"{len(names)} weight(s) {what}: {', '.join(names[:5])}{more}{hint}")
    return notes


ENCODED = "encoded"  # storage of a weight an onnxcomp decoder (or any load-time subgraph) computes


class _Encoded:
    """Weights computed at load from stored tensors (the encodings' decoders): their stored bytes."""

    def __init__(self, graph: onnx.GraphProto, folded: set[str]):
        self.folded = folded
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.stored = {t.name: t for t in graph.initializer}
        self.seen: dict[str, int] = {}  # weight -> stored bytes
        self.claimed: set[str] = set()  # stored tensors already counted (shared small constants)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())

    def weight_of(self, node: onnx.NodeProto, shapes: dict) -> tuple[str, tuple] | None:
        """The node's decoded weight (the first computed constant input of rank 2 or more)."""
        for name in node.input:
            if name and name in self.folded and name in self.producer:
                shape = shapes.get(name)
                if shape is not None and len(shape) >= 2 and all(isinstance(d, int) for d in shape):
                    return name, tuple(shape)
        return None

    def claim(self, name: str, shape: tuple) -> tuple[int, int]:
        """(params, stored bytes) of a decoded weight the first time a layer reads it; (0, 0) after
        (a shared weight counts once)."""
        if name in self.seen:
            return 0, 0
        total, todo, visited = 0, [name], set()
        while todo:
            node = self.producer.get(todo.pop())
            if node is None or id(node) in visited:
                continue
            visited.add(id(node))
            for i in node.input:
                if i in self.stored and i not in self.claimed:
                    self.claimed.add(i)
                    total += stored_size(self.stored[i])
                elif i in self.producer:
                    todo.append(i)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    total += a.t.ByteSize()
        self.seen[name] = total
        return int(np.prod(shape)), total


def inspect(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
            file_size: int | None = None, name: str = "") -> InspectReport:
    """Show where a model's parameters and MACs are, layer by layer and per op type."""
    if any(n.domain == "com.microsoft" for n in model.graph.node):  # onnxruntime's FusedConv/FusedGemm:
        from onnxcomp.graph.normalize import unfuse  # counted as the layers every pass sees

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy if unfuse(copy) else model
    found = find_weights(model)
    shapes = static_shapes(model, input_shapes)  # what inference cannot follow: one run at batch 1
    by_node: dict[int, dict[str, Weight]] = {}
    for w in [*found, *found.held]:  # held: weights passes leave alone still count here
        for use in w.uses:
            by_node.setdefault(id(use.node), {})[use.role, w.name] = w  # an LSTM's R may be two tensors
    counted: set[str] = set()
    zero_cache: dict[str, float] = {}
    layers: list[LayerInfo] = []
    notes: list[str] = []
    folded = found.load_time
    encoded = _Encoded(model.graph, folded)
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or all(i in folded for i in node.input if i):
            continue  # a decoder's MatMul is computed once, when onnxruntime folds it at load
        ws = by_node.get(id(node), {})
        main = next((w for (role, _), w in ws.items() if not w.is_bias and role != "gemm_a"), None) \
            or next((w for (role, _), w in ws.items() if role == "gemm_a"), None)
        params = 0
        nbytes = 0
        for w in ws.values():
            if w.name not in counted:  # a shared weight counts once
                counted.add(w.name)
                params += w.size
                nbytes += w.nbytes
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        wshape = list(main.shape) if main is not None else None
        kernel_shape = tuple(main.shape) if main is not None else None
        hit = encoded.weight_of(node, shapes) if main is None else None
        if hit is not None:  # stored behind a decoder: its element count, its stored bytes
            n, b = encoded.claim(*hit)
            params, nbytes = params + n, nbytes + b
            wshape, kernel_shape = list(hit[1]), hit[1]
        if kernel_shape is None and node.op_type in ("Conv", "ConvTranspose"):
            kernel_shape = shapes.get(node.input[1])
        macs = node_macs(node, shapes, kernel_shape, group)
        if main is not None and main.name not in zero_cache:
            zero_cache[main.name] = zero_fraction(main)
        conv = node.op_type in ("Conv", "ConvTranspose")
        kernel = _ints(node, "kernel_shape") or (list(kernel_shape[2:]) if conv and kernel_shape else None)
        if main is not None:
            weight, sparsity, where = main.name, zero_cache.get(main.name, 0.0), main.source
        elif hit is not None:
            weight, sparsity, where = hit[0], None, ENCODED
        else:
            weight, sparsity, where = None, 0.0, None
        layers.append(LayerInfo(
            name=node.name or node.output[0], op=node.op_type, weight=weight, weight_shape=wshape,
            kernel=kernel if conv else None,
            stride=(_ints(node, "strides") or [1] * len(kernel or [])) if conv else None,
            groups=int(group), params=params, macs=macs, weight_bytes=nbytes, sparsity=sparsity,
            storage=where, shared=bool(main is not None and main.shared)))
        if conv and group > 1 and main is not None and not main.is_depthwise:
            notes.append(f"{layers[-1].name}: grouped {node.op_type} (groups={group}) — params and "
                         f"MACs are 1/{group} of a dense layer")
    by_op: dict[str, dict] = {}
    for layer in layers:
        entry = by_op.setdefault(layer.op, {"count": 0, "params": 0, "macs": 0, "unknown_macs": 0})
        entry["count"] += 1
        entry["params"] += layer.params
        if layer.macs is None:
            entry["unknown_macs"] += 1
        else:
            entry["macs"] += layer.macs
    total_params = sum(layer.params for layer in layers)
    known = sum(layer.macs or 0 for layer in layers)
    unknown = [layer.name for layer in layers if layer.macs is None]
    for entry in by_op.values():
        entry["params_share"] = entry["params"] / total_params if total_params else 0.0
        entry["macs_share"] = entry["macs"] / known if known else 0.0
    if unknown:
        notes.append(f"MACs unknown for {len(unknown)} layer(s) with dynamic shapes (e.g. "
                     f"{unknown[0]}); pass --input-shape NAME=DIMS")
    if not found.weights:
        notes.append("no weights found: nothing " + ("in the main graph " if any(
            "subgraph" in why for why in found.skipped.values()) else "") +
                     "feeds Conv/ConvTranspose/Gemm/MatMul (or an Einsum's matrix product) from a constant")
    notes += subgraph_notes(found, "inspect")
    storage: dict[str, int] = {}
    for w in found:
        storage[w.source] = storage.get(w.source, 0) + 1
    if encoded.seen:
        storage[ENCODED] = len(encoded.seen)
    specs = {vi.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in vi.type.tensor_type.shape.dim]
             for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}}
    from onnxcomp.io import default_opset

    return InspectReport(
        model=name, file_size=file_size, opset=default_opset(model), ir_version=model.ir_version,
        inputs=specs, total_params=total_params, total_macs=None if unknown else known,
        known_macs=known, weight_bytes=sum(w.nbytes for w in found) + encoded.bytes, by_op=by_op, layers=layers,
        storage=storage, quantized=list(found.quantized), skipped=dict(found.skipped), notes=notes)
