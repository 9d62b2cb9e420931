"""The load memory a decoder costs onnxruntime, and which weights the default encoding can afford.

onnxruntime folds every decoder's constant subgraph when it creates a session and keeps each
folded temporary until the pass ends, so the temporaries of all decoders add up: a 50 %-sparse
float weight stored as a bitmask needs 5-7x its own dense bytes while the model loads, and how
much onnxruntime needs for the dense model itself ranges from 1.5x its weight bytes (a few large
MatMul weights) to 3x (a convnet). So the default encoding (``auto``) measures: when the decoders'
modeled temporaries (:func:`load_bytes`) pass :data:`LOAD_FLOOR`, onnxruntime loads the input
model, the model as it is and the model with every weight encoded, each in a child process
(:func:`measured_budget`). If the last peaks above :data:`LOAD_TARGET` times the first, the weights
that save the most file bytes per byte of load memory are encoded first, a weight left out takes
a larger encoding that costs less to load when one fits, and the rest stay dense. An explicit
encoding (``smallest``, ``sparse``, a kind) is stored as asked.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, shape_inference

# The load peak the default encoding allows, as a multiple of the unencoded model's (measured as
# `onnxcomp bench` measures model RSS: session creation and a run): the bar is 2x, and one load of
# a file can differ from the next by ~10 %
LOAD_TARGET = 1.7
# When it cannot be measured (no /proc, a model above 2 GB): decoder temporaries (the sum of the
# bytes of every tensor a decoder computes before the weight) allowed per byte of the model's
# weights at float32. onnxruntime needs 1.5-3x an fp32 model's weight bytes to load it, and 1-1.6x
# a temporary's bytes for it, so 0.5 keeps any model within 1.5x.
LOAD_BUDGET = 0.5
# Decoder temporaries below this are always allowed (and not measured), and this much more memory
# than the input model's while loading is allowed whatever the ratio: onnxruntime's session for
# the smallest model takes ~10 MB itself, so a few MB move a tiny model's ratio a lot (and each
# measured load costs ~1 s, most of it starting the process)
LOAD_FLOOR = 16_000_000
_SMALL = 64  # initializers up to this many elements go into the shape-inference graph with data


@dataclass(eq=False)
class Plan:
    """One weight's chosen encoding, built but not yet installed."""

    weight: object
    kind: str
    size: int
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    load: int = 0
    min_opset: int = 1
    others: list = field(default_factory=list)  # (kind, size) of the weight's larger encodings
    make: Callable[[str, int], "Plan"] | None = None  # builds the plan of one of them
    built: dict = field(default_factory=dict)

    def alternatives(self, most: int = 3) -> list["Plan"]:
        """Plans of the weight's next-smallest encodings (built once, when first asked for)."""
        for kind, size in self.others[:most]:
            if kind not in self.built and self.make is not None:
                self.built[kind] = self.make(kind, size)
        return [self.built[k] for k, _ in self.others[:most] if k in self.built]


def every_plan(plans: list[Plan]) -> list[Plan]:
    """The plans and every alternative built for them."""
    return plans + [a for p in plans for a in p.built.values()]


