"""The streaming engine: every layer's input, in both streams, equals what a full run of that model
gives; statistics equal a direct computation; every node runs once per stream."""
import numpy as np
import onnx
import pytest
from onnx import helper

from onnxcomp.graph.subgraph import expose
from onnxcomp.graph.weights import find_weights, set_weight
from onnxcomp.io.sessions import session
from onnxcomp.measure.engine import Engine
from onnxcomp.measure.stats import StatsRequest, accumulate, shrink

from . import models as M


def residual_concat() -> onnx.ModelProto:
    """Two conv branches -> Concat -> conv1 -> Relu -> conv2, residual Add with the Concat -> conv3 -> head."""
    r = M.rng(21)
    parts = [M._ch_conv("conva", "x", "ca", 3, 4, r), M._ch_conv("convb", "x", "cb", 3, 4, r),
             ([helper.make_node("Concat", ["ca", "cb"], ["cat"], name="concat", axis=1)], []),
             M._ch_conv("conv1", "cat", "c1", 8, 8, r),
             ([helper.make_node("Relu", ["c1"], ["r1"], name="relu1")], []),
             M._ch_conv("conv2", "r1", "c2", 8, 8, r),
             ([helper.make_node("Add", ["cat", "c2"], ["s"], name="add")], []),
             M._ch_conv("conv3", "s", "c3", 8, 8, r, k=1),
             ([helper.make_node("Relu", ["c3"], ["r3"], name="relu3")], []), M._ch_head("r3", 8, r)]
    return M._ch_build(parts, [M.vi("x", ["N", 3, 8, 8])], [M.vi("y", ["N", 5])])


LAYERS = [("ca", 0), ("cb", 0), ("c1", 0), ("c2", 0), ("c3", 0), ("y", 0)]


