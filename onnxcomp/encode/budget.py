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
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
from onnx import helper, shape_inference

if TYPE_CHECKING:
    from onnxcomp.measure.loadpeak import Loads

# The load peak the default encoding allows, as a multiple of the unencoded model's (measured as
# `onnxcomp bench` measures model RSS, session creation and a run in a fresh process each, but
# with glibc's mmap threshold fixed: loadpeak.STEADY_MALLOC). The bar is 2x as bench measures it.
# The fixed threshold takes the heap glibc keeps out of both peaks, and the ratio it measures was
# 0.96-0.97x bench's for the 22 M transformer and 1.23-1.45x for vit_digits, effnet_lite0 and the
# PP-OCRv4 recogniser (prune 0.5 sparse, codebook8): 1.8 stays under 2x for all of them
LOAD_TARGET = 1.8
# When it cannot be measured (no /proc, a model above 2 GB): decoder temporaries (the sum of the
# bytes of every tensor a decoder computes before the weight) allowed per byte of the model's
# weights at float32. onnxruntime needs 1.5-3x an fp32 model's weight bytes to load it, and 1-1.6x
# a temporary's bytes for it, so 0.5 keeps any model within 1.5x.
LOAD_BUDGET = 0.5
# Decoder temporaries up to this are allowed without measuring (each measured load costs ~0.3 s
# and a process): onnxruntime's session for the smallest model takes ~8 MB, so a tiny model's ratio
# can pass 2x here (resnet_digits prune 0.5: 13 MB modeled, ~2.0x as bench measures it)
LOAD_FLOOR = 16_000_000
# A budget tried aims this far below the limit, at least: loads of one file peak +-0.1-0.3 MB apart
# (STEADY_MALLOC), so a load that lands closer could fit in one run and not in the next
LOAD_MARGIN = 1_000_000
# The first round loads, beside a guess, every plan at once, or the plans within this many times
# the room below the aim when they model more: each load runs in a process of its own, and the
# all-encoded model of a pruned transformer peaked at 2.3x the input's load (the command's peak)
FAR = 1.5
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


def fp32_weight_bytes(model: onnx.ModelProto, fp32: bool = True) -> int:
    """The bytes the model's stored tensors (initializers, Constant nodes) take at float32 (or, not
    ``fp32``, at their own types; counted from shapes: protobuf's ByteSize copies the data)."""
    from onnxcomp.io.checks import expected_bytes

    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    return sum(4 * int(np.prod(t.dims)) if fp32 else expected_bytes(t) or 4 * int(np.prod(t.dims)) for t in tensors)


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


def load_budget(model: onnx.ModelProto, plans: list[Plan], reference: onnx.ModelProto | None = None,
                reference_loads: Loads | None = None) -> float:
    """The modeled decoder temporaries (bytes) the default encoding may add to the model's load;
    ``reference``: the model whose load peak the bar is set against (the input of the
    compression), else the model as it is; ``reference_loads``: a load of its file, already
    under way (:class:`onnxcomp.measure.loadpeak.Loads`)."""
    total = sum(p.load for p in plans)
    if not weighed(total):
        return float(total)
    measured = measured_budget(model, plans, reference, reference_loads=reference_loads)
    return measured if measured is not None else max(LOAD_BUDGET * fp32_weight_bytes(model), LOAD_FLOOR)


def weighed(modeled: float) -> bool:
    """Whether decoders modeling this many bytes of temporaries are measured (and each weight's
    larger encodings weighed against its smallest): above :data:`LOAD_FLOOR`."""
    return modeled > LOAD_FLOOR