def fp32_weight_bytes(model: onnx.ModelProto) -> int:
    """The bytes the model's stored tensors (initializers, Constant nodes) take at float32."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            total += sum(int(np.prod(a.t.dims)) for a in n.attribute if a.name == "value")
    return 4 * total


def describe(inits: list[onnx.TensorProto], into: dict) -> None:
    """Remember decoder initializers for :func:`load_bytes` of later decoders that share them:
    small ones whole (shape inference reads their values), large ones by type and shape."""
    for t in inits:
        small = int(np.prod(t.dims)) <= _SMALL
        into[t.name] = t if small else helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))


def load_bytes(plan: Plan, known: dict, opset: int) -> int:
    """The bytes of every tensor the plan's decoder computes before the weight (shape inference on
    the decoder alone; a tensor of unknown shape counts as the weight at float32). ``known``: what
    :func:`describe` remembered of its initializers and the ones it shares."""
    produced = {o for n in plan.nodes for o in n.output}
    needed = [known[x] for x in dict.fromkeys(x for n in plan.nodes for x in n.input)
              if x and x not in produced and x in known]
    inits = [t for t in needed if isinstance(t, onnx.TensorProto)]
    inputs = [v for v in needed if isinstance(v, onnx.ValueInfoProto)]
    final = plan.nodes[-1].output[0]
    graph = helper.make_graph(plan.nodes, "decoder", inputs, [onnx.ValueInfoProto(name=final)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        inferred = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    except Exception:  # noqa: BLE001 - unusual decoder: count every tensor as the weight
        inferred = {}
    fallback = 4 * int(np.prod(plan.weight.shape))
    return sum(_bytes(inferred.get(o)) or fallback for n in plan.nodes[:-1] for o in n.output)


def _bytes(info: onnx.ValueInfoProto | None) -> int | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)).itemsize
    return itemsize * int(np.prod([d.dim_value for d in dims]))


def load_budget(model: onnx.ModelProto, plans: list[Plan], reference: onnx.ModelProto | None = None) -> float:
    """The modeled decoder temporaries (bytes) the default encoding may add to the model's load;
    ``reference``: the model whose load peak the bar is set against (the input of the
    compression), else the model as it is."""
    total = sum(p.load for p in plans)
    if total <= LOAD_FLOOR:
        return float(total)
    measured = measured_budget(model, plans, reference)
    return measured if measured is not None else max(LOAD_BUDGET * fp32_weight_bytes(model), LOAD_FLOOR)


def measured_budget(model: onnx.ModelProto, plans: list[Plan], reference: onnx.ModelProto | None = None,
                    tries: int = 3) -> float | None:
    """The modeled decoder temporaries that keep onnxruntime's load peak within :data:`LOAD_TARGET`
    times the reference's (the model as it is when None; the median of three loads). The model is
    loaded with every plan installed (and as it is, when its size differs from the reference's);
    when that peaks too high, budgets between the largest that fitted (at
    first none) and the smallest that did not are tried, each placed where the line through those
    two measured loads meets the limit (the peak is not proportional to the temporaries: a weight
    left dense adds its bytes back). None when the loads cannot be measured."""
    from onnxcomp import io
    from onnxcomp.errors import OnnxCompError
    from onnxcomp.measure.bench import LoadMeter

    try:
        with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-load")) as tmp:
            path = Path(tmp) / "model.onnx"
            write_encoded(path, model, [], plans)
            with LoadMeter(path) as meter:
                return _search(model, plans, reference, path, meter, tries)
    except (OnnxCompError, OSError):
        return None


def _search(model: onnx.ModelProto, plans: list[Plan], reference: onnx.ModelProto | None, path: Path,
            meter: Any, tries: int) -> float | None:
    """:func:`measured_budget`'s search, with ``meter`` measuring the model written at ``path``."""
    from onnxcomp import io

    def peak(m: onnx.ModelProto, kept: list[Plan] | None = None, loads: int = 1) -> float | None:
        write_encoded(path, m, kept or [], every_plan(plans))
        got = [meter.peak(path) for _ in range(loads)]
        return None if None in got else sorted(got)[loads // 2]

    base = peak(reference if reference is not None else model, loads=3)  # the median: one load varies ~8 %
    if not base:
        return None
    limit = max(LOAD_TARGET * base, base + LOAD_FLOOR)
    same = reference is None or abs(io.model_bytes(model) - io.model_bytes(reference)) \
        <= 0.1 * io.model_bytes(reference)  # pruned or clustered: loads like its input
    fit = (0.0, base if same else peak(model))
    miss = (float(sum(p.load for p in plans)), peak(model, plans))
    if fit[1] is None or miss[1] is None:
        return None
    for _ in range(tries):
        if miss[1] <= limit:
            return miss[0]
        if fit[1] > limit:
            break
        slope = (miss[1] - fit[1]) / max(miss[0] - fit[0], 1.0)
        kept, _ = within_budget(plans, fit[0] + 0.95 * (limit - fit[1]) / max(slope, 1e-9))
        used = float(sum(p.load for p in kept))
        if used <= fit[0] or used >= miss[0]:
            break
        got = peak(model, kept)
        if got is None:
            return None
        if got <= limit:
            fit = (used, got)
        else:
            miss = (used, got)
    return fit[0]


def shared_tables(plans: list[Plan], every: list[Plan]) -> list[onnx.TensorProto]:
    """The initializers the decoders of ``plans`` read that only other plans of ``every`` hold (a
    table shared by all decoders is stored with the first one built)."""
    used = {x for p in plans for n in p.nodes for x in n.input}
    held = {t.name for p in plans for t in p.inits}
    out: dict[str, onnx.TensorProto] = {}
    for p in every:
        for t in p.inits:
            if t.name in used and t.name not in held:
                out.setdefault(t.name, t)
    return list(out.values())


def write_encoded(path: Path, model: onnx.ModelProto, plans: list[Plan], every: list[Plan]) -> None:
    """Write the model with each plan's decoder in place of its weight's storage (and the tables
    they share with the other plans of ``every``), a tensor at a time (no copy of the model)."""
    from onnxcomp.io.stream import write_variant

    write_variant(path, model, {p.weight.name for p in plans}, [n for p in plans for n in p.nodes],
                  [t for p in plans for t in p.inits] + shared_tables(plans, every),
                  max((p.min_opset for p in plans), default=0))


def within_budget(plans: list[Plan], budget: float) -> tuple[list[Plan], list[Plan]]:
    """(kept, left dense): the plans saving the most file bytes per byte of load memory first,
    while their decoders' temporaries fit ``budget`` bytes; then, for each weight left out, the
    first of its larger encodings that still fits (a codebook instead of sparse + codebook)."""
    order = sorted(plans, key=lambda p: -(p.weight.nbytes - p.size) / max(p.load, 1))
    kept, dense, used = [], [], 0
    for p in order:
        if used + p.load <= budget:
            kept.append(p)
            used += p.load
        else:
            dense.append(p)
    left = []
    for p in dense:
        alt = next((a for a in p.alternatives() if used + a.load <= budget), None) if used < budget else None
        if alt is None:
            left.append(p)
        else:
            kept.append(alt)
            used += alt.load
    return kept, left
