"""Channel padding (a Pad on the channel axis): TFLite-derived models (MediaPipe's BlazeFace, palm
and pose detectors) widen each residual skip with zero channels to the block's new width. The
padded channels are removed with the channels they are added to, and the Pad's amounts follow.
Before, the Pad froze every channel it saw, and through the residual stream every group of the
model (BlazeFace: 0 of 20 groups prunable)."""
import numpy as np
import onnx
import pytest
from onnx import helper

import onnxcomp as oc
from onnxcomp.graph.channels.groups import analyze, apply_removal

from . import models as M
from .test_channels import check_exact, run


def _pad(name: str, x: str, y: str, before: int, after: int, opset: int, mode: str = "constant"):
    pads = [0, before, 0, 0, 0, after, 0, 0]
    if opset < 11:
        return [helper.make_node("Pad", [x], [y], name=name, pads=pads, mode=mode)], []
    return ([helper.make_node("Pad", [x, f"{name}_pads"], [y], name=name, mode=mode)],
            [M.init(f"{name}_pads", np.array(pads, np.int64))])


def blaze(opset: int = 17, mode: str = "constant", seed: int = 0) -> onnx.ModelProto:
    """conv0 (3->8), then two residual blocks whose skips are padded to 12 and 16 channels
    (one padded on both sides), a conv read only through a padded tensor, and a classifier."""
    r = np.random.default_rng(seed)
    parts = [M._ch_conv("conv0", "x", "c0", 3, 8, r), ([helper.make_node("Relu", ["c0"], ["r0"], name="relu0")], []),
             M._ch_conv("conv1", "r0", "c1", 8, 12, r), _pad("pad1", "r0", "p1", 0, 4, opset, mode),
             ([helper.make_node("Add", ["p1", "c1"], ["s1"], name="add1"),
               helper.make_node("Relu", ["s1"], ["r1"], name="relu1")], []),
             M._ch_conv("conv2", "r1", "c2", 12, 16, r), _pad("pad2", "r1", "p2", 1, 3, opset, mode),
             ([helper.make_node("Add", ["c2", "p2"], ["s2"], name="add2"),
               helper.make_node("Relu", ["s2"], ["r2"], name="relu2")], []),
             _pad("pad3", "r2", "p3", 2, 0, opset, mode), M._ch_conv("conv3", "p3", "c3", 18, 8, r, k=1),
             ([helper.make_node("Relu", ["c3"], ["r3"], name="relu3")], []),
             M._ch_head("r3", 8, r)]
    return M._ch_build(parts, [M.vi("x", ["N", 3, 8, 8])], [M.vi("y", ["N", 5])], opset=opset)


@pytest.mark.parametrize("opset", [10, 17])
def test_padded_residual_stream_is_one_prunable_group(opset):
    cg = analyze(blaze(opset))
    trunk = next(g for g in cg.groups if "conv0" in g.names)
    assert sorted(trunk.names) == ["conv0", "conv1", "conv2"] and not trunk.frozen
    assert trunk.size == 16  # every position of the widest stream, padded ones included
    for seed in range(3):  # removal equals the original with those channels ignored
        check_exact(blaze(opset), seed=seed)


def _pads(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Channel pads (before, after) of every Pad node."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Pad":
            v = [list(a.ints) for a in n.attribute if a.name == "pads"][0] if len(n.input) < 2 else inits[n.input[1]]
            out[n.name] = (int(v[1]), int(v[5]))
    return out


@pytest.mark.parametrize("opset", [10, 17])
def test_pad_amounts_follow_the_kept_channels(opset):
    model = blaze(opset)
    cg = analyze(model)
    trunk = next(g for g in cg.groups if "conv0" in g.names)
    widest = cg.layouts["s2"].ids  # the 16 positions of the second block's stream
    keep = np.ones(cg.n_ids, bool)
    for pos in (0, 2, 9, 10, 14):  # a channel pad2 adds before, conv0's, pad1's two, one pad2 adds after
        keep[trunk.units[next(u for u, ids in enumerate(trunk.units) if widest[pos] in ids)]] = False
    apply_removal(model, cg, keep)
    onnx.checker.check_model(model, full_check=True)
    y = run(model, np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32))
    assert y.shape == (2, 5) and np.isfinite(y).all()
    assert _pads(model) == {"pad1": (0, 2), "pad2": (0, 2), "pad3": (2, 0)}


def test_copied_channels_still_freeze():
    cg = analyze(blaze(mode="edge"))
    trunk = next(g for g in cg.groups if "conv0" in g.names)
    assert any("pads the channel axis with copies" in r for r in trunk.frozen)


def test_structured_pruning_cuts_a_padded_residual_model():
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    res = oc.prune_channels(blaze(), 0.5, data={"x": x}, importance="l1", allocation="uniform", round_to=1)
    s = res.results[0].settings
    assert s["macs_after"] < 0.75 * s["macs_before"]
    trunk = next(g for g in res.results[0].groups if "conv0" in g["producers"])
    assert trunk["status"] == "pruned" and trunk["kept"] == 8
    # every stage of the stream loses half its channels (8, 12, 16 -> 4, 6, 8), not the 8 units the
    # scores rank last wherever they are: the stream narrows alike and the MACs follow the ratio
    inits = {t.name: t for t in res.proto.graph.initializer}
    width = {n.name: inits[n.input[1]].dims[0] for n in res.proto.graph.node if n.op_type == "Conv"}
    assert (width["conv0"], width["conv1"], width["conv2"]) == (4, 6, 8)
    y = run(res.proto, x[:2])
    assert y.shape == (2, 5) and np.isfinite(y).all()
