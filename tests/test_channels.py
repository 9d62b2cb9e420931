"""Coupled-channel groups: discovery on fixtures, zoo and real models; removal is exact.

Exactness check used throughout: removing a set of channels must give the same outputs as the
original model in which every consumer simply ignores those channels (their input columns zeroed).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxcomp.graph.channels.types import FIXED, kept_mask
from onnxcomp.graph.channels.groups import analyze, apply_removal
from onnxcomp.graph.edit import ConstEval

from . import models as M


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {data_input(model).name: x})[0]


def random_input(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> np.ndarray:
    dims = [d.dim_value or batch for d in data_input(model).type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def drop_half(cg, seed: int = 0) -> np.ndarray:
    """Remove a random half of the units of every prunable group (at least one unit kept)."""
    keep = np.ones(cg.n_ids, bool)
    r = np.random.default_rng(seed)
    for g in cg.groups:
        if g.frozen or g.size < 2:
            continue
        for u in r.permutation(g.size)[: g.size // 2]:
            keep[g.units[u]] = False
    return keep


def zeroed_reference(model: onnx.ModelProto, cg, keep: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose consumers read zeros instead of the removed channels."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    ev = ConstEval(model)
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    for c in cg.consumers:
        w = ev.value(c.node.input[1]).copy()
        sl = [slice(None)] * w.ndim
        sl[c.axis] = ~kept_mask(keep, c.ids)
        w[tuple(sl)] = 0
        node = ref.graph.node[index[id(c.node)]]
        name = f"{node.input[1]}__zeroed{index[id(c.node)]}"
        ref.graph.initializer.append(numpy_helper.from_array(w, name))
        node.input[1] = name
    return ref


def check_exact(model: onnx.ModelProto, seed: int = 0, atol: float = 1e-4) -> tuple:
    cg = analyze(model)
    keep = drop_half(cg, seed)
    ref = zeroed_reference(model, cg, keep)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    apply_removal(pruned, analyze(pruned), keep)
    onnx.checker.check_model(pruned)
    x = random_input(model)
    np.testing.assert_allclose(run(pruned, x), run(ref, x), atol=atol, rtol=1e-4)
    return cg, pruned


FIXTURES = [M.chan_residual, M.chan_concat, M.chan_split, M.chan_depthwise, M.chan_se, M.chan_mlp,
            M.conv_bn_relu, M.classifier]


@pytest.mark.parametrize("build", FIXTURES, ids=lambda f: f.__name__)
def test_removal_is_exact_on_fixtures(build):
    cg, pruned = check_exact(build())
    assert sum(not g.frozen for g in cg.groups) >= 1
    assert len(pruned.graph.node) > 0


def test_residual_add_ties_both_branches():
    cg = analyze(M.chan_residual())
    by_name = {tuple(sorted(g.names)): g for g in cg.groups}
    assert ("conv0", "conv2") in by_name and by_name[("conv0", "conv2")].size == 16
    assert by_name[("conv1",)].size == 8 and not by_name[("conv1",)].frozen
    assert by_name[("fc",)].frozen == ["graph output y"]


def test_concat_split_slice_map_offsets():
    cg = analyze(M.chan_split())
    names = {tuple(sorted(g.names)) for g in cg.groups}
    assert ("convl", "convr") in names  # the Add after the split ties the two branches
    assert ("conv0",) in names and ("conv1",) in names
    assert {e.kind for e in cg.edits} >= {"split", "slice"}
    pruned = onnx.ModelProto()
    pruned.CopyFrom(M.chan_split())
    cg2 = analyze(pruned)
    keep = np.ones(cg2.n_ids, bool)
    conv0 = next(g for g in cg2.groups if g.names == ["conv0"])
    for u in (0, 1, 2, 9):  # 3 channels from the first split half, 1 from the second
        keep[conv0.units[u]] = False
    apply_removal(pruned, cg2, keep)
    sizes = next(t for t in pruned.graph.initializer if t.name.startswith("split_split"))
    assert numpy_helper.to_array(sizes).tolist() == [5, 7]


def test_se_block_ties_gate_to_trunk_and_bottleneck_is_own_group():
    cg = analyze(M.chan_se())
    names = {tuple(sorted(g.names)): g for g in cg.groups}
    assert ("conv0", "se2") in names  # the SE Mul ties the gate channels to the trunk
    assert ("se1",) in names and names[("se1",)].size == 8
    _, pruned = check_exact(M.chan_se())
    assert any(n.op_type == "HardSigmoid" for n in pruned.graph.node)


def test_depthwise_group_follows_its_input():
    _, pruned = check_exact(M.chan_depthwise())
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    group = next(a.i for a in dw.attribute if a.name == "group")
    assert group == 8


def test_flatten_maps_each_channel_to_hw_gemm_inputs():
    cg = analyze(M.chan_mlp())
    fc1 = next(c for c in cg.consumers if c.node.name == "fc1")
    conv0 = next(p for p in cg.producers if p.node.name == "conv0")
    assert len(fc1.ids) == 128 and np.array_equal(fc1.ids, np.repeat(conv0.ids, 16))


def test_channel_shuffle_freezes_with_reason():
    cg = analyze(M.chan_shuffle())
    g = next(g for g in cg.groups if g.names == ["conv0"])
    assert g.frozen and "Reshape shuffle_" in g.frozen[0] and "channel shuffle" in g.frozen[0]
    check_exact(M.chan_shuffle())  # the other groups still prune


def test_fixed_channels_freeze_what_they_are_added_to():
    m = M.make([onnx.helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                onnx.helper.make_node("Add", ["c", "x"], ["s"], name="add_input"),
                onnx.helper.make_node("Conv", ["s", "w"], ["y"], name="conv2")],
               [M.vi("x", [1, 4, 5, 5])], [M.vi("y", [1, 4, 5, 5])],
               [M.init("w", np.ones((4, 4, 1, 1), np.float32))])
    cg = analyze(m)
    g = next(g for g in cg.groups if g.names == ["conv"])
    assert g.frozen and "Add add_input" in g.frozen[0]
    assert FIXED == -1


def test_real_models_groups():
    resnet = analyze(onnx.load(M.MODELS / "resnet_digits.onnx"))
    assert sum(not g.frozen for g in resnet.groups) == 9  # 3 residual streams + 6 block-internal
    mobile = analyze(onnx.load(M.MODELS / "mobilenet_digits.onnx"))
    assert sum(not g.frozen for g in mobile.groups) == 7


def test_transformer_heads_and_ffn_neurons_are_groups():
    """vit_digits: each block's Q/K/V projections form one group whose units are whole heads (the
    out projection reads them), each FFN hidden layer one group of neurons."""
    cg = analyze(onnx.load(M.MODELS / "vit_digits.onnx"))
    live = [g for g in cg.groups if not g.frozen]
    heads = [g for g in live if len(g.producers) == 3]
    assert len(heads) == 4 and all(g.size == 8 and len(g.units[0]) == 3 * 32 for g in heads)
    assert sum(g.size == 1024 and len(g.units[0]) == 1 for g in live) == 4


@pytest.mark.parametrize("name", ["vit_sdpa_digits.onnx", "vit_sdpa_digits_dynamo.onnx", "vit_mha_digits.onnx",
                                  "vit_mha_digits_dynamo.onnx"])
def test_heads_split_by_shapes_read_at_run_time_are_groups(name):
    """transformers-style attention (heads split by ``view(*x.shape[:-1], -1, d)``, SDPA, both
    exporters) and nn.MultiheadAttention (one fused projection cut into Q, K, V by Gathers, heads
    folded with the batch; the legacy export also sizes Q, K and V by the input's width read at
    run time): each block's Q/K/V form one group of whole heads."""
    cg = analyze(onnx.load(M.MODELS / name))
    heads = [g for g in cg.groups if g.size == 4]
    assert len(heads) == 2 and all(not g.frozen and len(g.units[0]) == 3 * 32 for g in heads)


