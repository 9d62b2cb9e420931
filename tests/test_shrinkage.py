"""Ledoit-Wolf shrinkage of the OBS statistics: sklearn's intensity on independent rows, and a
sample's correlated positions counted as one sample, not as many."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.measure.stats import StatsRequest, accumulate


def _intensity(stats, cov: np.ndarray) -> float:
    """The shrinkage a with stats.cov = (1 - a) cov + a (tr cov / D) I, read off one off-diagonal."""
    i, j = np.unravel_index(np.argmax(np.abs(cov - np.diag(np.diag(cov)))), cov.shape)
    return 1.0 - stats.cov[i, j] / cov[i, j]


def test_independent_rows_take_sklearns_ledoit_wolf_intensity():
    sk = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    half = rng.standard_normal((150, 40)) @ rng.standard_normal((40, 40)) * 0.3
    x = np.concatenate([half, -half]).astype(np.float32)  # mean exactly zero: centred = uncentred
    req = StatsRequest("w", "x", "matrix")
    st = accumulate([x], None, req, samples=1, ledoit=True)[0]  # every row drawn
    emp = x.astype(np.float64).T @ x / len(x)
    want = sk.ledoit_wolf_shrinkage(x.astype(np.float64), assume_centered=True)
    assert _intensity(st, emp) == pytest.approx(want, rel=1e-3)


def test_positions_of_one_sample_do_not_count_as_independent():
    """Repeating every sample's vector at 8 positions adds no information: the intensity must stay
    what 1 position per sample gives (the dimension rule D/(D+n) would shrink 8x less)."""
    rng = np.random.default_rng(1)
    v = (rng.standard_normal((48, 24)) @ rng.standard_normal((24, 24))).astype(np.float32)
    one = v[:, :, None, None]  # [N, C, 1, 1]: one position per sample
    many = np.repeat(np.repeat(one, 4, axis=2), 2, axis=3)  # the same vector at 8 positions
    req = StatsRequest("w", "x", "conv")
    a1 = accumulate([one], None, req, samples=48, ledoit=True)[0]
    a8 = accumulate([many], None, req, samples=48, ledoit=True)[0]
    emp = v.astype(np.float64).T @ v / len(v)
    assert _intensity(a8, emp) == pytest.approx(_intensity(a1, emp), rel=1e-4)
    assert 0.05 < _intensity(a1, emp) < 1.0  # 48 samples in 24 dimensions: clearly shrunk
    plain = accumulate([many], None, req, samples=48)[0]
    assert _intensity(plain, emp) < _intensity(a8, emp) / 2


def test_a_large_mean_does_not_hide_the_noise():
    """Post-ReLU features: a big common mean on top of few samples in many dimensions. The
    centred spread is what is shrunk, so the intensity stays what the zero-mean data get."""
    rng = np.random.default_rng(2)
    z = np.concatenate([h := rng.standard_normal((40, 64)), -h]).astype(np.float32)  # zero mean
    req = StatsRequest("w", "x", "matrix")
    centred = accumulate([z], None, req, samples=1, ledoit=True)[0]
    shifted = accumulate([z + 5.0], None, req, samples=1, ledoit=True)[0]
    emp = z.astype(np.float64).T @ z / len(z)
    a0 = _intensity(centred, emp)
    assert a0 > 0.2  # 80 samples in 64 dimensions
    mu = np.full(64, 5.0)
    assert _intensity_centred(shifted, emp, mu) == pytest.approx(a0, rel=0.1)


def _intensity_centred(stats, cov: np.ndarray, mu: np.ndarray) -> float:
    i, j = np.unravel_index(np.argmax(np.abs(cov - np.diag(np.diag(cov)))), cov.shape)
    return 1.0 - (stats.cov[i, j] - mu[i] * mu[j]) / cov[i, j]
