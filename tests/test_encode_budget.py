"""The default encoding keeps onnxruntime's load memory within budget; explicit encodings do not."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxcomp as oc
from onnxcomp.encode import budget, encode_weights
from onnxcomp.encode.budget import LOAD_TARGET, Plan, load_bytes, within_budget, write_encoded

from . import models as M


def sparse_matmuls(n: int = 4, size: int = 256, sparsity: float = 0.5) -> onnx.ModelProto:
    """x -> MatMul x n, each weight half zeros (the bitmask's range)."""
    r = M.rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(n):
        w = r.normal(size=(size, size)).astype(np.float32) / 16
        w[r.random(w.shape) < sparsity] = 0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"w{i}"))  # named like its weight
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(model: onnx.ModelProto) -> np.ndarray:
    x = M.rng(1).normal(size=(1, 256)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


class Measured(list):
    """The peaks a fake meter returned, and the files it was given (``paths``, ``started``)."""

    paths: list


@pytest.fixture
def fake_loads(monkeypatch):
    """onnxruntime's load peak as a stand-in: 10 MB plus twice the decoders' modeled temporaries."""
    import onnxcomp.measure.loadpeak as loadpeak

    measured = Measured()
    measured.paths, measured.decoders = [], []

    def peaks(paths, provider="CPUExecutionProvider", parallel=2, like=None):
        measured.paths += [str(p) for p in paths]
        for p in paths:
            onnx.checker.check_model(str(p))  # every file measured is a valid model (shared tables held)
            stored = {t.name for t in onnx.load(str(p)).graph.initializer}
            decoders = sum(f"w{i}" not in stored for i in range(4))  # weights a decoder rebuilds
            measured.decoders.append(decoders)
            measured.append(10_000_000 + 2 * decoders * per_decoder[0])
        return measured[-len(paths):]

    class Loads:  # the input's loads, started while the passes run
        def __init__(self, paths, provider="CPUExecutionProvider", like=None):
            self.paths = [str(p) for p in paths]
            started.append(self.paths)

        def result(self):
            return peaks(self.paths)

        def close(self):
            pass

    class Meter:  # the budget's rounds of loads
        def __init__(self, like, provider="CPUExecutionProvider", spare=2):
            pass

        def peaks(self, paths, then=None):
            return peaks(paths)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    per_decoder, started = [0], []
    monkeypatch.setattr(loadpeak, "load_peaks", peaks)
    monkeypatch.setattr(loadpeak, "Loads", Loads)
    monkeypatch.setattr(loadpeak, "Meter", Meter)
    monkeypatch.setattr(budget, "LOAD_FLOOR", 0)
    measured.started = started
    return per_decoder, measured


def test_weights_past_the_load_budget_stay_dense_and_say_why(fake_loads):
    per_decoder, measured = fake_loads
    model = sparse_matmuls()
    want = run(model)
    per_decoder[0] = 1_500_000  # all 4 decoders: 22 MB, past 1.7 x 10 MB; 2 of them fit
    rows = {c.name: c for c in encode_weights(model)}
    kinds = [rows[f"w{i}"].kind for i in range(4)]
    assert "dense" in kinds and set(kinds) != {"dense"}  # some fit, not all
    assert all(rows[f"w{i}"].reason.startswith("kept dense: onnxruntime's load memory")
               for i in range(4) if kinds[i] == "dense")
    encoded = kinds.count("bitmask")
    assert 10_000_000 + 2 * encoded * per_decoder[0] <= LOAD_TARGET * 10_000_000  # what is stored fits
    assert len(measured) <= 5  # the input, a guess and all encoded, at most 2 budgets between
    onnx.checker.check_model(model)
    assert np.array_equal(run(model), want)  # whichever plan held the shared table, it is stored


def test_no_measuring_process_loads_far_past_the_limit(fake_loads, monkeypatch):
    """Each load runs in a process of its own, so the all-encoded model, when its decoders model
    far more than the room below the limit, would be the command's heaviest process: it is never
    loaded, and the budget is still found from the loads near the limit."""
    per_decoder, measured = fake_loads
    per_decoder[0] = 400_000  # each decoder: +0.8 MB over the input's 10 MB
    monkeypatch.setattr(budget, "LOAD_TARGET", 1.2)  # room for about one decoder's modeled 1.2 MB
    model = sparse_matmuls()
    want = run(model)
    kinds = [c.kind for c in encode_weights(model)]
    assert "dense" in kinds and set(kinds) != {"dense"}
    assert max(measured.decoders) < 4  # the heaviest file loaded left weights dense
    assert max(measured) <= 1.2 * 10_000_000
    assert np.array_equal(run(model), want)


def test_an_explicit_encoding_is_stored_as_asked(fake_loads):
    per_decoder, measured = fake_loads
    per_decoder[0] = 10**9
    model = sparse_matmuls()
    assert {c.kind for c in encode_weights(model, encoding="sparse")} == {"bitmask"}
    assert not measured  # nothing measured: the user chose the storage


def test_a_small_model_is_not_measured(monkeypatch):
    import onnxcomp.measure.loadpeak as loadpeak

    monkeypatch.setattr(loadpeak, "Meter", lambda *a, **k: pytest.fail("measured a small model"))
    assert {c.kind for c in encode_weights(sparse_matmuls())} == {"bitmask"}  # 4.9 MB of temporaries


def test_the_modeled_load_counts_every_decoder_temporary():
    model = sparse_matmuls(n=1)
    from onnxcomp.encode.sparse import Bitmask
    from onnxcomp.graph.edit import NameScope
    from onnxcomp.graph.weights import find_weights

    w = find_weights(model).by_name()["w0"]
    nodes, inits = Bitmask().build(w.values().reshape(-1), w.shape, "w0", NameScope(model, short=True))
    known = {}
    budget.describe(inits, known)
    load = load_bytes(Plan(w, "bitmask", 0, nodes, inits), known, 13)
    n = w.size
    # int32 running counts, indices (before and after Where), their reshape; bool flags; the
    # per-byte int32 tensors (bytes, popcounts, first index); the 256 x 8 tables
    assert load == 4 * n * 4 + n + 3 * (n // 8) * 4 + 256 * 8 * (4 + 4 + 1)
    kept, over = within_budget([Plan(w, "bitmask", 10, load=load)], load - 1)
    assert not kept and len(over) == 1


def test_a_partial_encoding_loads_and_decodes_exactly(monkeypatch, tmp_path):
    """The files the budget measures: written a tensor at a time, without the plan that built the
    shared table, at the decoders' opset (the model is at opset 9), loadable where the model's
    nodes are named like their weights (a decoder node of that name made the file invalid)."""
    from onnxcomp.encode import select

    model = sparse_matmuls()
    model.opset_import[0].version = 9
    want = run(model)
    plans, outputs = [], []

    def measure(m, every, *rest):  # as the budget writes them: before any decoder is installed
        plans.extend(every)
        for subset in (every[1:2], every[2:]):
            path = tmp_path / "variant.onnx"
            write_encoded(path, model, subset, every)
            onnx.checker.check_model(str(path))
            written = onnx.load(str(path))
            outputs.append((written.opset_import[0].version, run(written),
                            len([t for t in written.graph.initializer if t.name.startswith("w")]), len(subset)))
        return float("inf")

    monkeypatch.setattr(select, "load_budget", measure)
    encode_weights(onnx.ModelProto.FromString(model.SerializeToString()))
    assert len(plans) == 4 and len(outputs) == 2
    for opset, got, dense, encoded in outputs:
        assert opset == 11 and np.array_equal(got, want) and dense == 4 - encoded


def test_prune_reports_weights_kept_dense(fake_loads, tmp_path):
    per_decoder, _ = fake_loads
    per_decoder[0] = 256 * 256 * 36
    src = tmp_path / "m.onnx"
    onnx.save(sparse_matmuls(sparsity=0.0), src)
    out = oc.prune(src, 0.5)
    assert any("stored dense: decoding them too would take onnxruntime past" in n
               for r in out.results for n in r.notes)


def test_the_input_file_is_measured_while_the_passes_run(fake_loads, tmp_path):
    """The bar's reference is the input file itself, loaded once in the background from the
    start (loads of one file peak +-0.3 MB apart): it is not written again, and only the encoded
    variants wait for their loads."""
    per_decoder, measured = fake_loads
    per_decoder[0] = 256 * 256 * 36
    src = tmp_path / "m.onnx"
    onnx.save(sparse_matmuls(sparsity=0.0), src)
    oc.prune(src, 0.5)
    assert measured.started == [[str(src)]]
    assert measured.paths[:1] == [str(src)]  # its peak, the first the budget reads
    assert not any(p.endswith("reference.onnx") for p in measured.paths)
    assert len(measured.paths) <= 4


def test_the_meter_sees_what_decoders_cost_onnxruntime_at_load(tmp_path):
    """A real measurement (two child processes at once): 4 MB of weights stored as bitmasks take
    onnxruntime well above what the same weights take dense."""
    from onnxcomp.measure.loadpeak import load_peaks

    dense, encoded = tmp_path / "dense.onnx", tmp_path / "encoded.onnx"
    model = sparse_matmuls(n=4, size=512)
    onnx.save(model, dense)
    encode_weights(model, encoding="sparse")
    onnx.save(model, encoded)
    a, b = load_peaks([dense, encoded])
    assert b > a + 10_000_000  # ~19 bytes of temporaries per weight: ~20 MB


def test_a_meter_starts_only_the_processes_its_next_round_loads(tmp_path):
    """Each measuring process imports onnxruntime (~0.15 s of a core, ~45 MB): the budget's rounds
    say how many the next one loads, so none is started for nothing."""
    from onnxcomp.measure.loadpeak import Meter

    src = tmp_path / "m.onnx"
    onnx.save(sparse_matmuls(n=1), src)
    with Meter(src, spare=2) as meter:
        assert meter.peaks([src], then=1)[0] > 0
        assert len(meter._spares) == 1  # one refinement to come
        assert meter.peaks([src], then=0)[0] > 0
        assert not meter._spares and not meter._running  # the last round: nothing left running


def test_short_of_memory_the_input_is_measured_after_the_passes(fake_loads, tmp_path, monkeypatch):
    """Without room for another load beside the passes, none starts early: the input is written
    and measured once the passes are done, as a model handed in memory is."""
    from onnxcomp.pipeline import run

    per_decoder, measured = fake_loads
    per_decoder[0] = 256 * 256 * 36
    monkeypatch.setattr(run, "BACKGROUND_LOAD_ROOM", 10**12)
    src = tmp_path / "m.onnx"
    onnx.save(sparse_matmuls(sparsity=0.0), src)
    out = oc.prune(src, 0.5)
    assert not measured.started
    assert [p.rsplit("/", 1)[-1] for p in measured.paths[:2]] == ["reference.onnx", "variant0.onnx"]
    assert any("stored dense" in n for r in out.results for n in r.notes)


def test_each_weight_is_read_once_when_the_budget_weighs_its_encodings(fake_loads, monkeypatch):
    """The budget weighs each weight's larger encodings too: they are built from the values and
    tables in hand, not read and found again (the embedding table of a 22 M transformer: 0.4 s and
    +84 MB at the command's peak)."""
    from onnxcomp.graph.weights import Weight

    per_decoder, measured = fake_loads
    per_decoder[0] = 1_500_000  # not all fit: the smaller encodings are weighed
    reads = []
    values = Weight.values
    monkeypatch.setattr(Weight, "values", lambda self: reads.append(self.name) or values(self))
    model = sparse_matmuls()
    rows = encode_weights(model)
    assert {r.kind for r in rows} - {"bitmask", "dense"}  # a larger encoding took a weight's place
    assert sorted(reads) == [f"w{i}" for i in range(4)]
