"""Phantoms and an ASTRA object counter shared by the physics tests (images in mu, 1/mm).

A plain module, not a conftest: ``tests/conftest.py`` is imported as ``conftest``
by other tests, and a second conftest module would shadow it.
"""

from __future__ import annotations

import astra
import numpy as np
import pytest

from sparsect.physics import MU_WATER_PER_MM


def disc(n: int, pixel_mm: float, radius_mm: float, centre_mm: tuple[float, float] = (0.0, 0.0),
         value: float = MU_WATER_PER_MM) -> np.ndarray:
    """``(n, n)`` float32 disc; ``centre_mm = (x, y)`` with y pointing up (row 0 on top)."""
    coords = (np.arange(n) - (n - 1) / 2.0) * pixel_mm
    x, y = np.meshgrid(coords, -coords)
    inside = (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 <= radius_mm**2
    return (value * inside).astype(np.float32)


def piecewise_phantom(n: int, pixel_mm: float) -> np.ndarray:
    """Water body (radius 0.4 FOV) with bone-, fat- and air-like inserts, in mu."""
    fov = n * pixel_mm
    mu = disc(n, pixel_mm, 0.4 * fov)
    mu += disc(n, pixel_mm, 0.1 * fov, (0.15 * fov, 0.12 * fov), 0.6 * MU_WATER_PER_MM)
    mu -= disc(n, pixel_mm, 0.08 * fov, (-0.12 * fov, -0.15 * fov), 0.5 * MU_WATER_PER_MM)
    mu -= disc(n, pixel_mm, 0.04 * fov, (-0.08 * fov, 0.2 * fov), MU_WATER_PER_MM)
    return mu


def astra_object_count(capfd: pytest.CaptureFixture[str]) -> int:
    """Live ASTRA data, algorithm and projector objects (ASTRA lists them from C++)."""
    capfd.readouterr()
    for module in (astra.data2d, astra.algorithm, astra.projector):
        module.info()
    lines = capfd.readouterr().out.splitlines()
    return sum(1 for line in lines if line[:1].isdigit())
