"""Texture of the HU image: correlated noise per material, the gravity-dependent lung, and
the quantum noise of the reconstruction."""

from __future__ import annotations

import math

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


# Reconstruction noise is band-pass: the ramp filter of filtered back-projection removes
# its low frequencies and the reconstruction kernel its highest ones. A difference of
# Gaussians has that shape: grain of about a millimetre, no slow drifts.
_NOISE_GRAIN_MM = 1.0
_NOISE_SURROUND_MM = 3.0
_NOISE_SURROUND_WEIGHT = 0.85  # < 1: some low-frequency power remains, as after apodisation
_NOISE_REFERENCE_VOXEL_MM = (1.5, 1.5, 5.0)  # the voxel PhantomConfig.image_noise_hu is for


def _band_pass(field: np.ndarray, spacing: tuple[float, ...], mode: str) -> np.ndarray:
    """In-plane difference of Gaussians of ``(x, y, z)`` ``field`` (slices stay independent)."""
    grain = [_NOISE_GRAIN_MM / s for s in spacing[:2]] + [0.0]
    surround = [_NOISE_SURROUND_MM / s for s in spacing[:2]] + [0.0]
    fine = ndimage.gaussian_filter(field, grain, mode=mode)
    coarse = ndimage.gaussian_filter(field, surround, mode=mode)
    return fine - np.float32(_NOISE_SURROUND_WEIGHT) * coarse


def _band_pass_gain(spacing: tuple[float, ...]) -> float:
    """Standard deviation of :func:`_band_pass` of unit white noise: the root sum of squares
    of its impulse response (summed exactly, so it is the same on every machine)."""
    half = [int(math.ceil(5.0 * _NOISE_SURROUND_MM / s)) for s in spacing[:2]]
    impulse = np.zeros((2 * half[0] + 1, 2 * half[1] + 1, 1), dtype=np.float32)
    impulse[half[0], half[1], 0] = 1.0
    response = _band_pass(impulse, spacing, "constant").astype(np.float64).ravel()
    return math.sqrt(math.fsum(response * response))


def _add_image_noise(
    rng: np.random.Generator,
    hu: np.ndarray,
    inside: np.ndarray,
    sd_hu: float,
    spacing: tuple[float, float, float],
) -> None:
    """Adds reconstruction noise to ``hu`` where ``inside`` holds, in place.

    ``sd_hu`` is the level of a :data:`_NOISE_REFERENCE_VOXEL_MM` voxel; other voxels get
    the level of averaging independent noise over their volume. The subject's own level
    (within 20 % of that) is drawn from ``rng`` first.
    """
    reference = math.prod(_NOISE_REFERENCE_VOXEL_MM) / math.prod(spacing)
    level = sd_hu * math.sqrt(reference) * float(rng.uniform(0.8, 1.2))  # dose, patient size
    white = fpmath.normal(rng, hu.shape).astype(np.float32)
    noise = _band_pass(white, spacing, "reflect")
    noise *= np.float32(level / _band_pass_gain(spacing))
    hu += np.where(inside, noise, np.float32(0.0))
