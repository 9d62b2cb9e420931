"""Choose, per weight, the smallest standard-ONNX encoding of its final values, and install it.

Passes only change values (zeros from pruning, shared values from clustering); this stage looks
at what each weight became and writes it in the smallest encoding that onnxruntime folds
bit-exactly, or leaves it dense when nothing is smaller. The opset is raised only when an
encoding needs it and every op in the graph means the same at the new opset.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from onnxcomp.errors import ConfigError
from onnxcomp.graph.weights import find_weights
from onnxcomp.io import default_opset
from onnxcomp.encode.base import Encoding
from onnxcomp.graph.edit import NameScope
from onnxcomp.encode.common import can_raise_opset, install_decoder, raise_opset
from onnxcomp.encode.sparse import Bitmask, Gaps, Zeros
from onnxcomp.encode.tables import Layout

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


def best_encoding(flat: np.ndarray, kinds: tuple[str, ...], opset_ok,
                  layout: Layout | None = None) -> tuple[str, int]:
    """The smallest applicable encoding among ``kinds`` ('dense' when none beats dense)."""
    dense = flat.size * flat.dtype.itemsize
    best, best_size = "dense", dense
    for kind in kinds:
        enc = bound(REGISTRY[kind], layout)
        if not opset_ok(enc.min_opset):
            continue
        size = enc.size(flat)
        if size is not None and size < best_size and size < dense * (1 - MIN_SAVING):
            best, best_size = kind, size
    return best, best_size


def encode_weights(model: onnx.ModelProto, names: set[str] | None = None,
                   encoding: str = "auto") -> list[EncodeChoice]:
    """Re-store each selected weight in its smallest encoding (in place); one row per weight."""
    kinds = allowed_kinds(encoding)
    fresh = NameScope(model, short=True)
    choices: list[EncodeChoice] = []
    blocked: set[int] = set()

    def opset_ok(needed: int) -> bool:
        if default_opset(model) >= needed:
            return True
        if needed in blocked:
            return False
        if can_raise_opset(model, needed):
            return True
        blocked.add(needed)
        return False

    for w in find_weights(model):
        if names is not None and w.name not in names:
            continue
        if w.source not in ("initializer", "constant") or w.size == 0:
            continue
        flat = w.values().reshape(-1)
        layout = Layout.of(w.shape, w.out_axis)
        kind, size = best_encoding(flat, kinds, opset_ok, layout)
        reason = None
        if kind != "dense":
            enc = bound(REGISTRY[kind], layout)
            raise_opset(model, enc.min_opset)
            nodes, inits = enc.build(flat, w.stored_shape or w.shape, w.name, fresh)
            install_decoder(model, w, nodes, inits)
        elif kinds and any(default_opset(model) < REGISTRY[k].min_opset for k in kinds) and blocked:
            reason = f"opset {default_opset(model)} cannot be raised safely for a smaller encoding"
        choices.append(EncodeChoice(w.name, kind, w.nbytes, size, reason))
    return choices


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
