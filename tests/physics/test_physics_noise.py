"""Photon noise: exact passthrough, delta-method variance, bias, validation, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsect.physics import NoiseModel

SAMPLES = 400_000


def test_noiseless_returns_input_exactly() -> None:
    sinogram = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    out = NoiseModel(i0=math.inf).apply(sinogram, np.random.default_rng(1))
    assert out.dtype == sinogram.dtype
    np.testing.assert_array_equal(out, sinogram)
    assert out is not sinogram


@pytest.mark.parametrize(("p", "i0"), [(2.0, 1e4), (4.0, 1e5)])
def test_variance_and_mean_match_delta_method(p: float, i0: float) -> None:
    # Var[-log(N / i0)] ~ 1 / E[N] = exp(p) / i0 for N ~ Poisson(i0 exp(-p)); the
    # sample variance of 4e5 draws has a relative standard error of ~0.2%.
    noisy = NoiseModel(i0=i0).apply(np.full(SAMPLES, p), np.random.default_rng(0))
    expected_variance = math.exp(p) / i0
    assert noisy.var(dtype=np.float64) == pytest.approx(expected_variance, rel=0.05)
    # Bias is ~ exp(p) / (2 i0) (second-order delta method), < 3e-4 here.
    assert abs(noisy.mean(dtype=np.float64) - p) < 1e-3


def test_electronic_noise_adds_variance() -> None:
    p, i0, std = 3.0, 1e4, 20.0
    noisy = NoiseModel(i0=i0, electronic_std=std).apply(np.full(SAMPLES, p),
                                                        np.random.default_rng(0))
    counts = i0 * math.exp(-p)
    assert noisy.var() == pytest.approx((counts + std**2) / counts**2, rel=0.05)


def test_photon_starvation_is_finite() -> None:
    noisy = NoiseModel(i0=100.0).apply(np.full(1000, 50.0), np.random.default_rng(0))
    # Zero counts are floored at 0.1 photon: -log(0.1 / 100) = log(1000).
    assert np.all(np.isfinite(noisy))
    assert noisy.max() == pytest.approx(math.log(1000.0), rel=1e-5)


def test_seeded_rng_is_reproducible_and_seeds_differ() -> None:
    sinogram = np.full((20, 30), 1.5, np.float32)
    model = NoiseModel(i0=1e4)
    a = model.apply(sinogram, np.random.default_rng(7))
    b = model.apply(sinogram, np.random.default_rng(7))
    c = model.apply(sinogram, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32


@pytest.mark.parametrize("i0", [0.0, -5.0, math.nan])
def test_invalid_i0_raises(i0: float) -> None:
    with pytest.raises(ValueError, match="i0"):
        NoiseModel(i0=i0)


def test_invalid_electronic_std_raises() -> None:
    with pytest.raises(ValueError, match="electronic_std"):
        NoiseModel(electronic_std=-1.0)
