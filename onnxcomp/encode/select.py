"""Choose, per weight, the smallest standard-ONNX encoding of its final values, and install it.

Passes only change values (zeros from pruning, shared values from clustering); this stage looks
at what each weight became and writes it in the smallest encoding that onnxruntime folds
bit-exactly, or leaves it dense when nothing is smaller. The opset is raised only when an
encoding needs it and every op in the graph means the same at the new opset.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxcomp.errors import ConfigError
from onnxcomp.graph.weights import find_weights
from onnxcomp.io import default_opset
from onnxcomp.encode.base import Encoding
from onnxcomp.encode.budget import (Plan, describe, every_plan, load_budget, load_bytes, shared_tables,
                                    weighed, within_budget)
from onnxcomp.graph.edit import NameScope
from onnxcomp.encode.common import can_raise_opset, install_decoder, raise_opset
from onnxcomp.encode.sparse import Bitmask, Gaps, Zeros
from onnxcomp.encode.tables import Layout

if TYPE_CHECKING:
    from onnxcomp.measure.loadpeak import Loads

REGISTRY: dict[str, Encoding] = {e.kind: e for e in (Zeros(), Gaps(), Bitmask())}
FAMILIES: dict[str, tuple[str, ...]] = {"sparse": ("zeros", "gaps", "bitmask")}
# onnxruntime keeps every temporary of its constant folding until the pass ends, so a model's load
# peak grows with the decoders' per-weight temporaries: on effnet_lite0 about 200 bytes per weight
# with the variable-length code's bit-level prefix sums, 50 with the fixed-width codes, 15 with
# codebook8 (`onnxcomp bench`, README "Load memory"). --encoding fixed leaves the variable-length
# code out.
VARIABLE_LENGTH = ("codebook_vlc", "sparse_codebook_vlc")
MIN_SAVING = 0.02  # an encoding must save at least 2 % of the dense bytes to be worth a decoder


def register(encoding: Encoding, family: str | None = None) -> None:
    """Make an encoding available to ``encode_weights`` (and optionally to a family name)."""
    REGISTRY[encoding.kind] = encoding
    if family:
        FAMILIES[family] = tuple(dict.fromkeys(FAMILIES.get(family, ()) + (encoding.kind,)))


# onnxruntime's load peak per weight it decodes (its constant folding keeps every temporary until
# the pass ends): the bit-level prefix sums of the variable-length code and the MatMul unpacking of
# codebook_packed cost 50-200 bytes per weight, the byte-aligned decoders about 15. The default
# (auto) keeps to the latter, so a compressed model loads within about 2x the fp32 model's memory;
# "smallest" allows everything (the smallest files; load memory up to ~16x on effnet_lite0).
LEAN = ("zeros", "gaps", "bitmask", "codebook8", "codebook4", "sparse_codebook4", "sparse_codebook8")


def allowed_kinds(encoding: str) -> tuple[str, ...]:
    """The encodings an --encoding value allows ('auto' = the lean ones, 'smallest' = all, 'dense' = none)."""
    if encoding == "auto":
        return tuple(k for k in LEAN if k in REGISTRY)
    if encoding == "smallest":
        return tuple(REGISTRY)
    if encoding == "dense":
        return ()
    if encoding in FAMILIES:
        return FAMILIES[encoding]
    if encoding in REGISTRY:
        return (encoding,)
    choices = ["auto", "smallest", "dense", *FAMILIES, *REGISTRY]
    raise ConfigError(f"--encoding {encoding!r} is unknown", f"choose one of: {', '.join(choices)}")


@dataclass
class EncodeChoice:
    """How one weight is stored: encoding kind and bytes before/after."""

    name: str
    kind: str
    dense_bytes: int
    bytes: int
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def bound(enc: Encoding, layout: Layout | None) -> Encoding:
    """The encoding told the weight's channel layout (codebook encodings use per-channel tables)."""
    return enc.with_layout(layout) if layout is not None and hasattr(enc, "with_layout") else enc