def test_channel_count_read_into_other_ops_freezes():
    """A Shape whose channel entry feeds anything but a Reshape target (here ConstantOfShape)
    would go stale after pruning: the group freezes and says why."""
    w = np.ones((4, 4), np.float32)
    m = M.make([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
                onnx.helper.make_node("Shape", ["y"], ["s"], name="shape"),
                onnx.helper.make_node("ConstantOfShape", ["s"], ["ones"], name="ones",
                                      value=numpy_helper.from_array(np.ones(1, np.float32))),
                onnx.helper.make_node("Mul", ["y", "ones"], ["z"], name="mul"),
                onnx.helper.make_node("MatMul", ["z", "w"], ["out"], name="fc2")],
               [M.vi("x", [2, 4])], [M.vi("out", [2, 4])], [M.init("w", w)])
    g = next(g for g in analyze(m).groups if g.names == ["fc"])
    assert g.frozen and "Shape shape: reads the channel count at run time" in g.frozen[0]


def chunked(even: bool = True) -> onnx.ModelProto:
    """``y.chunk(2, 1)`` as the legacy exporter writes it (YOLOv8's C2f): Slice bounds computed from
    y's own channel count at run time (``even=False``: the first part ends 2 channels early)."""
    h = onnx.helper
    r = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["x", "w0"], ["y"], name="cv1"),
             h.make_node("Shape", ["y"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "one"], ["c"], name="count", axis=0),
             h.make_node("Add", ["c", "one"], ["c1"], name="plus1"),
             h.make_node("Div", ["c1", "two"], ["half"], name="half"),
             h.make_node("Mul", ["half", "two"], ["all"], name="all"),
             h.make_node("Sub" if not even else "Mul", ["half", "zero" if not even else "one"], ["end0"], name="end0"),
             h.make_node("Slice", ["y", "zero", "end0", "one"], ["a"], name="part0"),
             h.make_node("Slice", ["y", "half", "all", "one"], ["b"], name="part1"),
             h.make_node("Conv", ["b", "w1"], ["b2"], name="m0"),
             h.make_node("Concat", ["a", "b", "b2"], ["cat"], name="cat", axis=1),
             h.make_node("Conv", ["cat", "w2"], ["out"], name="cv2")]
    if not even:
        nodes[6] = h.make_node("Sub", ["half", "two"], ["end0"], name="end0")
    inits = [M.init("w0", r.normal(size=(8, 4, 1, 1)).astype(np.float32)),
             M.init("w1", r.normal(size=(4, 4, 3, 3)).astype(np.float32)),
             M.init("w2", r.normal(size=(3, 12 if even else 10, 1, 1)).astype(np.float32)),
             M.init("zero", np.array([0])), M.init("one", np.array([1])), M.init("two", np.array([2]))]
    nodes[9].attribute.append(h.make_attribute("pads", [1, 1, 1, 1]))
    return M.make(nodes, [M.vi("x", [1, 4, 6, 6])], [M.vi("out", [1, 3, 6, 6])], inits)


