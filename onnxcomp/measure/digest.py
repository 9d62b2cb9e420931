"""A fingerprint of a model and its calibration data: the key under which a measurement made on
them can be reused (``Context.memo``: auto's trials measure each sensitivity once)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx


def digest(model: onnx.ModelProto, data: Any = None) -> str:
    """BLAKE2b of the serialized model (lazy tensors read in) and of every calibration batch."""
    from onnxcomp.io import serialize

    h = hashlib.blake2b(digest_size=20)
    h.update(serialize(model))
    for batch in data if data is not None else ():
        for name in sorted(batch):
            value = np.ascontiguousarray(batch[name])
            h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
            h.update(value.view(np.uint8).reshape(-1) if value.size else b"")
    return h.hexdigest()
