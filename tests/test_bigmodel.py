"""Big models without holding them twice: lazy external data, saves and sessions that copy no
weights, the original's session dropped before the candidate's (benchmarks/bigmodel.py measures
the memory; these tests pin the behaviour on tiny models with the thresholds lowered)."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcomp.measure import fidelity as evaluate
from onnxcomp import io
from onnxcomp.io import sessions as runtime
from onnxcomp.cli import main
from onnxcomp.encode import tables
from onnxcomp.errors import ModelLoadError

from . import models as M


def external(folder, model: onnx.ModelProto, name: str = "m.onnx"):
    """``model`` saved in ``folder`` with every tensor in one external data file."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=0)
    return folder / name


@pytest.fixture
def lazy_all(monkeypatch):
    """Every external tensor stays on disk (not only those of 1 MiB and more)."""
    monkeypatch.setattr(io.tensors, "LAZY_MIN_BYTES", 0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_lazy_load_reads_the_same_values(tmp_path, lazy_all):
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))
    eager, lazy = io.load(path), io.load(path, lazy=True)
    assert not io.lazy_tensors(eager)
    assert len(io.lazy_tensors(lazy)) == len(lazy.graph.initializer)
    assert all(not t.HasField("raw_data") for t in lazy.graph.initializer)
    for a, b in zip(eager.graph.initializer, lazy.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), io.tensor_array(b))
    assert onnx.load_from_string(io.serialize(lazy)) == eager  # read in: the same model


def test_small_external_tensors_are_read_at_load(tmp_path):
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))  # every tensor below 1 MiB
    assert io.load(path, lazy=True) == io.load(path)


def test_lazy_load_keeps_the_safety_checks(tmp_path, lazy_all):
    path = external(tmp_path / "sub", M.conv_bn_relu(c_mid=32))
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../m.onnx.data"
    onnx.save_model(m, str(path))
    (tmp_path / "sub" / "m.onnx.data").rename(tmp_path / "m.onnx.data")
    with pytest.raises(ModelLoadError, match="outside its folder"):
        io.load(path, lazy=True)


def test_save_and_sessions_copy_lazy_data_and_leave_the_model_intact(tmp_path, lazy_all, monkeypatch):
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))
    eager, lazy = io.load(path), io.load(path, lazy=True)
    before = _copy(lazy)
    one = io.save(lazy, tmp_path / "one.onnx")  # one protobuf: lazy tensors read in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "one.onnx"]
    assert io.load(one) == eager
    x = {"x": M.rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    want = runtime.session(eager).run(None, x)[0]
    np.testing.assert_array_equal(runtime.session(lazy).run(None, x)[0], want)  # maps the input's data
    monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", 1000)
    two = io.save(lazy, tmp_path / "two.onnx")  # external data, copied tensor by tensor
    assert (tmp_path / "two.onnx.data").stat().st_size == sum(  # tensors of 1 KB and more, as onnx does
        n for t in eager.graph.initializer if (n := numpy_helper.to_array(t).nbytes) >= 1024)
    assert io.load(two) == eager
    sess = runtime.session(lazy)  # still mapped from the input's files: nothing big in memory
    assert not hasattr(sess, "_onnxcomp_tmp")
    np.testing.assert_array_equal(sess.run(None, x)[0], want)
    mixed = _copy(lazy)  # a rewritten weight in memory above the threshold, the rest lazy
    big = max(range(len(eager.graph.initializer)), key=lambda i: eager.graph.initializer[i].ByteSize())
    mixed.graph.initializer[big].CopyFrom(eager.graph.initializer[big])
    sess = runtime.session(mixed)  # through a temp file with external data
    assert sess._onnxcomp_tmp is not None
    np.testing.assert_array_equal(sess.run(None, x)[0], want)
    assert lazy == before


def _prune(argv_model, out, capsys) -> dict:
    assert main(["prune", str(argv_model), "--sparsity", "0.5", "--min-params", "1", "-o", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    report["write"].pop("output")
    report["write"]["fidelity"].pop("candidate")
    return report


@pytest.mark.parametrize("threshold", [None, 1000])
def test_prune_of_a_lazy_model_matches_the_eager_one(tmp_path, capsys, monkeypatch, threshold):
    """The CLI loads external data lazily; the output is the one an eager load gives, byte for byte."""
    if threshold:
        monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", threshold)  # output with external data
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))
    for sub in ("eager", "lazy"):
        (tmp_path / sub).mkdir()
    eager = _prune(path, tmp_path / "eager" / "out.onnx", capsys)  # tensors below LAZY_MIN_BYTES: read
    monkeypatch.setattr(io.tensors, "LAZY_MIN_BYTES", 0)
    lazy = _prune(path, tmp_path / "lazy" / "out.onnx", capsys)
    assert lazy == eager
    files = sorted(p.name for p in (tmp_path / "eager").iterdir())
    assert files == (["out.onnx", "out.onnx.data"] if threshold else ["out.onnx"])
    for name in files:
        assert (tmp_path / "eager" / name).read_bytes() == (tmp_path / "lazy" / name).read_bytes()


def test_compare_drops_the_original_session_before_the_candidates(monkeypatch):
    """Never two sessions at once; a small HELD_BYTES (several stretches) gives the same report."""
    a = M.conv_bn_relu()
    b = M.with_zeroed(a, a.graph.initializer[0].name)
    data = [{"x": M.rng(i).standard_normal((4, 3, 8, 8)).astype(np.float32)} for i in range(3)]
    whole = evaluate.compare(a, b, data).to_dict()
    alive, peak = [0], [0]

    class Counted(evaluate.Capturer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])

        def __del__(self):
            alive[0] -= 1

    monkeypatch.setattr(evaluate, "Capturer", Counted)
    monkeypatch.setattr(evaluate, "HELD_BYTES", 1)  # one run per stretch
    assert evaluate.compare(a, b, data).to_dict() == whole
    assert peak[0] == 1 and alive[0] == 0


