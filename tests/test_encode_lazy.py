"""Choosing a weight's storage without ranking every element: on real weights (vit_digits, clustered
and pruned), ``detect`` prices its tables from a plain sort, ranks the elements only for the table
that is written, and every table still rebuilds the weight bit-exactly."""
from __future__ import annotations

import numpy as np
import pytest

import onnxcomp as oc
from onnxcomp.encode import tables as T
from onnxcomp.encode.combined import nonzero_tables
from onnxcomp.graph.weights import find_weights

from .models import MODELS

MLP_UP = "onnx::MatMul_303"  # a 256 x 1024 MatMul: output channels are columns (a transposed view)


@pytest.fixture(scope="module")
def weights():
    def flat(model) -> tuple[np.ndarray, T.Layout]:
        w = find_weights(model.proto).by_name()[MLP_UP]
        return w.values().reshape(-1), T.Layout.of(w.shape, w.out_axis)

    src = MODELS / "vit_digits.onnx"
    return {"clustered": flat(oc.cluster(src, bits=3, encoding="dense")),
            "pruned": flat(oc.prune(src, 0.7, encoding="dense"))}


def _rebuilt(t: T.Table, flat: np.ndarray) -> np.ndarray:
    idx = t.idx.astype(np.int64)
    if t.kind == "tensor":
        return t.values[idx]
    lay = t.layout
    chan = (np.arange(flat.size) // lay.inner) % lay.channels
    if t.kind == "shared":
        return t.values.astype(np.float32)[idx] * t.scales.astype(np.float32)[chan]
    table = t.values.astype(np.float32) * t.scales.astype(np.float32)[:, None] if t.store == "grid" else t.values
    return table[chan, idx]


@pytest.mark.parametrize("kind", ["clustered", "pruned"])
def test_tables_are_priced_without_ranks_and_rebuild_the_weight(weights, kind, monkeypatch):
    flat, layout = weights[kind]
    calls = []
    ranks = T.row_ranks
    monkeypatch.setattr(T, "row_ranks", lambda *a, **k: calls.append(1) or ranks(*a, **k))
    found = T.detect(flat, layout)
    assert found and all(t.table_bytes() > 0 for t in found)
    assert calls == []  # sizes need the tables only: no argsort of the whole weight
    for t in found:
        assert np.array_equal(_rebuilt(t, flat), flat), (t.kind, t.store)
    if kind == "clustered":  # 3-bit codebooks on an int8 grid: ranked by lookup, never sorted
        assert {(t.kind, t.store) for t in found} >= {("channel", "grid")} and calls == []
    else:
        assert 1 <= len(calls) <= 2  # channel tables share one ranking (it is let go once unrolled)


def test_block_distinct_matches_the_full_ranking(weights):
    flat, layout = weights["clustered"]
    counts, vals = T.row_distinct(layout.view(flat), block=1000)  # a few rows per block
    rows = layout.rows(flat)
    distinct = [np.unique(r) for r in rows]
    assert np.array_equal(counts, [d.size for d in distinct]) and np.array_equal(vals, np.concatenate(distinct))
    ranks = np.stack([np.searchsorted(d, r) for d, r in zip(distinct, rows)])
    assert np.array_equal(T.row_ranks(rows), ranks)
    assert np.array_equal(T.row_ranks(layout.view(flat), block=1000), ranks)
    q, s = T.factor(T._table(counts, vals, int(counts.max())), T.GRID8)
    assert np.array_equal(T.grid_ranks(flat, layout, counts, q, s, block=1000), ranks)
    assert np.array_equal(T.grid_ranks(flat, layout, counts, q, s, block=1000, flat_order=True), layout.unrows(ranks))


def test_nonzero_tables_of_a_pruned_weight_index_its_nonzeros(weights):
    flat, layout = weights["pruned"]
    nz = np.flatnonzero(flat)
    for t in nonzero_tables(flat, layout):
        assert np.array_equal(_rebuilt(t, flat)[nz], flat[nz])
