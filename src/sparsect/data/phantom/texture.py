"""Texture of the HU image: correlated noise per material, and the gravity-dependent lung."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparsect.data import fpmath
from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.grid import _Grid
from sparsect.data.phantom.materials import _LESION_MATERIAL0, _M, _MATERIALS, _MAX_MATERIALS
from sparsect.data.phantom.partial_volume import _Blocks


def _correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with an isotropic ``sigma_mm`` kernel."""
    noise = fpmath.normal(rng, shape).astype(np.float32)
    field = ndimage.gaussian_filter(noise, [sigma_mm / s for s in spacing], mode="reflect")
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _add_texture(
    rng: np.random.Generator,
    hu_crop: np.ndarray,
    materials: _Blocks,
    spacing: tuple[float, float, float],
) -> None:
    """Adds correlated noise to ``hu_crop`` in place, scaled by the material mix of each voxel.

    Three noise fields, one per texture of :class:`_Material` (fine trabecular,
    soft-tissue heterogeneity, lung parenchyma), drawn from ``rng`` in that order.
    """
    table = np.zeros((3, _MAX_MATERIALS), dtype=np.float32)
    for index, material in enumerate(_MATERIALS.values()):
        table[:, index] = (material.fine, material.soft, material.lung)
    table[1, _LESION_MATERIAL0:] = 6.0
    for row, sigma_mm in zip(table, (0.8, 2.0, 2.5), strict=True):
        noise = _correlated_noise(rng, hu_crop.shape, sigma_mm, spacing)
        hu_crop += materials.mean(row) * noise


def _add_lung_gradient(
    hu_crop: np.ndarray, materials: _Blocks, grid: _Grid, an: _Anatomy, f: int
) -> None:
    """Gravity-dependent lung density, in place: posterior (dependent) parenchyma is denser."""
    is_lung = np.zeros(_MAX_MATERIALS, dtype=np.float32)
    is_lung[_M["lung"]] = 1.0
    v_blocks = grid.v.reshape(hu_crop.shape[0], f, hu_crop.shape[1], f)
    v_native = sum(v_blocks[:, i, :, j] for i in range(f) for j in range(f)) / np.float32(f * f)
    gradient = an.lung_gradient * np.clip(-v_native / an.b_c, -1.0, 1.0)
    hu_crop += materials.mean(is_lung) * gradient[:, :, None].astype(np.float32)
