"""A constant operand of a two-input Einsum that acts as a matrix weight.

``bi,io->bo`` (or ``bsi,oi->bso``, ``bsd,dnh->bsnh``, per head ``bhld,hde->bhle``) multiplies the
activations by a matrix: some subscripts of the constant are summed over against the other operand
(its reduction), others are kept in the output (its output channels). Such an operand is a weight
to the passes that change values only (prune, cluster); other Einsum operands are not weights.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.graph.constants import FLOAT_TYPES

ROLE = "einsum_b"


def equation(node: onnx.NodeProto) -> str:
    """The node's equation, spaces removed ('' when it has none)."""
    for a in node.attribute:
        if a.name == "equation":
            return (a.s.decode() if isinstance(a.s, bytes) else str(a.s)).replace(" ", "")
    return ""


def roles(node: onnx.NodeProto) -> list[tuple[int, str, int, int]]:
    """(input index, role, out_axis, in_axis) of each operand of ``node`` that is a matrix weight
    by its equation: two operands, an explicit output, no ellipsis, no repeated subscript; each of
    the operand's subscripts is summed against the other operand (the reduction: ``in_axis`` the
    last), kept in the output (the output channels: ``out_axis`` the first), or shared by both and
    the output (a matrix per head: 'bhld,hde->bhle'); at least one summed and one kept."""
    eq = equation(node)
    if len(node.input) != 2 or "->" not in eq or "." in eq:
        return []
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in (*terms, out)):
        return []
    found = []
    for index, (mine, other) in enumerate((terms, terms[::-1])):
        summed = [i for i, s in enumerate(mine) if s in other and s not in out]
        kept = [i for i, s in enumerate(mine) if s not in other and s in out]
        batch = [s for s in mine if s in other and s in out]  # one matrix per value, e.g. per head
        if summed and kept and len(summed) + len(kept) + len(batch) == len(mine):
            found.append((index, ROLE, kept[0], summed[-1]))
    return found


def activation(node: onnx.NodeProto, index: int) -> str | None:
    """The other operand of a matrix weight in slot ``index`` when the product is a MatMul over its
    last axis (``bsi,io->bso``): the input its statistics are taken on; None otherwise."""
    if not any(i == index for i, *_ in roles(node)):
        return None
    terms = equation(node).split("->")[0].split(",")
    mine, other = terms[index], terms[1 - index]
    if len(mine) != 2:
        return None  # per-head matrices or several summed axes: no statistics of one input matrix here
    summed, out = next(s for s in mine if s in other), equation(node).split("->")[1]
    rows = all(s in out for s in other if s != summed)  # each of its vectors is one product, none summed
    return node.input[1 - index] if rows and other.endswith(summed) and node.input[1 - index] else None


def _sizes(term: str, shape: tuple) -> dict[str, int]:
    pre, _, post = term.partition("...")
    if "..." not in term and len(term) != len(shape) or len(pre) + len(post) > len(shape):
        return {}
    return {**dict(zip(pre, shape)), **dict(zip(post, shape[len(shape) - len(post):]))}


def macs(node: onnx.NodeProto, shapes: dict[str, tuple]) -> int | None:
    """Multiply-accumulates: each output element sums over the subscripts missing from the output
    (None when a shape is unknown)."""
    if len(node.input) < 2:
        return 0  # a transpose, trace or sum of one operand: no products
    eq = equation(node)
    out = shapes.get(node.output[0]) if node.output else None
    if not eq or out is None or not all(isinstance(d, int) and d > 0 for d in out):
        return None
    lhs, _, right = eq.partition("->")
    if "->" not in eq:  # implicit output: the subscripts that appear once
        letters = lhs.replace("...", "").replace(",", "")
        right = "".join(sorted(s for s in set(letters) if letters.count(s) == 1))
    sizes: dict[str, int] = {}
    for term, name in zip(lhs.split(","), node.input):
        shape = shapes.get(name)
        if shape is not None and all(isinstance(d, int) and d > 0 for d in shape):
            sizes.update(_sizes(term, tuple(shape)))
    summed = {s for s in lhs.replace("...", "").replace(",", "") if s not in right}
    if not summed <= sizes.keys():
        return None
    total = 1
    for s in summed:
        total *= sizes[s]
    return int(np.prod(out, dtype=np.int64)) * total


def note_operands(graph: onnx.GraphProto, consts, found: dict, skipped: dict[str, str]) -> None:
    """A skip reason for each constant float operand (2+ dims) of an Einsum that is not a matrix
    weight (``bsd,dk->bs``: k summed on its own): no pass changes it, and the user is told so."""
    for node in graph.node:
        if node.op_type != "Einsum":
            continue
        slots = {i for i, *_ in roles(node)}
        for index, name in enumerate(node.input):
            hit = consts.resolve(name) if name and index not in slots else None
            if hit is not None and hit[0] not in found and len(hit[3]) >= 2 and hit[4] in FLOAT_TYPES:
                skipped.setdefault(hit[0], f"an Einsum operand ({equation(node)}) that is not one matrix "
                                           "product; left alone")
