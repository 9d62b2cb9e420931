"""The branch an ``If`` takes on every calibration sample, as main-graph layers for one pass.

The streaming engine sees main-graph tensors only, so layers inside ``If`` branches get no
calibration statistics (magnitude masks, plain k-means). silero-vad keeps its whole network in
the two branches of an ``If`` on its scalar sample rate: given 16 kHz data, every sample takes the
same branch. :func:`inline` puts a copy of that branch's nodes in the main graph, feeding the
``If``'s outputs through ``Identity`` nodes (the tensors the branch stores itself reach the copies
through an exact ``Neg(Neg(.))``, so no pass changes a copy that is dropped afterwards). The ``If``
stays with the other branch, never run (a constant condition picks an empty then-branch), so the
weights only that branch reads stay weights without statistics. :func:`restore` puts the original
``If`` back and takes the copies out. Only passes that change weight values and no nodes
(prune, cluster) run in between: their new values are initializers, which the branches read by
name once :func:`onnxcomp.graph.nested.hoist` has moved them to the main graph.
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnxcomp.graph.subgraph import elem_types

PREFIX = "onnxcomp_taken/"

Stash = list[tuple[str, onnx.NodeProto]]  # (the first output name of the If in place, the original If)
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _dead(k: int, node: onnx.NodeProto) -> str:
    return f"{PREFIX}dead/{k}/{node.output[0]}"


def _holder(node: onnx.NodeProto, k: int, other: onnx.GraphProto, kinds: list[int]) -> list[onnx.NodeProto]:
    """The If, never reaching ``other`` (the branch the data does not take): its condition is a
    constant true and its then-branch yields empty tensors, so no run executes ``other`` while its
    weights stay weights a body reads (no statistics: magnitude masks, plain k-means)."""
    cond = f"{PREFIX}{k}/true"
    empty = [helper.make_node("Constant", [], [f"{PREFIX}{k}/empty{j}"], name=f"{PREFIX}{k}/empty{j}",
                              value=helper.make_tensor(f"{PREFIX}{k}/empty{j}", kind, [0], []))
             for j, kind in enumerate(kinds)]
    trivial = helper.make_graph(empty, f"{PREFIX}{k}/never", [], [
        helper.make_tensor_value_info(e.output[0], kind, None) for e, kind in zip(empty, kinds)])
    dead = onnx.NodeProto()
    dead.CopyFrom(node)
    dead.input[0] = cond
    dead.output[:] = [_dead(k, node) if j == 0 else f"{PREFIX}dead/{k}/{o}" for j, o in enumerate(node.output)]
    for a in dead.attribute:
        if a.name in ("then_branch", "else_branch"):
            a.g.CopyFrom(trivial if a.name == "then_branch" else other)
    true = helper.make_tensor(cond, onnx.TensorProto.BOOL, [], [True])
    return [helper.make_node("Constant", [], [cond], name=cond, value=true), dead]


def _copy(node: onnx.NodeProto, name: str) -> list[onnx.NodeProto]:
    """A copy of a branch node for the main graph. A tensor the branch stores itself (a Constant)
    reaches its readers through Neg(Neg(.)) (the same values): not a weight a pass may change there,
    since the copy is dropped after the pass (the stored one stays as it was, as without data)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = name
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    if node.op_type != "Constant" or not node.output or value is None or value.data_type not in FLOATS:
        return [copy]
    out = node.output[0]
    copy.output[0] = f"{name}/stored"
    return [copy, *_negneg(copy.output[0], out, name)]


def _negneg(source: str, out: str, name: str | None = None) -> list[onnx.NodeProto]:
    """``out`` = Neg(Neg(``source``)): the same values, not a stored weight to the passes."""
    name = name or out
    return [helper.make_node("Neg", [source], [f"{name}/neg"], name=f"{name}/neg"),
            helper.make_node("Neg", [f"{name}/neg"], [out], name=f"{name}/neg2")]


def inline(model: onnx.ModelProto, taken: dict[str, bool], frozen: frozenset = frozenset()) -> Stash:
    """Put the branch each main-graph If takes (``taken[cond]``: then or else) in the main graph
    (in place); what :func:`restore` needs to undo it. ``frozen``: weights the passes leave alone
    where the branch reads them (through ops assembling them), read by the copies as stored ones."""
    g = model.graph
    stash: Stash = []
    nodes: list[onnx.NodeProto] = []
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    types: dict | None = None  # elem types from shape inference, when a branch leaves some out
    for k, n in enumerate(g.node):
        if n.op_type != "If" or n.input[0] not in taken:
            nodes.append(n)
            continue
        used = _branch(n, "then_branch" if taken[n.input[0]] else "else_branch")
        other = _branch(n, "else_branch" if taken[n.input[0]] else "then_branch")
        inner = {o for m in used.node for o in m.output} | {t.name for t in used.initializer}
        if not all(o.type.HasField("tensor_type") and o.type.tensor_type.elem_type for o in other.output) \
                and types is None:
            types = elem_types(model)
        kinds = [(o.type.tensor_type.elem_type if o.type.HasField("tensor_type") else 0) or types.get(out, 0)
                 for o, out in zip(other.output, n.output)]
        if inner & names or not all(kinds):
            nodes.append(n)  # a name both scopes define, or an output of unknown type: not inlined
            continue
        original = onnx.NodeProto()
        original.CopyFrom(n)
        nodes += _holder(n, k, other, kinds)
        for t in used.initializer:  # (as Constant nodes: a stored tensor, read as the branch reads it)
            nodes += _copy(helper.make_node("Constant", [], [t.name], value=t), f"{PREFIX}{k}/stored/{t.name}")
        kept = sorted({x for m in used.node for x in m.input if x in frozen})
        for x in kept:  # weights the passes leave alone where the branch reads them: the same here
            nodes += _negneg(x, f"{PREFIX}{k}/frozen/{x}")
        for j, m in enumerate(used.node):
            copies = _copy(m, f"{PREFIX}{k}/{m.name or j}")
            copies[0].input[:] = [f"{PREFIX}{k}/frozen/{x}" if x in kept else x for x in copies[0].input]
            nodes += copies
        nodes += [helper.make_node("Identity", [b.name], [o], name=f"{PREFIX}{k}/out{j}")
                  for j, (b, o) in enumerate(zip(used.output, n.output)) if o]
        stash.append((_dead(k, n), original))
    del g.node[:]
    g.node.extend(nodes)
    return stash


def restore(model: onnx.ModelProto, stash: Stash) -> None:
    """Undo :func:`inline` (in place): the original If nodes, no copies."""
    if not stash:
        return
    g = model.graph
    originals = dict(stash)
    nodes = []
    for n in g.node:
        if n.name.startswith(PREFIX):
            continue
        nodes.append(originals.get(n.output[0], n) if n.op_type == "If" and n.output else n)
    del g.node[:]
    g.node.extend(nodes)
