"""Rewriting what counts channels once the kept channels are known: the attribute or constant
input of a Split (sizes), Slice (bounds), Pad (amounts), Reshape (target), Resize (sizes) or a
depthwise conv (``group``), as the :class:`~onnxcomp.graph.channels.types.IndexEdit` records of the
op rules say."""
from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.io import default_opset
from onnxcomp.graph.channels.types import IndexEdit
from onnxcomp.graph.edit import ConstEval, get_attr


def apply_index_edit(model: onnx.ModelProto, e: IndexEdit, masks: list[np.ndarray], ev: ConstEval,
                     scope) -> None:
    """Rewrite the attribute / constant input of ``e.node`` that counts channels (a computed
    Reshape target: in a copy of its Concat, read by that Reshape alone)."""
    from onnxcomp.graph.edit import del_attr, set_attr, set_input

    node, opset = e.node, default_opset(model)
    base = node.name or node.op_type
    if e.kind == "group":
        set_attr(node, "group", int(masks[0].sum()))
    elif e.kind == "split":
        sizes = np.array([int(m.sum()) for m in masks], np.int64)
        if opset >= 13:
            del_attr(node, "num_outputs")
            set_input(model, node, 1, sizes, scope, f"{base}_split")
        else:
            set_attr(node, "split", [int(x) for x in sizes])
    elif e.kind == "slice":
        m, k = masks[0], e.info["k"]
        start = int(m[:e.info["start"]].sum())
        end = start + int(m[e.info["start"]:e.info["end"]].sum())
        if opset < 10:
            for name, v in (("starts", start), ("ends", end)):
                vals = list(get_attr(node, name))
                vals[k] = v
                set_attr(node, name, vals)
        else:
            for slot, v in ((1, start), (2, end)):
                vals = np.array(ev.value(node.input[slot])).reshape(-1).copy()
                vals[k] = v
                set_input(model, node, slot, vals, scope, f"{base}_{'starts' if slot == 1 else 'ends'}")
    elif e.kind == "reshape":
        if opset < 5:
            raise ValueError("Reshape-1 with a channel count in its attribute")
        owner, slot, copies = node, 1, []
        if e.info.get("computed"):  # a computed target: this Reshape reads copies of the nodes from
            producer = {o: n for n in model.graph.node for o in n.output}  # it down to the constant
            for nxt in e.info["path"]:
                copy = onnx.NodeProto()
                copy.CopyFrom(producer[owner.input[slot]])
                copy.name, copy.output[0] = scope(f"{base}_target"), scope(f"{base}_target")
                owner.input[slot] = copy.output[0]
                owner, slot = copy, nxt
                copies.append(copy)
        # a piece read at run time (a frozen tensor's width) becomes the constant [kept count]
        old = np.zeros(1, np.int64) if e.info.get("replace") else np.array(ev.value(owner.input[slot]))
        vals = old.reshape(-1).copy()
        vals[e.info["entry"]] = int(masks[0].sum()) * e.info["factor"]
        set_input(model, owner, slot, vals.reshape(old.shape), scope, f"{base}_shape")
        at = next(k for k, n in enumerate(model.graph.node) if n is node)
        for copy in copies:  # inserted as copies, before their reader (other nodes keep their identity)
            model.graph.node.insert(at, copy)
    elif e.kind in ("resize", "pad"):
        slot = 1 if e.kind == "pad" else e.info["slot"]
        old = get_attr(node, "pads") if e.kind == "pad" and opset < 11 else ev.value(node.input[slot])
        vals = np.array(old, np.int64).reshape(-1).copy()
        for m, at in zip(masks, (e.info["k"], e.info.get("n", 0) + e.info["k"])):
            vals[at] = int(m.sum())
        if e.kind == "pad" and opset < 11:
            set_attr(node, "pads", [int(v) for v in vals])
        else:
            set_input(model, node, slot, vals, scope, f"{base}_{'pads' if e.kind == 'pad' else 'sizes'}")
    else:
        raise ValueError(f"unknown index edit {e.kind}")
