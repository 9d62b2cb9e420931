"""What the local rewrites (factorize, depthwise) share: layers, conv geometry, shapes, graph edits.

A :class:`Layer` is one weight with all the compute nodes that use it (several when the weight is
shared; they must all be the same kind of use), the kernel as a numpy array in a canonical
layout (conv ``[O, C/g, kh, kw]``; Gemm/MatMul ``[O, K]`` with ``y = W x``), the conv geometry
and the input/output shapes of every use. Shapes come from ONNX shape inference, and where it
gives up (dynamic padding subgraphs, unknown dims) from one onnxruntime run on one sample. A 1-D
conv (audio front ends, TCNs) is planned as the 2-D conv of height 1 it equals (kernel
``[O, C/g, 1, k]``, shapes ``[N, C, 1, L]``) and written back as 1-D nodes (:meth:`Layer.stored`,
:meth:`ConvGeometry.conv_attrs`). ``measure_by_default`` decides when a rewrite is kept only where
a 1-thread micro-benchmark runs it faster.

Rewrites replace each use node by new nodes at the same position in the graph; the last new node
writes the ORIGINAL output tensor name, so consumers and graph outputs are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxcomp.algo.numeric import numeric_problem
from onnxcomp.graph.edit import NameScope
from onnxcomp.graph.shapes import conv_attrs, infer_shapes, same_pads
from onnxcomp.graph.weights import Weight, WeightReport, find_weights, remove_storage
from onnxcomp.measure.microbench import estimate_seconds, micro_node
from onnxcomp.passes.base import Context, matches

KINDS = {"conv": "Conv", "gemm_b": "Gemm", "matmul_b": "MatMul"}
UNIFORM = "one repeated value (ConstantOfShape): already stored in a few bytes"
AUTO_MEASURE_S = 120.0  # measure by default when the estimated micro-benchmark time is below this


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, strides, pads (top, left, bottom, right), dilations, groups and auto_pad of a 2-D conv
    (``dims`` 1: a 1-D conv, held as the height-1 2-D conv it equals)."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    auto_pad: str = "NOTSET"
    dims: int = 2

    @staticmethod
    def of(node: onnx.NodeProto, kernel_shape: tuple[int, ...]) -> "ConvGeometry":
        auto = attr(node, "auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        kernel, strides, pads, dilations = conv_attrs(node, kernel_shape)  # 1-D: height 1
        return ConvGeometry(kernel, strides, pads, dilations, int(attr(node, "group", 1)), auto,
                            dims=len(kernel_shape) - 2)

    def explicit_pads(self, in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Pads with auto_pad resolved for an input of height/width ``in_hw``."""
        if self.auto_pad in ("NOTSET", ""):
            return self.pads
        if self.auto_pad == "VALID":
            return (0, 0, 0, 0)
        t, left, b, r = same_pads(in_hw, self.kernel, self.strides, self.dilations, self.auto_pad)
        return (t, left, b, r)

    def conv_attrs(self, axis: str = "both") -> dict:
        """Attributes for a conv carrying this geometry on the vertical, horizontal or both axes."""
        kh, kw = self.kernel
        t, left, b, r = self.pads
        if axis == "vertical":
            return self._attrs((kh, 1), (self.strides[0], 1), (t, 0, b, 0), (self.dilations[0], 1))
        if axis == "horizontal":
            return self._attrs((1, kw), (1, self.strides[1]), (0, left, 0, r), (1, self.dilations[1]))
        return self._attrs((kh, kw), self.strides, self.pads, self.dilations)

    def pointwise(self) -> dict:
        """Attributes of a 1x1 conv (a 1-wide one for a 1-D conv)."""
        return {"kernel_shape": [1] * self.dims}

    def _attrs(self, kernel, strides, pads, dilations) -> dict:
        if self.dims == 1:  # the width axis alone
            kernel, strides, pads, dilations = kernel[1:], strides[1:], (pads[1], pads[3]), dilations[1:]
        out = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations)}
        if self.auto_pad not in ("NOTSET", ""):
            out["auto_pad"] = self.auto_pad  # SAME_*/VALID resolve per axis exactly as in the original
        else:
            out["pads"] = list(pads)
        return out


