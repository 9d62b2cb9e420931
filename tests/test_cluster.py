"""Cluster pass and CLI: codebook sizes, zeros kept, bit-exact encoding, calibration weighting."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxcomp as oc
from onnxcomp.cli import main
from onnxcomp.config import ClusterConfig
from onnxcomp.encode.tables import Layout
from onnxcomp.errors import ConfigError
from onnxcomp.passes.base import Context
from onnxcomp.passes.cluster.cluster import ClusterPass
from onnxcomp.algo.allocation import allocate
from onnxcomp.passes.cluster.fit import fit
from onnxcomp.io.sessions import session
from tests.models import MODELS, conv_bn_relu, output_error


def _rng_weight(shape=(16, 8, 3, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * rng.uniform(0.01, 2, (shape[0], 1, 1, 1))).astype(np.float32)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "shared"])
@pytest.mark.parametrize("bits", [3, 4, 6])
def test_fit_sizes_and_zeros(granularity, bits):
    w = _rng_weight()
    w[:, :, 0, :] = 0.0  # a third exact zeros: zero keeps its own code
    f = fit(w.reshape(-1), Layout.of(w.shape, 0), 1 << bits, granularity)
    out = f.values.reshape(w.shape)
    assert np.all(out[w == 0] == 0)  # exact zeros stay zero (a centroid may also round to 0)
    rows = out.reshape(16, -1) if granularity != "tensor" else out.reshape(1, -1)
    assert max(np.unique(r).size for r in rows) <= 1 << bits
    assert 0 < f.rel_error < 0.2


def test_channel_beats_tensor_on_mixed_scales():
    w = _rng_weight()
    lay = Layout.of(w.shape, 0)
    assert fit(w.reshape(-1), lay, 16, "channel").rel_error < 0.5 * fit(w.reshape(-1), lay, 16, "tensor").rel_error


def test_allocate_respects_budget():
    errors = {"a": {2: 1.0, 3: 0.3, 4: 0.1}, "b": {2: 0.1, 3: 0.09, 4: 0.08}}
    bits = allocate(errors, {"a": 100, "b": 100}, 3.0)
    assert bits == {"a": 4, "b": 2}


def test_pass_then_encode_is_bit_exact():
    """ORT output of the encoded model == ORT output of the same clustered weights stored dense."""
    model = conv_bn_relu(c_in=16, c_mid=64, seed=3)
    cfg = ClusterConfig(bits=4, min_params=16)
    result = ClusterPass(cfg).run(model, Context())
    assert len(result.applied) == 3
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    choices = oc.encode.encode_weights(model, {c.name for c in result.applied})
    assert sum(c.kind.startswith("codebook") for c in choices) >= 2
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 8)).astype(np.float32)
    a = session(dense).run(None, {"x": x})[0]
    b = session(model).run(None, {"x": x})[0]
    assert np.array_equal(a, b)


def test_data_weighting_and_mixed_bits():
    c = oc.cluster(MODELS / "resnet_digits.onnx", 4, allocation="mixed", data=MODELS / "digits_calib.npz",
                   gptq=False)  # the subject is the weighting and the bit allocation
    applied = c.result.applied
    assert applied and all(ch.detail["weighted"] for ch in applied)
    sizes = {ch.name: ch.params_before for ch in applied}
    avg = sum(ch.detail["bits"] * sizes[ch.name] for ch in applied) / sum(sizes.values())
    assert avg <= 4.0 + 1e-9 and len({ch.detail["bits"] for ch in applied}) > 1


def test_config_errors():
    with pytest.raises(ConfigError, match="bits=9"):
        ClusterConfig(bits=9)
    with pytest.raises(ConfigError, match="both given"):
        ClusterConfig(bits=4, clusters=16)
    with pytest.raises(ConfigError, match="neither"):
        ClusterConfig()


def test_cli_end_to_end_mobilenet(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["cluster", str(MODELS / "mobilenet_digits.onnx"), "--bits", "4", "--data",
                 str(MODELS / "digits_calib.npz"), "-o", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["write"]["ratio"] < 0.3
    assert report["write"]["fidelity"]["outputs"][0]["top1_agreement"] >= 0.97
    changes = report["passes"][0]["changes"]
    assert any(c["action"] == "skipped" and "depthwise" in c["reason"] for c in changes)
    assert {e["kind"] for e in report["encodings"]} <= {"codebook4", "codebook8", "codebook_vlc"}  # indices + table


@pytest.mark.parametrize("args,needle", [
    (["--bits", "9"], "--bits 9"), ([], "neither --bits"), (["--bits", "4", "--clusters", "8"], "both"),
    (["--bits", "4", "--granularity", "row"], "--granularity"), (["--bits", "4", "--encoding", "zip"], "--encoding"),
    (["--bits", "2.5"], "fractional"), (["--bits", "3", "--allocation", "sensitivity"], "real calibration data")])
def test_cli_bad_options_exit_2_one_line(args, needle, capsys):
    assert main(["cluster", str(MODELS / "mobilenet_digits.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


@pytest.mark.parametrize("granularity", ["tensor", "channel", "shared"])
def test_fp16_constant_node_weight_keeps_fp16_codebook(granularity):
    from onnx import TensorProto, helper

    from tests.models import const_node, make, vi

    w = _rng_weight((32, 16, 3, 3), seed=7).astype(np.float16)
    nodes = [const_node("w", w), helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make(nodes, [vi("x", [1, 16, 6, 6], TensorProto.FLOAT16)], [vi("y", [1, 32, 6, 6], TensorProto.FLOAT16)])
    result = ClusterPass(ClusterConfig(bits=4, granularity=granularity)).run(model, Context())
    assert result.applied and result.applied[0].detail["granularity"] in ("tensor", "channel")
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    choice = oc.encode.encode_weights(model, {"w"})[0]
    assert choice.kind == "codebook4"
    assert not any(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)  # fp16 tables
    x = np.random.default_rng(1).normal(size=(1, 16, 6, 6)).astype(np.float16)
    assert np.array_equal(session(dense).run(None, {"x": x})[0], session(model).run(None, {"x": x})[0])


def test_gptq_assignment_keeps_size_and_beats_plain_kmeans_at_2_bits():
    """GPTQ-style error feedback: same codebooks (same bytes), far better accuracy at 2 bits."""
    import numpy as np
    import onnxruntime as ort

    import onnxcomp as oc

    test = np.load(MODELS / "digits_test.npz")

    def acc(proto):
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return float((s.run(None, {"input": test["input"]})[0].argmax(1) == test["labels"]).mean())

    src, calib = MODELS / "mobilenet_digits.onnx", str(MODELS / "digits_calib.npz")
    plain = oc.cluster(src, 2, granularity="tensor", data=calib, gptq=False, correction="none")
    gptq = oc.cluster(src, 2, granularity="tensor", data=calib, correction="none")
    assert gptq.proto.ByteSize() == plain.proto.ByteSize()
    assert acc(gptq.proto) >= acc(plain.proto) + 0.1 and acc(gptq.proto) >= 0.97


def test_sensitivity_allocation_spends_a_fractional_budget_and_takes_depthwise():
    """Measured allocation: average bits within a fractional budget, depthwise kernels clustered
    too, a smaller file than uniform 3 bits with the test accuracy kept."""
    import numpy as np
    import onnxruntime as ort

    from onnxcomp.data.calibration import load_data

    test = np.load(MODELS / "digits_test.npz")
    src, calib = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"
    data = load_data(str(calib), oc.load(src).proto, num_samples=32)
    measured = oc.cluster(src, 2.5, allocation="sensitivity", data=data)
    uniform = oc.cluster(src, 3, data=data)
    applied = measured.result.applied
    avg = sum(ch.detail["bits"] * ch.params_before for ch in applied) / sum(ch.params_before for ch in applied)
    assert avg <= 2.5 + 1e-9 and len({ch.detail["bits"] for ch in applied}) > 1
    assert len(applied) > len(uniform.result.applied)  # the depthwise kernels
    assert measured.proto.ByteSize() < uniform.proto.ByteSize()
    s = ort.InferenceSession(measured.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert float((s.run(None, {"input": test["input"]})[0].argmax(1) == test["labels"]).mean()) >= 0.99


def test_fractional_bits_need_a_non_uniform_allocation_and_sensitivity_needs_data():
    with pytest.raises(ConfigError, match="fractional"):
        ClusterConfig(bits=3.5)
    assert ClusterConfig(bits=3.5, allocation="mixed").bits == 3.5
    with pytest.raises(ConfigError, match="needs real calibration data"):
        oc.cluster(MODELS / "mobilenet_digits.onnx", 3, allocation="sensitivity")


@pytest.mark.parametrize("granularity,bits", [("channel", 2), ("channel", 6), ("shared", 2)])
def test_correction_folds_into_codebook_scales_same_bytes_never_farther(granularity, bits):
    """The per-channel refit after clustering keeps every codebook encodable (the same encoded
    bytes within 1 %; only shifts are added); it is kept only when it brings the calibration
    outputs closer to the original's, and then they are closer, else the model is as before."""
    src, calib = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"
    err = output_error(src, calib)

    plain = oc.cluster(src, bits, granularity=granularity, data=calib, correction="none")
    fixed = oc.cluster(src, bits, granularity=granularity, data=calib)
    step = fixed.result_of("correction")
    assert step.settings["mode"] == "affine"
    assert [e.kind.startswith("codebook") for e in fixed.encodings] == [e.kind.startswith("codebook") for e in plain.encodings]
    assert sum(e.bytes for e in fixed.encodings) <= 1.01 * sum(e.bytes for e in plain.encodings)
    checked = step.settings["output_error"]
    if checked["after"] > checked["before"]:  # not kept
        assert any("not kept" in n for n in step.notes) and not step.changes
        assert err(fixed) == err(plain)
    else:
        assert err(fixed) < err(plain)
    if (granularity, bits) == ("shared", 2):  # the codebook scales took the refit here
        assert step.changes