def ranked_encodings(flat: np.ndarray, kinds: tuple[str, ...], opset_ok, layout: Layout | None = None,
                     paid: set[str] | None = None) -> list[tuple[str, int]]:
    """(kind, bytes) of every applicable encoding among ``kinds`` that beats dense, smallest first;
    an encoding's shared tables count until ``paid`` says they are stored already."""
    dense = flat.size * flat.dtype.itemsize
    out = []
    for kind in kinds:
        enc = bound(REGISTRY[kind], layout)
        if not opset_ok(enc.min_opset):
            continue
        size = enc.size(flat)
        if size is not None and paid is not None and kind not in paid:
            size += getattr(enc, "shared_bytes", 0)
        if size is not None and size < dense * (1 - MIN_SAVING):
            out.append((kind, size))
    return sorted(out, key=lambda ks: ks[1])


def best_encoding(flat: np.ndarray, kinds: tuple[str, ...], opset_ok,
                  layout: Layout | None = None, paid: set[str] | None = None) -> tuple[str, int]:
    """The smallest applicable encoding among ``kinds`` ('dense' when none beats dense)."""
    ranked = ranked_encodings(flat, kinds, opset_ok, layout, paid)
    return ranked[0] if ranked else ("dense", flat.size * flat.dtype.itemsize)


def encode_weights(model: onnx.ModelProto, names: set[str] | None = None, encoding: str = "auto",
                   kinds_for: tuple[str, ...] | None = None,
                   reference: onnx.ModelProto | None = None,
                   reference_loads: Loads | None = None) -> list[EncodeChoice]:
    """Re-store each selected weight in its smallest encoding (in place); one row per weight.

    ``auto`` keeps the decoders' load memory within budget (:mod:`onnxcomp.encode.budget`): the
    weights past it take a cheaper encoding or stay dense; the budget is set against
    ``reference``'s load peak (the model the compression started from) or, when None, the model's
    own as it is (``reference_loads``: a load of its file already under way, a
    :class:`onnxcomp.measure.loadpeak.Loads`). ``kinds_for``: encode the integer weights of a QDQ model instead
    (:func:`quantized_weights`), with these encodings only (tables of their own integer values,
    see :data:`INTEGER_KINDS`)."""
    allowed = kinds = allowed_kinds(encoding)
    fresh = NameScope(model, short=True)
    choices: list[EncodeChoice] = []
    blocked: set[int] = set()
    plans: list[Plan] = []
    paid: set[str] = set()
    known: dict = {}
    modeled = 0

    def opset_ok(needed: int) -> bool:
        if default_opset(model) >= needed:
            return True
        if needed in blocked:
            return False
        if can_raise_opset(model, needed):
            return True
        blocked.add(needed)
        return False

    for w in (find_weights(model, nested=True).weights if kinds_for is None else quantized_weights(model)):
        if names is not None and w.name not in names:
            continue
        if w.source not in ("initializer", "constant") or w.size == 0:
            continue
        kinds = allowed if kinds_for is None else tuple(k for k in allowed if k in kinds_for)
        flat = w.values().reshape(-1)
        layout = Layout.of(w.shape, w.out_axis)
        ranked = ranked_encodings(flat, kinds, opset_ok, layout, paid)
        if not ranked:
            reason = None
            if kinds and any(default_opset(model) < REGISTRY[k].min_opset for k in kinds) and blocked:
                reason = f"opset {default_opset(model)} cannot be raised safely for a smaller encoding"
            choices.append(EncodeChoice(w.name, "dense", w.nbytes, w.nbytes, reason))
            continue
        choices.append(EncodeChoice(w.name, ranked[0][0], w.nbytes, ranked[0][1]))
        paid.add(ranked[0][0])

        def make(kind: str, size: int, w=w, layout=layout, flat: np.ndarray | None = None) -> Plan:
            enc = bound(REGISTRY[kind], layout)
            if hasattr(enc, "at_opset"):  # the decoder may use what the model's opset has
                enc = enc.at_opset(default_opset(model))
            values = flat if flat is not None else w.values().reshape(-1)  # (alternatives: read again,
            plan = Plan(w, kind, size, *enc.build(values, w.stored_shape or w.shape, w.name, fresh),  # not kept)
                        min_opset=enc.min_opset)
            describe(plan.inits, known)
            plan.load = load_bytes(plan, known, max(default_opset(model), enc.min_opset))
            return plan

        plan = make(*ranked[0], flat=flat)
        plan.others = ranked[1:]
        modeled += plan.load
        if encoding == "auto" and weighed(modeled):  # the budget is measured and weighs them: built
            plan.make = partial(make, flat=flat)  # from the values and tables in hand, not read again
            plan.alternatives()
        plan.make = make
        plans.append(plan)
    if encoding == "auto":
        kept, over = within_budget(plans, load_budget(model, plans, reference, reference_loads))
    else:
        kept, over = plans, []
    order = {p.weight.name: i for i, p in enumerate(plans)}
    for plan in sorted(kept, key=lambda p: order[p.weight.name]):
        raise_opset(model, plan.min_opset)
        install_decoder(model, plan.weight, plan.nodes, plan.inits)
    model.graph.initializer.extend(shared_tables(kept, every_plan(plans)))
    rows = {c.name: c for c in choices}
    for plan in kept:
        rows[plan.weight.name] = EncodeChoice(plan.weight.name, plan.kind, plan.weight.nbytes, plan.size)
    for plan in over:
        rows[plan.weight.name] = EncodeChoice(plan.weight.name, "dense", plan.weight.nbytes, plan.weight.nbytes,
                                              f"{LOAD_MEMORY_REASON} ({plan.kind} would need {plan.load / 1e6:.1f} MB)")
    return [rows[c.name] for c in choices]


