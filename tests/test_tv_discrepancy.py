"""TV with ``weight: discrepancy``: each slice's weight chosen against its own residual
floor (:class:`sparsect.methods.classical.Classical`,
:func:`sparsect.physics.noisefloor.tv_by_discrepancy`)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsect.errors import InputError
from sparsect.methods.case import Case, Output
from sparsect.methods.classical import DISCREPANCY_WEIGHTS, Classical
from sparsect.physics import Geometry, NoiseModel, mu_to_hu
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.noisefloor import discrepancy_choice
from sparsect.physics.reconstruct import reconstruct_stack
from sparsect.stages.evaluate import residuals

SIZE = 48
GEOMETRY = Geometry("parallel", views=32, image_size=SIZE, pixel_size_mm=5.0)
ITERATIONS = 20


def phantom(count: int = 2, seed: int = 0) -> np.ndarray:
    """``(count, SIZE, SIZE)`` HU: a water ellipse with bone, lung and fat, a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j]
    out = np.full((count, SIZE, SIZE), -1000.0, np.float32)
    body = (xx / 0.7) ** 2 + (yy / 0.5) ** 2 < 1
    for k in range(count):
        out[k][body] = 40.0 + rng.normal(0, 15, body.sum())
        out[k][(xx - 0.3) ** 2 + yy**2 < 0.02] = 900.0
        out[k][(xx + 0.3) ** 2 + (yy - 0.1) ** 2 < 0.04 + 0.01 * k] = -800.0
        out[k][body & ((xx / 0.62) ** 2 + (yy / 0.42) ** 2 > 1)] = -100.0
    return out


def case(i0: float) -> Case:
    acquisition = Acquisition(GEOMETRY, NoiseModel(i0=i0), device="cpu")
    hu = phantom()
    sinograms, fbp = acquisition.simulate(hu, [(k,) for k in range(len(hu))])
    return Case(fbp, sinograms, acquisition)


NOISY, CLEAN = 2e3, 1e6


@pytest.fixture(scope="module")
def chosen() -> dict[float, tuple[Case, Output]]:
    """I0 -> (case, TV output with weight: discrepancy), for a noisy and a clean scan of
    the same phantom."""
    method = Classical("tv", {"weight": "discrepancy", "iterations": ITERATIONS})
    return {i0: (scan, method.apply(scan)["tv"]) for i0 in (NOISY, CLEAN)
            for scan in [case(i0)]}


def test_noisier_scan_gets_a_larger_weight(chosen):
    noisy, clean = chosen[NOISY][1], chosen[CLEAN][1]
    noisy_w, clean_w = np.array(noisy.extra["weights"]), np.array(clean.extra["weights"])
    assert noisy_w.shape == clean_w.shape == (2,)
    assert set(noisy_w) | set(clean_w) <= set(DISCREPANCY_WEIGHTS)
    assert (np.array(noisy.extra["floors"]) > np.array(clean.extra["floors"])).all()
    assert (noisy_w > clean_w).all()


@pytest.fixture(scope="module")
def grid(chosen) -> list[dict[float, np.ndarray]]:
    """Per weight of the grid, I0 -> the TV images (HU) of both scans with that weight."""
    stack = np.concatenate([chosen[i0][0].sinograms for i0 in (NOISY, CLEAN)])
    out = []
    for weight in DISCREPANCY_WEIGHTS:
        images = mu_to_hu(reconstruct_stack("tv", GEOMETRY, stack, device="cpu",
                                            iterations=ITERATIONS, weight=weight))
        out.append({NOISY: images[:2], CLEAN: images[2:]})
    return out


@pytest.mark.parametrize("i0", [NOISY, CLEAN])
def test_chosen_residual_reaches_the_floor_and_the_next_weight_does_not(chosen, grid, i0):
    """The chosen image's residual is at most its floor and the next grid weight's is
    above it (the last weight reaching the floor: discrepancy_choice's rule); the image
    is TV's with that weight."""
    scan, output = chosen[i0]
    floor = np.array(output.extra["floors"])
    weights = np.array(output.extra["weights"])
    reached, _ = residuals(output.images, scan.sinograms, GEOMETRY)
    assert (reached <= floor * (1 + 1e-5)).all()
    images = [by_weight[i0] for by_weight in grid]
    by_weight = np.stack([residuals(image, scan.sinograms, GEOMETRY)[0] for image in images])
    picks = discrepancy_choice(by_weight, floor)
    np.testing.assert_array_equal(np.asarray(DISCREPANCY_WEIGHTS)[picks], weights)
    for n, k in enumerate(picks):
        assert 0 < k < len(DISCREPANCY_WEIGHTS) - 1  # inside the grid, not at its ends
        assert by_weight[k, n] <= floor[n] * (1 + 1e-5)
        assert by_weight[k + 1, n] > floor[n]
        np.testing.assert_allclose(output.images[n], images[k][n], atol=0.01)


def reconstruct_hu(scan: Case, weight: float) -> np.ndarray:
    return mu_to_hu(reconstruct_stack("tv", GEOMETRY, scan.sinograms, device="cpu",
                                      iterations=ITERATIONS, weight=weight))


@pytest.mark.parametrize("weight", ["auto", "Discrepancy", None, [0.03]])
def test_unknown_weight_is_refused(weight):
    with pytest.raises(InputError, match="'weight'") as error:
        Classical("tv", {"weight": weight, "iterations": 10})
    assert "discrepancy" in str(error.value) and "number" in str(error.value)


def test_numeric_weight_unchanged():
    scan = case(1e5)
    output = Classical("tv", {"weight": 0.02, "iterations": ITERATIONS}).apply(scan)["tv"]
    direct = reconstruct_hu(scan, 0.02)
    np.testing.assert_array_equal(output.images, direct)
    assert output.extra == {}