def batches(n: int = 3, size: int = 4):
    g = np.random.default_rng(0)
    return [{"x": g.normal(size=(size, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def full_run(model: onnx.ModelProto, names, data):
    sess = session(expose(model, names))
    return [dict(zip(names, sess.run(names, b))) for b in data]


def close(got: list, direct: list[dict], name: str) -> None:
    """Equal to the whole-graph run's tensors up to rounding: a segment may round differently from
    the whole graph (onnxruntime 1.32 fuses the head's pooling differently across the cut: 1-ulp
    differences), while a wrong tensor (another layer's, the other stream's) is off by far more."""
    for a, d in zip(got, direct):
        np.testing.assert_allclose(a, d[name], rtol=1e-5, atol=1e-6 * float(np.abs(d[name]).max()), err_msg=name)


def test_every_layer_input_equals_a_full_run_in_both_streams():
    ref, work = residual_concat(), residual_concat()
    data = batches()
    want = {}
    with Engine(work, ref, data) as eng:
        for site in eng.walk(LAYERS):
            want[site.name] = (site.input_name, [a.copy() for a in site.x()], [a.copy() for a in site.x_ref()])
            y_ref = site.y_ref()
            direct = full_run(ref, [site.name], data)
            close(y_ref, direct, site.name)
            if site.name == "c1":  # change a layer mid-walk: later inputs come from the changed model
                w = find_weights(work).by_name()["conv1_w"]
                set_weight(work, w, w.values() * 0.5)
        counts = eng.counts()
    for name, (x, got, got_ref) in want.items():
        direct_work, direct_ref = full_run(work, [x], data), full_run(ref, [x], data)
        close(got, direct_work, x)
        close(got_ref, direct_ref, x)
    assert not np.array_equal(want["c2"][1][0], want["c2"][2][0])  # conv1 changed, its consumer saw it
    assert np.array_equal(want["c1"][1][0], want["c1"][2][0])  # ... and nothing before it did
    # each stream ran each batch through a bounded number of segments (no prefix reruns)
    assert counts["segments"] <= 2 * len(LAYERS) and counts["batch_runs"] == counts["segments"] * len(data)


def test_only_live_tensors_are_kept():
    with Engine(residual_concat(), residual_concat(), batches()) as eng:
        kept = []
        for site in eng.walk(LAYERS):
            kept.append(set(eng.work.store.arrays))
    assert "cat" in kept[3]  # the residual branch is carried past conv1 and conv2 to the Add
    assert "cat" not in kept[4] and "ca" not in kept[4]  # ... and forgotten once the Add ran


def test_statistics_equal_a_direct_computation():
    model = residual_concat()
    data = batches()
    with Engine(model, residual_concat(), data) as eng:
        for site in eng.walk([("c3", 0), ("y", 0)]):
            node = site.node
            if node.op_type == "Conv":
                req = StatsRequest(site.name, site.input_name, "conv", (1, 1))
                got = accumulate(site.x(), site.x_ref(), req, samples=eng.samples, seed=3)
                direct = full_run(model, [site.input_name], data)
                again = accumulate([d[site.input_name] for d in direct], [d[site.input_name] for d in direct], req,
                                   samples=eng.samples, seed=3)
                for a, b in zip(got, again):  # bit for bit: same inputs, same positions, same order
                    assert np.array_equal(a.cov, b.cov) and np.array_equal(a.cross, b.cross)
            else:
                req = StatsRequest(site.name, site.input_name, "matrix")
                (got,) = accumulate(site.x(), None, req, samples=eng.samples, max_patches=10**6)
                x = np.concatenate(site.x()).astype(np.float64)
                expect = shrink(x.T @ x / len(x), len(x))
                assert got.n == len(x) and np.allclose(got.cov, expect, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cap", [0, None])
def test_kept_tensors_spill_to_disk_above_the_cap_with_the_same_values(cap):
    data = batches()
    with Engine(residual_concat(), None, data, cap_bytes=cap) as eng:
        for site in eng.walk(LAYERS):
            if site.name == "c3":
                got = [np.array(a) for a in site.x()]
        spilled = eng.budget.spilled
    direct = full_run(residual_concat(), ["s"], data)
    assert all(np.array_equal(a, d["s"]) for a, d in zip(got, direct))
    assert (spilled > 0) == (cap == 0)


@pytest.mark.parametrize("kernel,strides,dilations,pads", [((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
                                                          ((3, 2), (2, 1), (2, 1), (2, 0, 1, 1)),
                                                          ((1, 1), (2, 2), (1, 1), (0, 0, 0, 0))])
def test_the_patches_statistics_are_drawn_from_are_what_the_conv_multiplies(kernel, strides, dilations, pads):
    """Every position drawn (here all of them) is a patch whose dot product with the kernel is the
    Conv's output there: strides, dilations and uneven pads included."""
    from onnxcomp.measure.stats import conv_patches

    g = np.random.default_rng(5)
    x = g.normal(size=(2, 3, 9, 11)).astype(np.float32)
    w = g.normal(size=(1, 3) + kernel).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            dilations=list(dilations), pads=[pads[0], pads[1], pads[2], pads[3]])
    graph = helper.make_graph([node], "g", [M.vi("x", [2, 3, 9, 11])], [M.vi("y", None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    y = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).run(None, {"x": x})[0]
    req = StatsRequest("k", "x", "conv", kernel, strides, pads, dilations)
    patches = conv_patches(x, req, 10**6, np.random.default_rng(0))
    got = (patches.astype(np.float64) @ w.reshape(-1)).reshape(2, -1)
    for s in range(2):  # each sample's positions in a random order: compare as sorted sets
        assert np.allclose(np.sort(got[s]), np.sort(y[s].reshape(-1)), atol=1e-4)


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3, 3], pads=[1, 1, 1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 3, 1], strides=[2, 1, 3], dilations=[1, 2, 1],
                                        pads=[1, 0, 0, 0, 2, 1]),
                                   dict(kernel_shape=[3, 1, 3], strides=[2, 2, 2], auto_pad="SAME_UPPER")])
def test_a_3d_conv_is_measured_over_every_spatial_axis(attrs):
    """3-D convs (video, volumes) took magnitude masks with --data: the statistics knew 1-D and 2-D
    patches only. Every patch drawn for a 3-D conv, dotted with an output channel's kernel, is that
    channel's Conv output somewhere: strides, dilations, uneven and SAME pads on each axis."""
    from onnxcomp.measure.stats import conv_patches
    from onnxcomp.passes.prune.obs import _rows, request

    g = np.random.default_rng(7)
    x = g.normal(size=(2, 3, 5, 6, 7)).astype(np.float32)
    w = g.normal(size=(2, 3, *attrs["kernel_shape"])).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [M.vi("x", [2, 3, 5, 6, 7])], [M.vi("y", None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = session(model).run(None, {"x": x})[0]
    weight = find_weights(model).by_name()["w"]
    patches = conv_patches(x, request(weight), 10**6, np.random.default_rng(0)).astype(np.float64)
    rows = _rows(weight, w.astype(np.float64))
    for c in range(2):
        got = (patches @ rows[c]).reshape(2, -1)
        for s in range(2):
            assert got.shape[1] == y[s, c].size
            assert np.allclose(np.sort(got[s]), np.sort(y[s, c].reshape(-1)), atol=1e-4)


@pytest.mark.parametrize("kernel,strides,pads,extra,dilations", [((4, 4), (2, 2), (1, 1, 1, 1), (0, 0), (1, 1)),
                                                                 ((3, 3), (2, 2), (1, 0, 1, 1), (1, 1), (1, 1)),
                                                                 ((3, 2), (1, 3), (0, 0, 0, 0), (0, 2), (2, 1))])
def test_a_conv_transpose_is_measured_as_the_conv_it_equals(kernel, strides, pads, extra, dilations):
    """ConvTranspose took magnitude masks with --data (no statistics). It is the stride-1 conv of its
    input spread out by its strides, with the kernel flipped: every patch drawn, dotted with the
    flipped kernel of an output channel, is that channel's ConvTranspose output somewhere."""
    from onnxcomp.measure.stats import conv_patches
    from onnxcomp.passes.prune.obs import _rows, _unrows, request

    g = np.random.default_rng(6)
    x = g.normal(size=(2, 3, 5, 6)).astype(np.float32)
    w = g.normal(size=(3, 2) + kernel).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), output_padding=list(extra), dilations=list(dilations))
    graph = helper.make_graph([node], "g", [M.vi("x", [2, 3, 5, 6])], [M.vi("y", None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    y = session(model).run(None, {"x": x})[0]
    weight = find_weights(model).by_name()["w"]
    req = request(weight)
    patches = conv_patches(x, req, 10**6, np.random.default_rng(0)).astype(np.float64)
    rows = _rows(weight, w.astype(np.float64))
    assert np.array_equal(_unrows(weight, rows), w)  # the solved rows go back where they came from
    for c in range(2):
        got = (patches @ rows[c]).reshape(2, -1)
        for s in range(2):
            assert np.allclose(np.sort(got[s]), np.sort(y[s, c].reshape(-1)), atol=1e-4)
