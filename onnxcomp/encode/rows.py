"""A per-channel codebook read by GatherElements: the [C, K] table laid along the weight's channel
axis and one other axis, so each element indexes its own channel's row with its plain code.

The alternative (one Gather over the flattened table at c*K + code) adds an int32 offset to every
index: a weight-sized temporary that onnxruntime keeps until its constant folding ends.
"""
from __future__ import annotations

import numpy as np

from onnxcomp.encode.base import Names, const, node
from onnxcomp.encode.tables import Table


def gather_axis(shape: tuple[int, ...], axis: int, width: int) -> int | None:
    """The axis (not the channel ``axis``) along which GatherElements reads a per-channel table
    spread over the other axes, when that spread table is at most a quarter of the weight."""
    others = [a for a in range(len(shape)) if a != axis]
    g = max(others, key=lambda a: shape[a], default=None)
    return g if g is not None and shape[g] >= 4 * width else None


def gather_rows(table: str, t: Table, shape: tuple[int, ...], axis: int, g: int, fresh: Names, name: str,
                out: str, idx: str, inits: list, nodes: list) -> None:
    """``out`` = GatherElements along ``g`` of the [C, K] table laid along (``axis``, ``g``) and
    expanded over the other axes: each element reads its own channel's row, so no int32 offset is
    added to the index (a weight-sized temporary onnxruntime keeps while it folds the decoder)."""
    c, k = t.layout.channels, t.width
    dims = [1] * len(shape)
    dims[axis], dims[g] = c, k
    full = list(shape)
    full[g] = k
    rows = fresh(f"{name}_rows")
    nodes.append(node("Reshape", [table, const(fresh, f"{name}_ck", np.array([c, k], np.int64), inits)], rows))
    if g < axis:
        turned = fresh(f"{name}_kc")
        nodes.append(node("Transpose", [rows], turned, perm=[1, 0]))
        rows = turned
    laid, spread = fresh(f"{name}_laid"), fresh(f"{name}_spread")
    nodes += [node("Reshape", [rows, const(fresh, f"{name}_dims", np.array(dims, np.int64), inits)], laid),
              node("Expand", [laid, const(fresh, f"{name}_full", np.array(full, np.int64), inits)], spread),
              node("GatherElements", [spread, idx], out, axis=g)]
