"""Phantoms shared by the physics tests (images in mu, 1/mm)."""

from __future__ import annotations

from collections.abc import Callable

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


@pytest.fixture(scope="session")
def make_disc() -> Callable[..., np.ndarray]:
    return disc


@pytest.fixture(scope="session")
def make_phantom() -> Callable[..., np.ndarray]:
    return piecewise_phantom


def _astra_object_count(capfd: pytest.CaptureFixture[str]) -> int:
    """Live ASTRA data, algorithm and projector objects (ASTRA prints them from C++)."""
    capfd.readouterr()
    for module in (astra.data2d, astra.algorithm, astra.projector):
        module.info()
    lines = capfd.readouterr().out.splitlines()
    return sum(1 for line in lines if line[:1].isdigit())


@pytest.fixture
def astra_objects(capfd: pytest.CaptureFixture[str]) -> Callable[[], int]:
    return lambda: _astra_object_count(capfd)