@dataclass
class Layer:
    """One weight and its compute nodes, ready for a local rewrite."""

    weight: Weight
    nodes: list[onnx.NodeProto]
    kind: str  # conv, gemm, matmul
    kernel: np.ndarray
    geom: ConvGeometry | None = None
    in_shapes: list[tuple | None] = field(default_factory=list)
    out_shapes: list[tuple | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        node = self.nodes[0]
        return node.name or node.output[0]

    @property
    def group(self) -> int:
        return self.geom.group if self.geom else 1

    @property
    def shapes_known(self) -> bool:
        rank = self.geom.dims + 2 if self.kind == "conv" else None  # a conv's activations: its kernel's rank
        return all(_known(s) and (rank is None or len(s) == rank) for s in self.in_shapes + self.out_shapes)

    def lifted(self, shape: tuple) -> tuple:
        """A conv activation shape as the 2-D conv sees it (``[N, C, L]`` -> ``[N, C, 1, L]``)."""
        one_d = self.geom is not None and self.geom.dims == 1 and len(shape) == 3
        return tuple(shape[:2]) + (1,) + tuple(shape[2:]) if one_d else shape

    def stored(self, kernel: np.ndarray) -> np.ndarray:
        """A conv kernel in the layout of the node that holds it (a 1-D conv's has no height axis)."""
        return kernel[:, :, 0] if self.kind == "conv" and self.geom.dims == 1 and kernel.ndim == 4 else kernel


def _known(shape) -> bool:
    return shape is not None and len(shape) > 0 and all(isinstance(d, int) and d > 0 for d in shape)


def _as_matrix(weight: Weight, values: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """Gemm/MatMul weight as ``W [out, K]`` (y = W x)."""
    if weight.role == "gemm_b" and attr(node, "transB", 0):
        return values
    return values.T


def collect_layers(model: onnx.ModelProto, config, ctx: Context, roles: tuple[str, ...],
                   report: WeightReport | None = None) -> tuple[list[Layer], list[tuple[Weight, str]]]:
    """Layers the pass may rewrite, and ``(weight, reason)`` for every candidate ruled out."""
    report = report if report is not None else find_weights(model)
    layers, skipped = [], []
    for w in report:
        if w.role not in KINDS or w.role not in roles:
            continue
        why = matches(w, config.include, config.exclude)
        if why is None and w.source == "constant_of_shape":
            why = UNIFORM
        if why is None and w.size < config.min_params:
            why = f"{w.size} params, below --min-params {config.min_params}"
        if why is None and len(set((u.role, u.node.op_type) for u in w.uses)) > 1:
            why = "shared by nodes that use it differently"
        if why is None and any(u.role != w.role for u in w.uses):
            why = "also used as another operand"
        if why is None and w.role == "conv" and len(w.shape) not in (3, 4):
            why = f"{len(w.shape) - 2}-D convolution (only 1-D and 2-D convs are rewritten)"
        if why is None and w.role == "matmul_b" and len(w.shape) != 2:
            why = "batched MatMul weight (more than 2 dims)"
        if why is None and w.role == "conv":
            geoms = {ConvGeometry.of(u.node, w.shape) for u in w.uses}
            why = "shared by convs with different strides/pads" if len(geoms) > 1 else None
        if why is None and w.role == "gemm_b" and len({attr(u.node, "transB", 0) for u in w.uses}) > 1:
            why = "shared by Gemms with different transB"
        if why is not None:
            skipped.append((w, why))
            continue
        node = w.uses[0].node
        values = w.values()
        why = numeric_problem(values)  # same rule as prune and cluster
        if why is not None:
            skipped.append((w, why))
            continue
        if w.role == "conv":
            kernel = values[:, :, None] if values.ndim == 3 else values  # 1-D: the height-1 2-D kernel
            layers.append(Layer(w, [u.node for u in w.uses], "conv", kernel, ConvGeometry.of(node, w.shape)))
        else:
            layers.append(Layer(w, [u.node for u in w.uses], KINDS[w.role].lower(),
                                _as_matrix(w, values, node)))
    fill_shapes(model, layers, ctx)
    return layers, skipped


def fill_shapes(model: onnx.ModelProto, layers: list[Layer], ctx: Context) -> None:
    """Input/output shapes of every use (shape inference, else one onnxruntime run, batch 1)."""
    shapes = infer_shapes(model, ctx.input_shapes)
    missing = [t for lay in layers for n in lay.nodes for t in (n.input[0], n.output[0])
               if not _known(shapes.get(t))]
    if missing:
        shapes.update(runtime_shapes(model, missing, ctx))
    for lay in layers:
        lay.in_shapes = [shapes.get(n.input[0]) for n in lay.nodes]
        lay.out_shapes = [shapes.get(n.output[0]) for n in lay.nodes]


def runtime_shapes(model: onnx.ModelProto, names: list[str], ctx: Context) -> dict[str, tuple]:
    """Shapes of ``names`` from one onnxruntime run on one sample ({} if that is impossible)."""
    from onnxcomp.measure.capture import Capturer
    from onnxcomp.data.calibration import load_data
    from onnxcomp.data.sampling import batch_unit
    from onnxcomp.errors import OnnxCompError

    try:
        data = ctx.data if ctx.data is not None else load_data(None, model, input_shapes=ctx.input_shapes,
                                                               batch_size=1, num_samples=1)
        unit = batch_unit(model)  # one sample, or one whole batch of a fixed batch
        batch = {k: v[:unit] for k, v in next(iter(data)).items()}
        out = Capturer(model, list(dict.fromkeys(names)), threads=ctx.threads).run(batch)
    except (OnnxCompError, StopIteration, Exception):  # noqa: BLE001 - shapes stay unknown
        return {}
    return {k: tuple(int(d) for d in v.shape) for k, v in out.items()}


class GraphEditor:
    """Replace nodes in place, add initializers under fresh names, drop storage that fell unused."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.scope = NameScope(model)

    def replace(self, node: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        """Put ``new_nodes`` where ``node`` was (its output name must be the last node's output)."""
        assert new_nodes[-1].output[0] == node.output[0]
        nodes = self.model.graph.node
        index = next(i for i, n in enumerate(nodes) if n is node)
        del nodes[index]
        for k, new in enumerate(new_nodes):
            nodes.insert(index + k, new)

    def drop_weight(self, weight: Weight) -> None:
        """Remove the old weight's storage, and the Identity/Reshape chain to it, once unused."""
        g = self.model.graph
        producers = {o: n for n in g.node for o in n.output}
        chain, extras = [], []
        for use in weight.uses:
            name = use.node.input[use.index]
            while name in producers and producers[name].op_type in ("Identity", "Reshape"):
                node = producers[name]
                chain.append(node)
                extras += list(node.input[1:])
                name = node.input[0]
        if weight.source == "constant_of_shape" and weight.holder is not None:
            extras += list(weight.holder.input)
        for node in chain:
            if self._unused(node.output[0]) and any(n is node for n in g.node):
                g.node.remove(node)
        if weight.holder is not None and self._unused(weight.name):
            remove_storage(self.model, weight)
        for name in extras:
            t = next((t for t in g.initializer if t.name == name), None)
            if t is not None and self._unused(name):
                g.initializer.remove(t)

    def _unused(self, name: str) -> bool:
        g = self.model.graph
        return all(name not in n.input for n in g.node) and all(o.name != name for o in g.output)


def geometry_key(lay: Layer) -> tuple:
    """What the speed of a layer depends on: the node's op and attributes, weight and input shapes."""
    node = micro_node(lay.nodes[0])
    node.name = ""
    return (node.SerializeToString(deterministic=True), tuple(lay.kernel.shape), tuple(lay.in_shapes[0]),
            str(lay.weight.dtype))


def measure_by_default(layers: list[Layer], methods: int) -> tuple[bool, str]:
    """(measure?, why) for ``--measure`` left at its default: on when every shape is known and the
    estimated micro-benchmark time is under ``AUTO_MEASURE_S``."""
    if not layers:
        return False, ""
    if not all(lay.shapes_known for lay in layers):
        return False, "layer speed not measured: some input shapes are unknown (give --input-shape)"
    unique = {geometry_key(lay): lay for lay in layers}
    macs = sum(int(np.prod(lay.out_shapes[0][1:], dtype=np.int64)) * int(np.prod(lay.kernel.shape[1:]))
               for lay in unique.values())
    cost = estimate_seconds(3 * methods * len(unique), 3 * methods * macs)
    if cost > AUTO_MEASURE_S:
        return False, (f"layer speed not measured: about {cost:.0f} s of micro-benchmarks "
                       f"(--measure to measure anyway)")
    return True, ""