def test_output_matched_gptq_beats_plain_gptq_at_the_same_bytes(monkeypatch):
    """Each layer re-targeted to the original outputs from the already clustered inputs: the
    outputs move less than with plain GPTQ, at the same encoded size."""
    from onnxcomp.passes.cluster import seq as cluster_seq

    src, calib = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"
    err = output_error(src, calib)

    matched = oc.cluster(src, 2, data=calib, correction="none")
    assert any("re-targeted layer by layer" in n for n in matched.result.notes)
    monkeypatch.setattr(cluster_seq, "MAX_MODEL_BYTES", 0)  # the plain, original-input GPTQ
    plain = oc.cluster(src, 2, data=calib, correction="none")
    assert not any("re-targeted" in n for n in plain.result.notes)
    assert sum(e.bytes for e in matched.encodings) <= 1.01 * sum(e.bytes for e in plain.encodings)
    assert err(matched) < 0.8 * err(plain)


def test_a_pruned_model_keeps_its_zeros_and_the_mixed_budget_means_what_uniform_stores():
    """prune then cluster with data: the output-matched targets are dense least-squares maps, but
    every pruned position stays exactly zero (at 4 bits, where no codebook entry sits near zero by
    luck). The mixed allocation then prices options by their sparse encodings:
    it stores no more than uniform bits at the same budget (a dense count made resnet_digits 20 % larger)."""
    import numpy as np

    from onnxcomp.graph.weights import find_weights

    from onnxcomp.data.calibration import load_data

    source = oc.load(MODELS / "mobilenet_digits.onnx")
    calib = load_data(str(MODELS / "digits_calib.npz"), source.proto, num_samples=32)
    pruned = oc.prune(source, 0.9, data=calib, encoding="dense")
    zeros = {w.name: w.values() == 0 for w in find_weights(pruned.proto)}
    uniform = oc.cluster(pruned.proto, 4, data=calib)
    mixed = oc.cluster(pruned.proto, 4, allocation="mixed", data=calib)
    for result in (uniform, mixed):
        for w in find_weights(result.proto):
            if w.name in zeros and zeros[w.name].mean() > 0.5:
                assert not np.any(w.values()[zeros[w.name]]), w.name
    assert len({ch.detail["bits"] for ch in mixed.result.applied}) > 1
    assert sum(e.bytes for e in mixed.encodings) <= 1.02 * sum(e.bytes for e in uniform.encodings)