def measured_budget(model: onnx.ModelProto, plans: list[Plan], reference: onnx.ModelProto | None = None,
                    tries: int = 2, reference_loads: Loads | None = None) -> float | None:
    """The modeled decoder temporaries that keep onnxruntime's load peak within :data:`LOAD_TARGET`
    times the reference's (the model as it is when None). Each budget tried aims 5 % of the room
    (at least :data:`LOAD_MARGIN`) below that limit, where the loads' own variation cannot decide
    whether it fits. At once, the model is loaded with the plans that reach the aim if each
    modeled byte costs one byte at load, with every plan (or, when they model more than
    :data:`FAR` times the room, the plans within that), and as it is when its size differs from
    the reference's. Then up to ``tries`` budgets are tried, each where the line
    through the largest load that fitted and the smallest that did not (none missed yet: the
    smallest that fitted) meets the aim: the peak is not proportional to the temporaries, a weight
    left dense adds its bytes back. None when the loads cannot be measured. ``reference_loads``:
    the reference's load, already under way (its file, not written again)."""
    from onnxcomp import io
    from onnxcomp.errors import OnnxCompError
    from onnxcomp.measure.loadpeak import Meter

    try:
        with tempfile.TemporaryDirectory(prefix=io.temp_prefix("onnxcomp-load")) as tmp, Meter(model) as meter:
            folder = Path(tmp)
            total = float(sum(p.load for p in plans))
            got = _loaded(reference_loads)
            if got is None:  # the reference's file as the model holds it
                write_encoded(folder / "reference.onnx", reference if reference is not None else model, [], plans)
                got = meter.peaks([folder / "reference.onnx"])
            if None in got or not got:
                return None
            base = min(got)  # (one load: loads of a file peak +-0.3 MB apart, loadpeak.STEADY_MALLOC)
            limit = LOAD_TARGET * base
            held = fp32_weight_bytes(reference, False) if reference is not None else 0
            same = reference is None or abs(fp32_weight_bytes(model, False) - held) \
                <= 0.1 * held  # pruned or clustered: loads like its input
            aim = limit - max(0.05 * (limit - base), LOAD_MARGIN)  # each budget tried aims here, clear of
            room = aim - base  # the limit (where the loads' noise would decide)
            variants = [] if same else [(0.0, [])]
            for budget in (room, min(total, FAR * room)):  # a guess (a modeled byte costs one byte at load)
                kept, _ = within_budget(plans, budget)  # and a load past it: every plan when that is near
                used = float(sum(p.load for p in kept))
                if 0 < used and used not in [u for u, _ in variants]:
                    variants.append((used, kept))
            files = [folder / f"variant{k}.onnx" for k in range(len(variants))]
            for path, (_, kept) in zip(files, variants):  # (alternatives built by now hold shared tables too)
                write_encoded(path, model, kept, every_plan(plans))
            peaks = meter.peaks(files, then=min(tries, 1))  # a refinement loads one model a round
            points = [(used, peak) for (used, _), peak in zip(variants, peaks)] + ([(0.0, base)] if same else [])
            while True:
                if any(peak is None for _, peak in points):
                    return None
                fits = sorted(pt for pt in points if pt[1] <= limit)
                over = [pt for pt in points if pt[1] > limit]
                if not fits:
                    return 0.0
                fit = fits[-1]
                if fit[0] >= total:
                    return total
                if tries <= 0 or fit[1] >= aim or (not over and len(fits) < 2):
                    return fit[0]
                other = min(over) if over else fits[0]  # none over yet: the chord from the lowest load
                slope = (other[1] - fit[1]) / ((other[0] - fit[0]) or 1.0)
                kept, _ = within_budget(plans, fit[0] + (aim - fit[1]) / max(slope, 1e-9))
                used = float(sum(p.load for p in kept))
                if used <= fit[0] or (over and used >= other[0]):
                    return fit[0]
                write_encoded(files[0], model, kept, every_plan(plans))
                points.append((used, meter.peaks(files[:1], then=min(tries - 1, 1))[0]))
                tries -= 1
    except (OnnxCompError, OSError):
        return None


def _loaded(loads: Loads | None) -> list[int | None] | None:
    """The peaks of loads under way; None when there are none or they failed (a file onnxruntime
    cannot load as it is, which the model in memory may fix)."""
    from onnxcomp.errors import OnnxCompError

    try:
        return loads.result() if loads is not None else None
    except (OnnxCompError, OSError):
        return None


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

    nodes = [n for p in plans for n in p.nodes]
    for n in nodes:  # unnamed, as install_decoder leaves them: a decoder node named like its weight
        n.name = ""  # clashes with a node of the model named so (onnxruntime refuses the file)
    write_variant(path, model, {p.weight.name for p in plans}, nodes,
                  [t for p in plans for t in p.inits] + shared_tables(plans, every),
                  max((p.min_opset for p in plans), default=0))


def _saving(p: Plan) -> float:
    return p.weight.nbytes - p.size


def _ratio(p: Plan) -> float:
    return _saving(p) / max(p.load, 1)


def _fill(options: list[list[Plan]], budget: float) -> tuple[list[Plan], list[Plan], float]:
    """Weights in the order of their first option's bytes saved per byte of load memory, each
    taking its first option that still fits: (kept, left dense, bytes saved)."""
    kept, left, used = [], [], 0
    for opts in sorted(options, key=lambda o: -_ratio(o[0])):
        pick = next((o for o in opts if used + o.load <= budget), None)
        if pick is None:
            left.append(opts[0])
        else:
            kept.append(pick)
            used += pick.load
    return kept, left, sum(_saving(p) for p in kept)


def within_budget(plans: list[Plan], budget: float) -> tuple[list[Plan], list[Plan]]:
    """(kept, left dense) within ``budget`` bytes of decoder temporaries: each weight's smallest
    encoding first and a larger one that costs less to load when that does not fit; or each
    weight's encoding that saves the most bytes per byte of load memory (codebook8 for all rather
    than codebook4 for half): whichever saves more."""
    if sum(p.load for p in plans) <= budget:
        return list(plans), []
    options = [[p] + p.alternatives() for p in plans]  # each weight's encodings, smallest first
    smallest = _fill(options, budget)
    leanest = _fill([sorted(o, key=_ratio, reverse=True) for o in options], budget)
    kept, left, _ = max(smallest, leanest, key=lambda r: r[2])
    return kept, left