def test_chunks_cut_at_run_time_are_tied_parts():
    """Each unit of the chunked conv takes one channel from each part, so the run-time bounds
    still cut the pruned tensor in two equal parts; removal stays exact."""
    cg, _ = check_exact(chunked())
    g = next(g for g in cg.groups if g.names == ["cv1"])
    assert not g.frozen and g.size == 4 and all(len(u) == 2 for u in g.units)


def test_uneven_run_time_slice_freezes():
    g = next(g for g in analyze(chunked(even=False)).groups if g.names == ["cv1"])
    assert g.frozen and "run time" in g.frozen[0]


def shape_fed(reads: str = "x", reshapes: str = "y", width=4) -> onnx.ModelProto:
    """``reshapes`` (fc's output y, or a graph input z without channels) reshaped by a target read
    at run time from the shape of ``reads`` (the input x, whose declared width is ``width``: 4 or
    a name, or y)."""
    w = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    h = onnx.helper
    nodes = [h.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
             h.make_node("Shape", [reads], ["s"], name="shape"),
             h.make_node("Gather", ["s", "i0"], ["d0"], name="d0", axis=0),
             h.make_node("Gather", ["s", "i1"], ["d1"], name="d1", axis=0),
             h.make_node("Concat", ["d0", "d1"], ["dims"], name="dims", axis=0),
             h.make_node("Reshape", [reshapes, "dims"], ["r"], name="reshape"),
             h.make_node("MatMul", ["r" if reshapes == "y" else "y", "w"], ["out"], name="fc2")]
    inputs, outputs = [M.vi("x", [2, width])], [M.vi("out", [2, 4])]
    if reshapes == "z":
        inputs.append(M.vi("z", [8]))
        outputs.append(M.vi("r", [2, 4]))
    return M.make(nodes, inputs, outputs, [M.init("w", w), M.init("i0", np.array([0])), M.init("i1", np.array([1]))])


