"""Inputs whose samples are not on axis 0: a recurrent state ``state[2, batch, 128]``, a scalar
``sr`` read by every sample alike.

onnxcomp stacks, splits, counts and holds out samples on axis 0 of every input. A model whose
inputs put the batch elsewhere is run as a model that takes them samples-first: :func:`adapt`
gives such an input a samples-first type and puts a ``Transpose`` back to the model's layout in
front of its readers (a scalar becomes a vector of one value per sample, read by a ``Gather`` of
the first). The data layer reorders the user's arrays the same way (``data.sources``), so every
pass, statistic and comparison works unchanged; :func:`strip` takes the adapter out again before
the model is written. Outputs are left as they are (they are only compared element by element).
"""
from __future__ import annotations

import onnx
from onnx import helper

from onnxcomp.graph.nested import rename_reads
from onnxcomp.graph.shapes import input_specs

PREFIX = "onnxcomp_samples/"


def _static(d: object) -> bool:
    return isinstance(d, int) and d > 0


def sample_axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """The inputs whose samples are not on axis 0: ``{name: axis}``, None for a scalar (one value
    for every sample). When every input but the scalars names exactly one dim alike, that dim is
    the batch (``x[seq, batch, features]`` beside ``h0[1, batch, hidden]``). Else empty unless some
    input has a dynamic axis 0 (the batch): there, an input with a fixed axis 0 keeps its samples on
    the dynamic axis named like that batch, else on its first dynamic axis (an RNN's
    ``state[layers, batch, hidden]``)."""
    specs = {n: dims for n, (dims, _) in input_specs(model).items()}
    named = [{d for d in dims if isinstance(d, str)} for dims in specs.values() if dims]
    shared = set.intersection(*named) if named else set()
    if len(named) > 1 and len(shared) == 1:  # one dim name every input has: the batch (seq-first inputs too)
        batch = shared.pop()
        return {n: dims.index(batch) if dims else None for n, dims in specs.items()
                if not dims or dims.index(batch) != 0}
    batch = {dims[0] for dims in specs.values() if dims and not _static(dims[0])}
    if not batch:
        return {}  # a fixed batch everywhere (or no batch): samples on axis 0, as always
    out: dict[str, int | None] = {}
    for name, dims in specs.items():
        if not dims:
            out[name] = None
        elif _static(dims[0]):
            dynamic = [i for i, d in enumerate(dims) if not _static(d)]
            named = [i for i in dynamic if isinstance(dims[i], str) and dims[i] in batch]
            if named or dynamic:
                out[name] = (named or dynamic)[0]
    return out


def samples_first(dims: list | tuple, axis: int | None) -> list:
    """An input's dims with its sample axis moved to the front (a scalar: one sample axis)."""
    if axis is None:
        return [None]
    return [dims[axis], *dims[:axis], *dims[axis + 1:]]


def _produced(graph: onnx.GraphProto) -> set[str]:
    return {o for n in graph.node for o in n.output}


def adapt(model: onnx.ModelProto, axes: dict[str, int | None], *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` (a copy unless ``inplace``) taking the inputs in ``axes`` samples-first (see the
    module doc); inputs it already takes so are left alone, so adapting twice changes nothing."""
    out = model if inplace else onnx.ModelProto()
    if not inplace:
        out.CopyFrom(model)
    g, done, nodes = out.graph, _produced(out.graph), []
    for vi in g.input:
        if vi.name not in axes or PREFIX + vi.name in done:
            continue
        inner, axis = PREFIX + vi.name, axes[vi.name]
        rename_reads(g, vi.name, inner)
        shape = vi.type.tensor_type.shape
        dims = [onnx.TensorShapeProto.Dimension() for _ in range(1 if axis is None else len(shape.dim))]
        for d, src in zip(dims, samples_first(list(shape.dim), axis)):
            if src is None:
                d.dim_param = "samples"
            else:
                d.CopyFrom(src)
        del shape.dim[:]
        shape.dim.extend(dims)
        if axis is None:
            index = inner + "/first"
            nodes.append(helper.make_node("Constant", [], [index], name=index,
                                          value=helper.make_tensor(index, onnx.TensorProto.INT64, [], [0])))
            nodes.append(helper.make_node("Gather", [vi.name, index], [inner], name=inner, axis=0))
        else:
            perm = [*range(1, axis + 1), 0, *range(axis + 1, len(dims))]
            nodes.append(helper.make_node("Transpose", [vi.name], [inner], name=inner, perm=perm))
    if nodes:
        rest = list(g.node)
        del g.node[:]
        g.node.extend(nodes + rest)
    return out


def adapt_for(model: onnx.ModelProto, data: object, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` adapted to the inputs ``data`` holds samples-first (its ``layout``; a
    CalibrationData), or ``model`` itself when there are none."""
    layout = getattr(data, "layout", None)
    return adapt(model, layout, inplace=inplace) if layout else model


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Take :func:`adapt`'s adapter out of ``model`` (in place): the inputs get the model's own
    layout back and their readers read them directly."""
    g = model.graph
    adapters = [n for n in g.node if n.name.startswith(PREFIX)]
    if not adapters:
        return model
    inputs = {vi.name: vi for vi in g.input}
    for n in adapters:
        if n.op_type == "Constant":
            continue
        vi = inputs[n.input[0]]
        shape = vi.type.tensor_type.shape
        if n.op_type == "Gather":
            del shape.dim[:]
        else:
            perm = list(next(a.ints for a in n.attribute if a.name == "perm"))
            dims = [onnx.TensorShapeProto.Dimension() for _ in perm]
            for d, p in zip(dims, perm):
                d.CopyFrom(shape.dim[p])
            del shape.dim[:]
            shape.dim.extend(dims)
        rename_reads(g, n.output[0], n.input[0])
    names = {n.name for n in adapters}
    keep = [n for n in g.node if n.name not in names]
    del g.node[:]
    g.node.extend(keep)
    stale = {o for n in adapters for o in n.output}
    info = [vi for vi in g.value_info if vi.name not in stale]
    del g.value_info[:]
    g.value_info.extend(info)
    return model