def test_detect_gives_up_without_sorting_the_whole_tensor(monkeypatch):
    rng = M.rng(3)
    flat = rng.standard_normal(64 * 300).astype(np.float32)
    layout = tables.Layout(1, 64, 300)
    monkeypatch.setattr(tables, "row_ranks", lambda *a: pytest.fail("sorted every row"))
    assert tables.detect(flat, layout) == []
    assert tables.detect(flat, None) == []
    monkeypatch.undo()
    rows = np.round(rng.standard_normal((64, 300)), 1).astype(np.float32)  # few values per channel
    rows[5] = rng.standard_normal(300)  # but one channel with 300 distinct values: no table fits
    assert tables.detect(rows.reshape(-1), layout) == []


@pytest.mark.parametrize("threshold", [None, 1000])
def test_force_onto_a_lazy_input_compares_with_the_input_it_replaced(tmp_path, capsys, monkeypatch, lazy_all,
                                                                    threshold):
    """-o INPUT --force replaces the input (and, with external data, its .data file; an inline
    output removes the old one) while the original's weights are still read from there: the
    report is the one of a separate output."""
    if threshold:
        monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", threshold)
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))
    (tmp_path / "out").mkdir()
    elsewhere = _prune(path, tmp_path / "out" / "m.onnx", capsys)
    assert main(["prune", str(path), "--sparsity", "0.5", "--min-params", "1", "-o", str(path), "--force",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    report["write"]["fidelity"].pop("candidate")
    assert report["write"]["fidelity"] == elsewhere["write"]["fidelity"]
    assert report["passes"] == elsewhere["passes"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"] + (["m.onnx.data"] if threshold else [])
    assert io.load(path) == io.load(tmp_path / "out" / "m.onnx")


def test_saving_a_lazy_model_over_its_own_data_keeps_it_readable(tmp_path, lazy_all, monkeypatch):
    monkeypatch.setattr(io.tensors, "EXTERNAL_DATA_THRESHOLD", 1000)
    path = external(tmp_path / "in", M.conv_bn_relu(c_mid=32))
    eager, lazy = io.load(path), io.load(path, lazy=True)
    io.save(lazy, path, input_path=path, force=True)  # rewrites m.onnx.data, laid out differently
    assert io.load(path) == eager
    for a, b in zip(eager.graph.initializer, lazy.graph.initializer):  # read from the new file
        np.testing.assert_array_equal(numpy_helper.to_array(a), io.tensor_array(b))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_cluster_of_a_lazy_external_model_is_self_contained(tmp_path, lazy_all):
    """The cluster command reads an external-data input lazily and its result holds only live
    bytes, with no reference left to the input's data file."""
    import onnxcomp as oc

    src = M.conv_bn_relu(c_mid=32)
    path = external(tmp_path / "in", src)
    before = (tmp_path / "in" / "m.onnx.data").read_bytes()
    c = oc.cluster(path, 4)
    assert not io.lazy_tensors(c.proto)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in c.proto.graph.initializer)
    assert c.proto == onnx.load_from_string(c.proto.SerializeToString())
    out = main(["cluster", str(path), "--bits", "4", "-o", str(tmp_path / "out.onnx")])
    assert out == 0 and (tmp_path / "in" / "m.onnx.data").read_bytes() == before


def _cli_json(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_sensitivity_and_auto_read_a_lazy_model_as_an_eager_one(tmp_path, capsys, monkeypatch):
    """inspect, sensitivity and auto load big external tensors lazily, as prune and cluster do, and
    report what an eager load reports; auto writes the same model."""
    from onnxcomp.pipeline import auto

    monkeypatch.setattr(auto, "BITS", (6,))
    monkeypatch.setattr(auto, "BISECT_STEPS", 1)
    path = external(tmp_path / "in", onnx.load(str(M.MODELS / "mobilenet_digits.onnx")))
    calib = str(M.MODELS / "digits_calib.npz")
    runs = {}
    for mode in ("eager", "lazy"):
        if mode == "lazy":
            monkeypatch.setattr(io.tensors, "LAZY_MIN_BYTES", 0)
        out = tmp_path / mode / "auto.onnx"
        out.parent.mkdir()
        report = _cli_json(["auto", str(path), "--data", calib, "--target-size", "0.5", "--json", "-o", str(out)],
                           capsys)
        runs[mode] = (_cli_json(["inspect", str(path), "--json"], capsys),
                      _cli_json(["sensitivity", str(path), "--data", calib, "--levels", "0.5", "--samples", "4",
                                 "--json"], capsys),
                      report["chosen"], out.read_bytes())
    lazy_ratio, eager_ratio = (runs[m][2].pop("size_ratio") for m in ("lazy", "eager"))
    assert lazy_ratio == pytest.approx(eager_ratio, rel=1e-5) and lazy_ratio < 0.5  # lazy bytes counted
    assert runs["lazy"] == runs["eager"]


@pytest.mark.parametrize("data_name", ["m.onnx.data", "weights.bin"])
def test_sizes_count_the_external_data_of_the_input(tmp_path, capsys, lazy_all, data_name):
    """compress's stage table and every command's "size: A -> B" measure an input with external
    data (of any file name) by its tensors, not by its few-kB .onnx file (was: 'original 19.6 kB',
    the compressed model 16x larger)."""
    src = onnx.load(str(M.MODELS / "resnet_digits.onnx"))
    inline = src.ByteSize()
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save_model(src, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=0)
    d = _cli_json(["compress", str(path), "--prune", "0.5", "--bits", "4", "--encoding", "smallest", "--json", "-o",
                   str(tmp_path / "out.onnx")], capsys)
    assert d["stages"][0]["bytes"] == pytest.approx(inline, rel=1e-4)  # + each tensor's data_location
    assert d["write"]["size_before"] == d["stages"][0]["bytes"]
    assert d["stages"][-1]["ratio"] < 0.2 and d["write"]["size_after"] < 0.2 * inline


def test_embedded_weights_stay_in_the_model_file_and_read_the_same(tmp_path, lazy_all):
    """A model with its weights inside the .onnx: a lazy load keeps only a small header in memory
    (every big initializer refers to its bytes in the file), reads the same values, counts the same
    size and runs the same in onnxruntime."""
    path = tmp_path / "m.onnx"
    onnx.save(M.conv_bn_relu(c_mid=32), str(path))
    eager, lazy = io.load(path), io.load(path, lazy=True)
    assert io.lazy_tensors(lazy) and lazy.ByteSize() < eager.ByteSize() / 2
    for a, b in zip(eager.graph.initializer, lazy.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), io.tensor_array(b))
    assert io.model_bytes(lazy) == eager.ByteSize() == path.stat().st_size
    assert onnx.load_from_string(io.serialize(lazy)) == eager
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(runtime.session(lazy).run(None, x)[0], runtime.session(eager).run(None, x)[0])


def test_compressing_an_embedded_model_in_place_matches_a_separate_output(tmp_path, capsys, lazy_all):
    """-o INPUT --force replaces the file the original's weights are still read from: the result
    and the report equal those of a separate output, and no hidden copy is left behind."""
    src = tmp_path / "m.onnx"
    onnx.save(M.conv_bn_relu(c_mid=32), str(src))
    other = tmp_path / "copy" / "m.onnx"
    other.parent.mkdir()
    other.write_bytes(src.read_bytes())
    elsewhere = _prune(other, tmp_path / "copy" / "out.onnx", capsys)
    assert main(["prune", str(src), "--sparsity", "0.5", "--min-params", "1", "-o", str(src), "--force",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for r in (report, elsewhere):
        r["write"]["fidelity"].pop("candidate", None)
        r["write"]["fidelity"].pop("original")
    assert report["write"]["fidelity"] == elsewhere["write"]["fidelity"]
    assert report["passes"] == elsewhere["passes"]
    assert src.read_bytes() == (tmp_path / "copy" / "out.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "m.onnx"]


def test_an_embedded_model_file_cut_short_while_running_is_a_one_line_error(tmp_path, lazy_all):
    path = tmp_path / "m.onnx"
    onnx.save(M.conv_bn_relu(c_mid=32), str(path))
    lazy = io.load(path, lazy=True)
    path.write_bytes(path.read_bytes()[:200])  # another program rewrites the input meanwhile
    with pytest.raises(ModelLoadError, match="changed while onnxcomp ran") as err:
        for t in io.lazy_tensors(lazy):
            io.tensor_array(t)
    assert "leave the model file alone" in err.value.fix and "\n" not in str(err.value)
