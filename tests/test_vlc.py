"""The variable-length codebook encoding and the uniform grid it pays off for."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcomp as oc
from onnxcomp.encode import encode_weights
from onnxcomp.encode.select import REGISTRY, bound
from onnxcomp.encode.tables import Layout, detect
from onnxcomp.encode.vlc import design
from onnxcomp.passes.cluster.fit import fit
from tests.models import MODELS, output_error
from tests.test_codebook import _codebook_weight, _conv, _decoded, _run


def _grid_weight(rng, shape, sigma_steps: float = 3.0, laplace: bool = False) -> np.ndarray:
    """q * s[c] with q a rounded Gaussian (or Laplacian) and a float16 scale per channel."""
    c, n = shape[0], int(np.prod(shape[1:]))
    s = np.float16(rng.uniform(1e-3, 0.1, c)).astype(np.float32)
    noise = rng.laplace(size=(c, n)) if laplace else rng.normal(size=(c, n))
    q = np.clip(np.round(noise * sigma_steps), -100, 100)
    return (q * s[:, None] + 0.0).astype(np.float32).reshape(shape)


def _entropy_bits(w: np.ndarray) -> float:
    t = detect(w.reshape(-1), Layout.of(w.shape, 0))
    counts = np.bincount(next(x for x in t if x.kind == "shared").idx.astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum() * w.size)


@pytest.mark.parametrize("kind", ["tensor", "channel", "grid", "shared", "peaked"])
@pytest.mark.parametrize("opset", [11, 17])
def test_decodes_bit_exactly_and_folds(kind, opset, tmp_path):
    """Every table form decodes bit-exactly at opset 11 (no raise), and onnxruntime folds the
    whole decoder at session creation: the optimised graph is the bare Conv."""
    rng = np.random.default_rng(len(kind) + opset)
    shape = (12, 67, 3, 3)  # 7236 weights: not a multiple of 8
    w = _grid_weight(rng, shape, laplace=True) if kind == "peaked" else _codebook_weight(rng, kind, shape, k=16)
    model = _conv(w, opset=opset)
    encodes_exactly_and_folds(model, w, "codebook_vlc", rng, tmp_path)


def encodes_exactly_and_folds(model: onnx.ModelProto, w: np.ndarray, kind: str, rng, tmp_path):
    """Encode the conv's weight as ``kind``: the opset stays, onnxruntime rebuilds ``w`` bit for
    bit and gives the same output, and its basic optimisation folds the decoder away (the
    optimised graph is the bare Conv). Returns the encoding choice."""
    opset = model.opset_import[0].version
    x = rng.normal(size=(1, w.shape[1], 5, 5)).astype(np.float32)
    ref = _run(model, x)[0]
    choice = encode_weights(model, encoding=kind)[0]
    assert choice.kind == kind
    assert model.opset_import[0].version == opset
    assert np.array_equal(_decoded(model, w.shape, np.float32).view(np.uint32), w.view(np.uint32))
    assert np.array_equal(_run(model, x)[0], ref)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node] == ["Conv"]
    return choice


def test_peaked_indices_cost_close_to_their_entropy_and_win_the_automatic_choice():
    """A uniform grid's indices (a rounded Gaussian, ~3.6 bits of entropy) are stored within 4 % of
    their entropy plus the table, well under the 7-bit packed encoding the same table needs."""
    w = _grid_weight(np.random.default_rng(3), (256, 1152, 1, 1), sigma_steps=3.0)
    layout = Layout.of(w.shape, 0)
    vlc = bound(REGISTRY["codebook_vlc"], layout).size(w.reshape(-1))
    packed = bound(REGISTRY["codebook_packed"], layout).size(w.reshape(-1))
    table = 256 * 2 + 255 * 2
    assert vlc < 1.04 * _entropy_bits(w) / 8 + table + 2500
    assert vlc < 0.75 * packed
    model = _conv(w)
    assert encode_weights(model, encoding="smallest")[0].kind == "codebook_vlc"


def test_design_degenerate_histograms():
    """One used symbol costs one bit per index; a flat histogram of 16 symbols costs little more
    than 4 bits (the groups shrink down the code tree instead of paying a flag bit on top)."""
    code, bits = design(np.array([0, 50, 0]))
    assert bits == 50 and code.widths == (0,) and code.order[0] == 1
    code, bits = design(np.full(16, 10))
    assert bits <= 160 * 4.1


def test_grid_fit_rows_lie_on_their_own_step_and_detect_as_one_small_shared_table():
    """Each row is rounded to its own float16 step; the encoder finds one shared table (rows in
    lowest terms, not each row's own multiple of its step) of at most 255 entries."""
    rng = np.random.default_rng(4)
    w = (rng.normal(size=(32, 64)) * rng.uniform(0.2, 3, (32, 1))).astype(np.float32)
    f = fit(w.reshape(-1), Layout.of(w.shape, 0), 16, "grid")
    steps = f.table[:, -1] - f.table[:, -2]
    assert np.array_equal(np.float16(steps).astype(np.float32), steps)
    ints = f.values.reshape(w.shape) / steps[:, None]
    assert np.array_equal(ints, np.round(ints))
    shared = [t for t in detect(f.values, Layout.of(w.shape, 0)) if t.kind == "shared"]
    assert shared and shared[0].width == np.unique(ints).size <= 255
    assert 3 * w.size < f.coded_bits < 5 * w.size  # about log2(16) bits on Gaussian rows


def test_grid_beats_a_codebook_on_heavy_tailed_weights():
    """On Laplacian rows (real weights are often heavier-tailed than Gaussian) a 16-step grid in
    the variable-length code stores fewer bits than 16-entry per-channel codebooks, at about half
    of their error."""
    from onnxcomp.graph.weights import Weight
    from onnxcomp.passes.cluster.costs import fit_bits, storage_bits

    rng = np.random.default_rng(6)
    w = (rng.laplace(size=(128, 576)) * rng.uniform(0.5, 2, (128, 1))).astype(np.float32)
    lay = Layout.of(w.shape, 0)
    grid, book = fit(w.reshape(-1), lay, 16, "grid"), fit(w.reshape(-1), lay, 16, "channel")
    weight = Weight("w", "initializer", w.shape, np.dtype(np.float32), "gemm_b", 0, 1)
    assert fit_bits(weight, grid, 4) < storage_bits(weight, "channel", 4)
    assert grid.rel_error < 0.6 * book.rel_error


def test_grid_clustering_of_a_real_model_stays_in_the_code_after_correction(tmp_path):
    """mobilenet_digits on a 2-bit grid with calibration data (GPTQ, then the affine correction folds
    its scales into the steps): every clustered layer is still stored as indices + table, over 10x
    smaller than its float32 weights, and the outputs move as little as with 2-bit codebooks."""
    src, calib = MODELS / "mobilenet_digits.onnx", MODELS / "digits_calib.npz"
    err = output_error(src, calib)
    grid = oc.cluster(src, bits=2, granularity="grid", data=calib, encoding="smallest")
    book = oc.cluster(src, bits=2, granularity="channel", data=calib, encoding="smallest")
    clustered = {c.name for c in grid.result.applied}
    kinds = {e.kind for e in grid.encodings if e.name in clustered}
    assert "dense" not in kinds and "codebook_vlc" in kinds
    stored = sum(e.bytes for e in grid.encodings if e.name in clustered)
    assert sum(4 * c.params_before for c in grid.result.applied) / stored > 10
    assert oc.save(grid.model.proto, tmp_path / "g.onnx").stat().st_size < 0.2 * src.stat().st_size
    assert err(grid) < 1.1 * err(book)


def test_uniform_bits_take_the_grid_only_where_it_is_no_larger_and_more_accurate(tmp_path):
    """``--bits 4`` with ``auto`` granularity: a heavy-tailed (Laplacian) layer takes the grid in
    the variable-length code — a file no larger than per-channel codebooks, with outputs that
    move less — while the same layer with light-tailed (uniform) weights keeps its codebook."""
    from onnx import helper

    from tests.models import init, make, vi

    def model(weights: np.ndarray) -> onnx.ModelProto:
        node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
        return make([node], [vi("x", [8, 256])], [vi("y", [8, 192])], [init("W", weights)])

    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 256)).astype(np.float32)
    for weights, grid_expected in ((rng.laplace(size=(256, 192)), True), (rng.uniform(-1, 1, (256, 192)), False)):
        src = model(weights.astype(np.float32))
        ref = _run_mm(src, x)
        auto = oc.cluster(src, bits=4, encoding="smallest")
        book = oc.cluster(src, bits=4, granularity="channel", encoding="smallest")
        assert any("uniform grid" in n for n in auto.result.notes) == grid_expected
        sizes = [len(m.model.proto.SerializeToString()) for m in (auto, book)]
        errs = [float(np.square(_run_mm(m.model.proto, x) - ref).sum()) for m in (auto, book)]
        assert sizes[0] <= sizes[1]
        if grid_expected:
            assert errs[0] < 0.8 * errs[1]
        else:
            assert errs[0] == errs[1]


