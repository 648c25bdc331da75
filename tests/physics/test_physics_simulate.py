"""simulate_slice / Simulator: shapes, seeding, upsampling path, reuse across processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from physics_phantoms import piecewise_phantom

from sparsect.physics import Geometry, NoiseModel, Projector, Simulator, mu_to_hu, simulate_slice

GEOMETRY = Geometry("parallel", views=40, image_size=64, pixel_size_mm=3.0)
NOISE = NoiseModel(i0=1e5)


@pytest.fixture(scope="module")
def hu_slice() -> np.ndarray:
    return mu_to_hu(piecewise_phantom(64, 3.0))  # water body in air, -1000 HU outside


@pytest.mark.parametrize("upsample", [1, 2])
def test_shapes_dtypes_and_grey_levels(hu_slice: np.ndarray, upsample: int) -> None:
    sinogram, fbp_hu = simulate_slice(hu_slice, GEOMETRY, NOISE, seed=0, upsample=upsample,
                                      device="cpu")
    assert sinogram.shape == (40, GEOMETRY.detector_count)
    assert fbp_hu.shape == (64, 64)
    assert sinogram.dtype == fbp_hu.dtype == np.float32
    # Water patch ~0 HU, air corner ~-1000 HU (tolerances cover noise and streaks).
    assert abs(fbp_hu[28:36, 8:16].mean()) < 30.0
    assert abs(fbp_hu[:6, :6].mean() + 1000.0) < 30.0


def test_same_seed_same_data_other_seed_other_noise(hu_slice: np.ndarray) -> None:
    with Simulator(GEOMETRY, NOISE, device="cpu") as simulate:
        first = simulate(hu_slice, seed=3)
        again = simulate(hu_slice, seed=3)
        other = simulate(hu_slice, seed=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # Different noise, same underlying data.
    assert np.abs(first[0] - other[0]).mean() < 0.05


def test_simulator_matches_function_and_reuses_projectors(hu_slice: np.ndarray) -> None:
    simulate = Simulator(GEOMETRY, NOISE, upsample=2, device="cpu", filter="hann")
    result = simulate(hu_slice, seed=1)
    projectors = dict(simulate._projectors)  # noqa: SLF001 - checking the cache itself
    assert len(projectors) == 2  # fine grid for projection, reconstruction grid for FBP
    simulate(hu_slice, seed=2)
    assert all(simulate._projectors[k] is v for k, v in projectors.items())  # noqa: SLF001
    expected = simulate_slice(hu_slice, GEOMETRY, NOISE, seed=1, upsample=2, device="cpu",
                              filter="hann")
    np.testing.assert_array_equal(result[1], expected[1])
    simulate.close()


def test_projector_cache_argument(hu_slice: np.ndarray) -> None:
    cache: dict[tuple[Geometry, str], Projector] = {}
    simulate_slice(hu_slice, GEOMETRY, NOISE, seed=0, upsample=1, device="cpu", projectors=cache)
    assert len(cache) == 1  # upsample=1 projects and reconstructs with one operator
    for projector in cache.values():
        projector.close()


def test_pickled_simulator_gives_identical_results(hu_slice: np.ndarray) -> None:
    simulate = Simulator(GEOMETRY, NOISE, device="cpu")
    expected = simulate(hu_slice, seed=5)
    clone = pickle.loads(pickle.dumps(simulate))  # what a worker process receives
    np.testing.assert_array_equal(clone(hu_slice, seed=5)[1], expected[1])
    simulate.close()
    clone.close()


def test_fan_beam_and_noiseless(hu_slice: np.ndarray) -> None:
    fan = Geometry("fan", views=60, image_size=64, pixel_size_mm=3.0)
    sinogram, fbp_hu = simulate_slice(hu_slice, fan, NoiseModel(i0=np.inf), seed=0,
                                      device="cpu")
    assert sinogram.shape == (60, fan.detector_count)
    assert abs(fbp_hu[28:36, 8:16].mean()) < 30.0


def test_bad_inputs(hu_slice: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape"):
        simulate_slice(hu_slice[:-1], GEOMETRY, NOISE, seed=0, device="cpu")
    with pytest.raises(ValueError, match="upsample"):
        Simulator(GEOMETRY, NOISE, upsample=0)
    with pytest.raises(ValueError, match="ram-lak"):
        Simulator(GEOMETRY, NOISE, filter="ramp")
