"""1-D k-means: vectorised Lloyd + swaps against the exact DP, weights, zeros, dtype rounding."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxcomp.algo.kmeans import kmeans_rows
from onnxcomp.algo.kmeans_dp import kmeans_dp


def _brute(x: np.ndarray, k: int) -> float:
    """Optimal SSE by trying every split of the sorted values into k contiguous runs."""
    xs = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(xs)), k - 1):
        parts = np.split(xs, cuts)
        best = min(best, sum(((p - p.mean()) ** 2).sum() for p in parts))
    return best


def test_dp_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(size=9)
        assert kmeans_dp(x, 3)[1] == pytest.approx(_brute(x, 3), rel=1e-9, abs=1e-12)


def test_dp_matches_sklearn_on_small_input():
    from sklearn.cluster import KMeans

    x = np.random.default_rng(1).laplace(size=120)
    ref = KMeans(4, n_init=4, random_state=0).fit(x[:, None]).inertia_
    assert kmeans_dp(x, 4)[1] <= ref * (1 + 1e-9)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_rows_close_to_optimal(init):
    rng = np.random.default_rng(2)
    x = rng.standard_t(4, size=(8, 400))
    r = kmeans_rows(x, 8, init=init)
    opt = np.array([kmeans_dp(row, 8)[1] for row in x])
    assert np.all(r.sse >= opt * (1 - 1e-6))
    assert np.mean(r.sse / opt) < 1.1
    q = np.take_along_axis(r.centroids, r.labels.astype(np.int64), axis=1)
    np.testing.assert_allclose(((x - q) ** 2).sum(axis=1), r.sse, rtol=1e-6)


def test_weights_and_zero_weight_elements():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 300))
    w = rng.uniform(0.1, 3.0, size=x.shape)
    w[:, ::4] = 0.0
    r = kmeans_rows(x, 4, weights=w)
    opt = np.array([kmeans_dp(x[i], 4, w[i])[1] for i in range(4)])
    assert np.all(r.sse >= opt * (1 - 1e-6)) and np.mean(r.sse / opt) < 1.1
    # zero-weight elements do not move the centroids
    far = x.copy()
    far[:, ::4] = 100.0
    r2 = kmeans_rows(far, 4, weights=w)
    np.testing.assert_allclose(r.centroids, r2.centroids)


def test_few_distinct_values_are_exact():
    x = np.tile(np.array([-1.5, 0.25, 3.0], np.float32), (3, 50))
    r = kmeans_rows(x, 4)
    q = np.take_along_axis(r.centroids, r.labels.astype(np.int64), axis=1)
    np.testing.assert_array_equal(q, x)


def test_dtype_rounding_gives_codebook_values():
    x = np.random.default_rng(4).normal(size=(3, 500)).astype(np.float32)
    r = kmeans_rows(x, 16, dtype=np.float16)
    assert np.array_equal(r.centroids, r.centroids.astype(np.float16).astype(np.float64))
    q = np.take_along_axis(r.centroids, r.labels.astype(np.int64), axis=1)
    assert all(np.unique(row).size <= 16 for row in q)


@pytest.mark.parametrize("k", [1, 2])
def test_one_or_two_clusters_fit_without_swaps(k):
    """k < 3 (e.g. 1-bit codebooks with a zero code of their own) has no merge/split move."""
    x = np.random.default_rng(3).normal(size=(4, 50))
    r = kmeans_rows(x, k)
    assert r.centroids.shape == (4, k) and np.isfinite(r.centroids).all()
    assert (r.labels < k).all()
