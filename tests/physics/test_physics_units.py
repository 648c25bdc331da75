"""HU <-> mu conversions."""

from __future__ import annotations

import numpy as np

from sparsect.physics import MU_WATER_PER_MM, hu_to_mu, mu_to_hu


def test_water_and_air() -> None:
    assert float(hu_to_mu(0.0)) == MU_WATER_PER_MM
    assert float(hu_to_mu(-1000.0)) == 0.0
    assert np.isclose(float(hu_to_mu(1000.0)), 2 * MU_WATER_PER_MM)


def test_round_trip_keeps_dtype_and_values() -> None:
    hu = np.linspace(-1100.0, 3000.0, 50, dtype=np.float32)
    mu = hu_to_mu(hu)
    assert mu.dtype == np.float32
    assert mu[0] < 0  # no clipping in the conversion itself
    np.testing.assert_allclose(mu_to_hu(mu), hu, atol=1e-2)