def test_recipes_offer_the_grid_and_encode_it_at_the_end():
    """A recipe's cluster step stores nothing (the recipe encodes once, at the end): the grid is
    still offered, and the final model holds it in the variable-length code, as a direct
    ``cluster`` run does, byte for byte."""
    from onnx import helper

    from onnxcomp.pipeline import recipe
    from tests.models import init, make, vi

    w = np.random.default_rng(9).laplace(size=(256, 192)).astype(np.float32)
    src = make([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [vi("x", [8, 256])],
               [vi("y", [8, 192])], [init("W", w)])
    replayed = recipe.apply(src, recipe.make([("cluster", {"bits": 4})], encoding="smallest"))
    direct = oc.cluster(src, bits=4, encoding="smallest")
    assert {n.op_type for n in replayed.proto.graph.node} >= {"ScatterElements", "MatMul"}
    assert replayed.proto.SerializeToString() == direct.model.proto.SerializeToString()


def _run_mm(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_large_tensors_keep_a_fixed_width_encoding(monkeypatch):
    """Above MAX_ELEMENTS the variable-length code does not apply (its folding temporaries would
    cost hundreds of MB when the session loads): the automatic choice falls back."""
    from onnxcomp.encode import vlc

    w = _grid_weight(np.random.default_rng(8), (64, 96, 1, 1))
    layout = Layout.of(w.shape, 0)
    assert bound(REGISTRY["codebook_vlc"], layout).size(w.reshape(-1)) is not None
    monkeypatch.setattr(vlc, "MAX_ELEMENTS", w.size - 1)
    assert bound(REGISTRY["codebook_vlc"], layout).size(w.reshape(-1)) is None
    assert encode_weights(_conv(w))[0].kind not in ("codebook_vlc", "dense")


def test_fixed_family_leaves_the_variable_length_code_out():
    """--encoding fixed leaves the variable-length code out: the weight that ``smallest`` stores in
    it gets a fixed-width codebook encoding instead, larger but bit-exact."""
    w = _grid_weight(np.random.default_rng(9), (32, 48, 3, 3), laplace=True)
    auto = encode_weights(_conv(w), encoding="smallest")[0]
    assert auto.kind == "codebook_vlc"
    model = _conv(w)
    fixed = encode_weights(model, encoding="fixed")[0]
    assert fixed.kind.startswith("codebook") and "vlc" not in fixed.kind
    assert auto.bytes < fixed.bytes < w.nbytes / 3
    assert np.array_equal(_decoded(model, w.shape, np.float32).view(np.uint32), w.view(np.uint32))