LOAD_MEMORY_REASON = "kept dense: onnxruntime's load memory"


# encodings whose decoders only index a table of the stored values: bit-exact for int8/uint8 too.
# onnxruntime folds them at load and still fuses the DequantizeLinear into QLinearConv / QLinearMatMul
INTEGER_KINDS = ("codebook4", "codebook8", "codebook_uint4", "codebook_packed", "zeros", "gaps", "bitmask",
                 "sparse_codebook4", "sparse_codebook8")


def quantized_weights(model: onnx.ModelProto, min_size: int = 1024) -> list:
    """The 8-bit integer initializers that only DequantizeLinear reads (input 0): a QDQ model's
    weights, as :class:`Weight` rows whose channel axis is the dequantization's per-channel axis."""
    from onnxcomp.graph.weights import Use, Weight

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in inits:
                readers.setdefault(x, []).append((n, i))
    out = []
    for name, uses in readers.items():
        t = inits[name]
        if t.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) or len(t.dims) < 2 \
                or int(np.prod(t.dims)) < min_size:
            continue
        if not all(n.op_type == "DequantizeLinear" and i == 0 for n, i in uses):
            continue
        dq = uses[0][0]
        scale = inits.get(dq.input[1]) if len(dq.input) > 1 else None
        per_channel = scale is not None and int(np.prod(scale.dims)) > 1
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % len(t.dims) if per_channel else None
        shape = tuple(int(d) for d in t.dims)
        out.append(Weight(name=name, source="initializer", shape=shape,
                          dtype=np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)), role="dequantize",
                          out_axis=axis, in_axis=None, uses=[Use(dq, 0, "dequantize")], holder=t,
                          stored_shape=shape))
    return out


def _register_codebooks() -> None:
    from onnxcomp.encode.bitpack import ENCODINGS as packed
    from onnxcomp.encode.codebook import ENCODINGS as codebook
    from onnxcomp.encode.combined import ENCODINGS as combined
    from onnxcomp.encode.sparse_vlc import ENCODINGS as sparse_vlc
    from onnxcomp.encode.vlc import ENCODINGS as vlc

    for enc in codebook + packed + vlc:
        register(enc, "codebook")
    for enc in combined + sparse_vlc:
        register(enc, "combined")
    FAMILIES["fixed"] = tuple(k for k in REGISTRY if k not in VARIABLE_LENGTH)


_register_codebooks()