def test_count_read_into_a_reshape_of_other_data_freezes():
    """fc's channel count sizes, through a Shape, the Reshape of a tensor that carries no channels
    (no rule visits it): pruning fc would leave that target stale, so fc freezes."""
    g = next(g for g in analyze(shape_fed(reads="y", reshapes="z")).groups if g.names == ["fc"])
    assert g.frozen and "Shape shape: reads the channel count at run time" in g.frozen[0]


def test_target_reading_a_fixed_size_is_rewritten():
    """A target that reads, where the channels land, a size the model fixes (the input's declared
    width) is written as the kept count: pruning stays exact."""
    cg, _ = check_exact(shape_fed())
    assert not next(g for g in cg.groups if g.names == ["fc"]).frozen


def test_target_reading_a_free_size_freezes():
    """The same read of a size the input decides would keep the old count after pruning (or
    break another input size): the group freezes instead of writing a model that fails."""
    g = next(g for g in analyze(shape_fed(width="w"), {"x": (2, 4)}).groups if g.names == ["fc"])
    assert g.frozen and "Reshape reshape: target shape reads a size that would not follow" in g.frozen[0]


@pytest.mark.parametrize("name", ["resnet_digits.onnx", "mobilenet_digits.onnx", "vit_digits.onnx",
                                  "vit_sdpa_digits.onnx", "vit_sdpa_digits_dynamo.onnx", "vit_mha_digits.onnx",
                                  "vit_mha_digits_dynamo.onnx"])
def test_real_models_removal_is_exact(name):
    check_exact(onnx.load(M.MODELS / name), atol=1e-3)


SMALL_ZOO = ["light_squeezenet.onnx", "light_shufflenet.onnx", "light_inception_v1.onnx",
             "light_densenet121.onnx"]


@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_models_prune_and_run(name):
    model = onnx.load(M.LIGHT / name)
    cg = analyze(model)
    keep = drop_half(cg)
    apply_removal(model, cg, keep)
    onnx.checker.check_model(model)
    out = run(model, random_input(model, batch=1))
    assert np.isfinite(out).all()
    frozen = [r for g in cg.groups for r in g.frozen]
    assert frozen  # every zoo classifier ends in a graph output (or Softmax) that freezes its group
    if name == "light_shufflenet.onnx":
        assert all(g.frozen for g in cg.groups)
        assert any("channel shuffle" in r for r in frozen) and any("grouped conv" in r for r in frozen)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_resnet50.onnx", "light_inception_v2.onnx", "light_bvlc_alexnet.onnx",
                                  "light_zfnet512.onnx"])
def test_bigger_zoo_models_prune_and_run(name):
    """The rest of the light zoo but vgg19 (about 1 GB in onnxruntime; see benchmarks/structured.py)."""
    test_zoo_models_prune_and_run(name)


@pytest.mark.parametrize("build", [M.chan_split, M.chan_depthwise, M.chan_mlp], ids=lambda f: f.__name__)
def test_stale_shapes_are_dropped_others_kept(build):
    model = onnx.shape_inference.infer_shapes(build())
    before = {vi.name for vi in model.graph.value_info}
    cg = analyze(model)
    keep = np.ones(cg.n_ids, bool)
    first = next(g for g in cg.groups if not g.frozen)
    keep[first.units[0]] = False  # one channel of one group: only its tensors change shape
    apply_removal(model, cg, keep)
    onnx.checker.check_model(model, full_check=True)  # strict inference agrees with what is left
    names = {vi.name for vi in model.graph.value_info}
    changed = {n for n, lay in cg.layouts.items() if np.isin(first.units[0], lay.ids).any()}
    produced = {o for n in model.graph.node for o in n.output}
    assert names == (before - changed) & produced
    assert np.isfinite(run(model, random_input(model))).all()