@pytest.mark.parametrize("zero_share,pinned", [(0.01, False), (0.5, True)])
def test_output_matched_target_pins_only_a_pruned_weights_zeros(zero_share, pinned):
    """The re-targeted weight keeps exact zeros only when they are a pruning mask (a fifth of the
    weight or more); a trained weight's few scattered zeros are free to move (pinning them cost
    effnet_lite0 4 points of top-1 agreement)."""
    import numpy as np

    from onnxcomp.graph.weights import find_weights
    from onnxcomp.passes.cluster.seq import target
    from onnxcomp.measure.stats import LayerStats

    from onnx import numpy_helper

    from tests.models import gemm_layer

    rng = np.random.default_rng(0)
    model = gemm_layer(k=12, n=10)
    b = next(t for t in model.graph.initializer if t.name == "B")
    values = numpy_helper.to_array(b).copy()
    values[rng.random(values.shape) < zero_share] = 0
    values.reshape(-1)[0] = 0  # the weight as a prune step left it
    b.CopyFrom(numpy_helper.from_array(values, "B"))
    w = next(x for x in find_weights(model) if x.name == "B")
    a = rng.normal(size=(400, 12))
    b = a + 0.3 * rng.normal(size=a.shape)  # the inputs after earlier layers were clustered
    stats = [LayerStats(cov=b.T @ b / 400, cross=a.T @ b / 400, n=400)]
    out = target(w, stats)
    zeros = values == 0
    assert np.all(out[zeros] == 0) == pinned
    assert np.all(out[~zeros] != 0)


