"""Pruned and clustered weights with gaps and indices in variable-length codes (sparse_codebook_vlc),
and the per-channel frequency order that makes small per-channel tables cheap to code."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encode import encode_weights
from onnxcomp.encode.select import REGISTRY, bound
from onnxcomp.encode.tables import Layout
from tests.test_codebook import _codebook_weight, _conv, _run
from tests.test_vlc import encodes_exactly_and_folds


def _pruned(rng, kind: str, shape, keep: float, k: int) -> np.ndarray:
    w = _codebook_weight(rng, kind, shape=shape, k=k)
    return np.where(rng.random(w.shape) < keep, w, np.float32(0))


def _sizes(w: np.ndarray) -> dict[str, int | None]:
    flat, lay = w.reshape(-1), Layout.of(w.shape, 0)
    return {k: bound(REGISTRY[k], lay).size(flat) for k in
            ("sparse_codebook_vlc", "sparse_codebook4", "sparse_codebook8", "codebook_vlc")}


@pytest.mark.parametrize("kind", ["tensor", "channel", "grid", "shared"])
@pytest.mark.parametrize("opset", [11, 17])
def test_decodes_bit_exactly_and_folds(kind, opset, tmp_path):
    """Every table form decodes bit-exactly (gaps past 255 included) at the model's opset, and
    onnxruntime folds the decoder at session creation: the optimised graph is the bare Conv."""
    rng = np.random.default_rng(len(kind) + opset)
    shape = (16, 64, 3, 3)
    w = _pruned(rng, kind, shape, keep=0.05, k=6)
    w[3] = 0  # whole zero channels: gaps far above 255 need fillers
    w[4, :40] = 0
    choice = encodes_exactly_and_folds(_conv(w, opset=opset), w, "sparse_codebook_vlc", rng, tmp_path)
    assert choice.bytes == _sizes(w)["sparse_codebook_vlc"]


def test_a_large_pruned_layer_takes_the_variable_length_code():
    """A 590 K-weight conv pruned to 5 % with 4 values per channel (the Deep Compression setting):
    gaps cost about their entropy (5.7 bits, not 8) and the per-channel ranked indices about 2
    bits, so the file is a fifth smaller than with the fixed-width sparse encodings (12 bits per
    nonzero), two decoders' framing included, and the automatic choice takes it."""
    rng = np.random.default_rng(7)
    w = _pruned(rng, "grid", (256, 256, 3, 3), keep=0.05, k=4)
    sizes = _sizes(w)
    fixed = min(sizes["sparse_codebook4"], sizes["sparse_codebook8"])
    assert sizes["sparse_codebook_vlc"] < 0.8 * fixed
    nnz = np.count_nonzero(w)
    p = 0.05
    entropy_bytes = w.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8 + nnz * 2 / 8
    assert sizes["sparse_codebook_vlc"] < 1.15 * entropy_bytes + 256 * 4 * 2 + 8000
    model = _conv(w)
    x = rng.normal(size=(1, 256, 5, 5)).astype(np.float32)
    ref = _run(model, x)[0]
    assert encode_weights(model, encoding="smallest")[0].kind == "sparse_codebook_vlc"
    assert np.array_equal(_run(model, x)[0], ref)


def test_small_pruned_layers_keep_the_fixed_width_encodings():
    """On a small layer the two decoders' framing outweighs the saving: the choice stays with a fixed-width encoding."""
    rng = np.random.default_rng(8)
    w = _pruned(rng, "grid", (16, 16, 3, 3), keep=0.1, k=8)
    model = _conv(w)
    assert encode_weights(model)[0].kind != "sparse_codebook_vlc"


def test_per_channel_tables_are_ranked_per_channel():
    """Each channel's most frequent value sits at a different entry of its sorted table; ranked per
    channel the index histogram is one peak (1, 2, 4, 4 bits per symbol: 1.45 on average for an
    entropy of 1.15), well under the 2 bits of a 4-entry fixed-width code; unranked, the tensor's
    histogram would be flat and cost more than 2."""
    rng = np.random.default_rng(9)
    c, n = 64, 2304
    table = np.sort(rng.normal(size=(c, 4)), axis=1).astype(np.float16).astype(np.float32)
    probs = np.array([0.75, 0.15, 0.05, 0.05])
    idx = np.stack([rng.permutation(4)[rng.choice(4, n, p=probs)] for _ in range(c)])
    w = np.take_along_axis(table, idx, 1).reshape(c, 256, 3, 3)
    size = bound(REGISTRY["codebook_vlc"], Layout.of(w.shape, 0)).size(w.reshape(-1))
    assert size * 8 < 1.6 * w.size
