"""Sparse encodings: bit-exact after onnxruntime folding, chosen by size, opset rules."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxcomp.encode import encode_weights
from onnxcomp.encode.select import allowed_kinds
from onnxcomp.encode.sparse import Bitmask, Gaps, gap_stream
from onnxcomp.errors import ConfigError
from onnxcomp.graph.edit import NameScope
from onnxcomp.graph.weights import find_weights, set_weight

from . import models as M


def sparsify(values: np.ndarray, sparsity: float, seed: int = 0) -> np.ndarray:
    out = values.copy()
    out[M.rng(seed).random(values.shape) < sparsity] = 0
    return out


def outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def decoded(model: onnx.ModelProto, names: list[str]) -> list[np.ndarray]:
    """Expose the decoded weights as outputs (graph optimizations on, so after folding)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], types[i.type])
            for i in sess.get_inputs()}
    return sess.run(names, feed)


@pytest.mark.parametrize("sparsity,kind", [(0.5, "bitmask"), (0.95, "gaps"), (1.0, "zeros")])
def test_encoded_weight_is_bit_exact_and_smaller(sparsity, kind):
    model = M.conv_bn_relu(c_mid=48)
    w = find_weights(model).by_name()["w2"]
    ref = sparsify(w.values(), sparsity)
    set_weight(model, w, ref)
    x = {"x": M.rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)}
    dense_out = outputs(model, x)
    choices = {c.name: c for c in encode_weights(model, names={"w2"}, encoding="sparse")}
    assert choices["w2"].kind == kind and choices["w2"].bytes < choices["w2"].dense_bytes
    assert np.array_equal(decoded(model, ["w2"])[0], ref)
    assert all(np.array_equal(a, b) for a, b in zip(dense_out, outputs(model, x)))
    onnx.checker.check_model(model)


def test_gap_stream_bridges_long_gaps_with_fillers():
    flat = np.zeros(2000, np.float32)
    flat[[3, 700, 1999]] = [1.0, -2.0, 3.0]
    gaps, vals = gap_stream(flat)
    assert gaps.max() <= 255 and vals.size > 3  # fillers were needed
    pos = np.cumsum(gaps.astype(np.int64)) - 1
    rebuilt = np.zeros_like(flat)
    rebuilt[pos] = vals
    assert np.array_equal(rebuilt, flat)


def test_sizes_follow_the_design_crossover():
    rng = M.rng(1)
    dense = rng.normal(size=100_000).astype(np.float32)
    for s, best in ((0.5, "bitmask"), (0.8, "bitmask"), (0.95, "gaps")):
        flat = sparsify(dense, s)
        sizes = {"gaps": Gaps().size(flat), "bitmask": Bitmask().size(flat)}
        assert min(sizes, key=sizes.get) == best
        assert sizes[best] < flat.nbytes


def test_dense_weights_stay_dense():
    model = M.conv_bn_relu(c_mid=16)
    choices = encode_weights(model)
    assert {c.kind for c in choices} == {"dense"}
    assert len(model.graph.node) == 8


def test_fp16_and_constant_node_and_shared_weights():
    for build, name in ((M.fp16_conv, "w"), (M.constant_node_weights, "m"), (M.shared_weight, "w")):
        model = build()
        w = find_weights(model).by_name()[name]
        ref = sparsify(w.values(), 0.97)
        set_weight(model, w, ref)
        feeds = {i.name: M.rng(0).normal(size=[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
            onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in model.graph.input}
        before = outputs(model, feeds)
        encode_weights(model, names={name})
        onnx.checker.check_model(model)
        assert np.array_equal(decoded(model, [name])[0], ref), build.__name__
        assert all(np.array_equal(a, b) for a, b in zip(before, outputs(model, feeds)))


def test_opset_raised_only_when_safe():
    model = M.make([onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                    onnx.helper.make_node("Relu", ["h"], ["y"], name="relu")],
                   [M.vi("x", [2, 64])], [M.vi("y", [2, 64])],
                   [M.init("w", M.rng(0).normal(size=(64, 64)).astype(np.float32))], opset=9)
    w = find_weights(model).by_name()["w"]
    set_weight(model, w, sparsify(w.values(), 0.97))
    encode_weights(model, names={"w"})
    assert model.opset_import[0].version == 11  # MatMul/Relu mean the same at 9 and 11
    # Conv's schema changed at opset 11: the opset must stay and the weight stay dense
    model = M.constant_node_weights()
    model.opset_import[0].version = 9
    w = find_weights(model).by_name()["m"]
    set_weight(model, w, sparsify(w.values(), 0.97))
    assert [c.kind for c in encode_weights(model, names={"m"}, encoding="sparse")] == ["dense"]
    assert model.opset_import[0].version == 9


def test_unknown_encoding_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of"):
        allowed_kinds("zip")


def test_decoders_do_not_clash_with_nodes_named_like_their_weights(tmp_path):
    """Exporters may name a MatMul like its weight ('l0_q' reading 'l0_q'): the decoder of that
    weight must not take the node's name (onnxruntime refuses two nodes of one name)."""
    import onnx
    from onnx import helper

    import onnxcomp as oc
    from tests.models import init, make, vi

    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    model = make([helper.make_node("MatMul", ["x", "l0_q"], ["y"], name="l0_q")], [vi("x", [2, 64])],
                 [vi("y", [2, 64])], [init("l0_q", w)])
    r = oc.prune(model, 0.9, allocation="uniform", min_params=0)
    assert r.encodings[0].kind != "dense"
    oc.save(r.model, tmp_path / "m.onnx")  # verified: checker and onnxruntime load
    assert len({n.name for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.name}) == 1


@pytest.mark.parametrize("shape,dtype", [((37, 29), np.float32), ((64, 40), np.int8), ((8, 3, 5, 5), np.float16)])
def test_bitmasks_of_any_size_and_type_decode_exactly_and_share_one_table(shape, dtype):
    """Sizes not a multiple of 8 (packbits' padding), integer and half weights; two decoders, one table."""
    r = M.rng(5)
    a, b = (sparsify((r.normal(size=shape) * 50).astype(dtype), 0.5, seed) for seed in (1, 2))
    nodes, inits = [], []
    out_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    model = helper.make_model(helper.make_graph([helper.make_node("Concat", ["a", "b"], ["y"], axis=0)], "g", [],
                                                [helper.make_tensor_value_info("y", out_type, None)],
                                                [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")]),
                              opset_imports=[helper.make_opsetid("", 13)])
    fresh = NameScope(model, short=True)
    for name, w in (("a2", a), ("b2", b)):
        n, i = Bitmask().build(w.reshape(-1), w.shape, name, fresh)
        nodes += n
        inits += i
    assert sum(list(t.dims) == [256, 8] for t in inits) == 1  # the table is stored once
    g = model.graph
    g.initializer.extend(inits)
    g.node[0].input[:] = ["a2", "b2"]
    for k, n in enumerate(nodes):
        g.node.insert(k, n)
    a_out, b_out = decoded(model, ["a2", "b2"])
    assert np.array_equal(a_out, a) and np.array_equal(b_out, b) and a_out.dtype == dtype