def test_embedding_tables_are_weights_clustered_and_weighted_by_how_often_rows_are_read():
    """A Gather's constant table (a transformer's token embedding) is found, clustered per output
    channel and encoded; with data the k-means weights each row by how often the ids read it."""
    from onnx import TensorProto, helper

    from onnxcomp.graph.weights import find_weights
    from tests.models import init, make

    rng = np.random.default_rng(0)
    table = rng.normal(size=(500, 32)).astype(np.float32)
    model = make([helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
                  helper.make_node("MatMul", ["h", "W"], ["y"], name="proj")],
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])],
                 [init("E", table), init("W", rng.normal(size=(32, 16)).astype(np.float32))])
    (w,) = [w for w in find_weights(model) if w.name == "E"]
    assert (w.role, w.out_axis) == ("gather_data", 1)
    plain = oc.cluster(model, 3, min_params=0)
    assert {e.name: e.kind for e in plain.encodings}["E"].startswith("codebook")
    hot = np.tile(np.arange(10, dtype=np.int64), (64, 1))[:, :8]  # only rows 0..7 are read
    weighted = oc.cluster(model, 3, min_params=0, data={"ids": hot}, correction="none", gptq=False)

    def err(result, rows):
        from onnxcomp.io.sessions import session

        sess_in = {"ids": np.arange(500, dtype=np.int64).reshape(-1, 1).repeat(8, 1)[rows]}
        a = session(model).run(["y"], sess_in)[0]
        b = session(result.model.proto).run(["y"], sess_in)[0]
        return float(np.square(a - b).mean())
    assert err(weighted, slice(0, 8)) < err(plain, slice(0, 8))


def test_data_free_fits_on_several_threads_write_what_one_thread_writes(monkeypatch):
    """Without statistics the weights are fitted a few at a time; the result is the one-thread one."""
    from onnxcomp.io import serialize
    from onnxcomp.passes.cluster import layers

    calls = []
    real = layers.ThreadPoolExecutor
    monkeypatch.setattr(layers, "ThreadPoolExecutor", lambda n: calls.append(n) or real(n))
    src = MODELS / "mobilenet_digits.onnx"
    many, one = oc.cluster(src, 3, threads=3), oc.cluster(src, 3, threads=1)
    assert calls == [3]  # the first really ran on threads, the second did not
    assert serialize(many.proto) == serialize(one.proto)
