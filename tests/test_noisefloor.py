"""The per-scan residual floor (:mod:`sparsect.physics.noisefloor`) and what stops at it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsect.models.consistency import conjugate_gradient_to_floor, residual
from sparsect.physics import Geometry, NoiseModel
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.noisefloor import (
    discrepancy_choice,
    estimate_i0,
    residual_floor,
)
from sparsect.physics.operator import ct_operator
from sparsect.physics.units import MU_WATER_PER_MM
from sparsect.stages.evaluate import residuals

GEOMETRY = Geometry("parallel", views=40, image_size=64, pixel_size_mm=4.0)


def phantom(count: int = 3, seed: int = 0) -> np.ndarray:
    """``(count, 64, 64)`` HU: a water ellipse body with bone, fat and lung inserts and a
    little texture, in air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    out = np.full((count, 64, 64), -1000.0, np.float32)
    for k in range(count):
        body = (xx / 0.7) ** 2 + (yy / 0.5) ** 2 < 1
        out[k][body] = 40.0 + rng.normal(0, 15, body.sum())
        out[k][(xx - 0.3) ** 2 + yy**2 < 0.02] = 900.0
        out[k][(xx + 0.3) ** 2 + (yy - 0.1) ** 2 < 0.04 + 0.01 * k] = -800.0
        out[k][((xx / 0.7) ** 2 + (yy / 0.5) ** 2 < 1) & ((xx / 0.62) ** 2 + (yy / 0.42) ** 2 > 1)
               ] = -100.0
    return out


def simulate(i0: float, hu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    hu = phantom() if hu is None else hu
    acquisition = Acquisition(GEOMETRY, NoiseModel(i0=i0), device="cpu")
    sinograms, _ = acquisition.simulate(hu, [(k,) for k in range(len(hu))])
    return hu, sinograms


@pytest.mark.parametrize("i0", [1e4, 1e5, 1e6])
def test_floor_with_and_without_counts_within_15_percent(i0):
    hu, y = simulate(i0)
    true, _ = residuals(hu, y, GEOMETRY)
    counts = i0 * np.exp(-y.astype(np.float64))
    with_counts = residual_floor(y, GEOMETRY, counts=counts)
    without = residual_floor(y, GEOMETRY)
    np.testing.assert_allclose(with_counts.floor, true, rtol=0.15)
    np.testing.assert_allclose(without.floor, true, rtol=0.15)
    np.testing.assert_allclose(without.i0, i0, rtol=0.2)
    assert (without.source == "slice").all()


def test_mismatch_part_matters_at_high_dose():
    """Noise alone falls short of the floor where the finer simulation grid dominates."""
    hu, y = simulate(1e7)
    true, _ = residuals(hu, y, GEOMETRY)
    noise_only = residual_floor(y, GEOMETRY, mismatch=False).floor
    assert (noise_only < 0.85 * true).all()
    np.testing.assert_allclose(residual_floor(y, GEOMETRY).floor, true, rtol=0.15)


def test_edge_bias_of_all_bins_and_air_bins():
    """Every bin's second differences carry the object's edges and texture: I0 comes out
    low; the air bins alone are unbiased."""
    _, y = simulate(1e6)
    biased, _ = estimate_i0(y, air_only=False)
    air, _ = estimate_i0(y)
    assert (biased < 0.8e6).all()
    np.testing.assert_allclose(air, 1e6, rtol=0.2)


def test_fallbacks():
    """A slice without air takes its stack's estimate; a stack without any takes the
    fallback I0, or NaN without one."""
    _, y = simulate(1e5)
    filled = y.copy()
    filled[0] += 2.0  # an object across the whole detector: no air bin
    i0, source = estimate_i0(filled)
    assert source.tolist() == ["stack", "slice", "slice"]
    np.testing.assert_allclose(i0[0], 1e5, rtol=0.1)
    i0, source = estimate_i0(y + 2.0, fallback_i0=3e5)
    assert source.tolist() == ["fallback"] * 3 and (i0 == 3e5).all()
    i0, source = estimate_i0(y + 2.0)
    assert source.tolist() == ["none"] * 3 and np.isnan(i0).all()
    assert np.isnan(residual_floor(y + 2.0, GEOMETRY, mismatch=False).floor).all()


def test_stops_earlier_on_a_noisier_scan():
    """The same network image, the same lambda: the noisier scan's higher floor is reached
    within a few steps, and the image there is the iterate that reached it; the quiet
    scan's floor is not reached and all steps run."""
    hu = phantom(2)
    operator = ct_operator(GEOMETRY, "cpu")
    offset = operator.forward(torch.ones(1, *GEOMETRY.image_shape))
    x_ref = torch.from_numpy(hu / 1000.0).float()
    x_net = x_ref + 0.1 * (x_ref > -0.5)
    taken = {}
    for i0 in (1.5e3, 1e6):
        _, sinograms = simulate(i0, hu)
        floor = residual_floor(sinograms, GEOMETRY).floor
        y = torch.from_numpy(sinograms) / MU_WATER_PER_MM - offset
        image, steps = conjugate_gradient_to_floor(x_net, y, operator, 1e-3, 20,
                                                   torch.from_numpy(floor), offset)
        reached = residual(image, y, operator, offset).numpy()
        taken[i0] = steps.numpy()
        if i0 < 1e4:
            assert (reached <= floor).all()
    assert (taken[1.5e3] <= 3).all() and (taken[1e6] == 20).all()


def test_stops_at_step_zero_when_the_network_is_at_the_floor():
    hu, sinograms = simulate(1e5)
    operator = ct_operator(GEOMETRY, "cpu")
    offset = operator.forward(torch.ones(1, *GEOMETRY.image_shape))
    y = torch.from_numpy(sinograms) / MU_WATER_PER_MM - offset
    x_net = torch.from_numpy(hu / 1000.0).float()
    image, steps = conjugate_gradient_to_floor(x_net, y, operator, 1e-3, 5,
                                               torch.full((3,), 1.0), offset)
    assert (steps == 0).all() and torch.equal(image, x_net)


def test_discrepancy_choice():
    residuals_by_weight = np.array([[0.01, 0.01, 0.01], [0.02, 0.015, 0.02], [0.03, 0.02, 0.05]])
    floor = np.array([0.025, 0.005, np.nan])
    assert discrepancy_choice(residuals_by_weight, floor).tolist() == [1, 0, 0]
    assert discrepancy_choice(residuals_by_weight, np.full(3, 1.0)).tolist() == [2, 2, 2]
