"""One torso phantom: anatomy, painting, 3D details, partial volume, texture and blur."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.bubbles import _add_colon_bubbles
from sparsect.data.phantom.config import PhantomConfig
from sparsect.data.phantom.grid import _Grid, _make_grid
from sparsect.data.phantom.lesions import _add_lesions
from sparsect.data.phantom.painting import _paint_volume
from sparsect.data.phantom.partial_volume import _Blocks
from sparsect.data.phantom.texture import _add_image_noise, _add_lung_gradient, _add_texture
from sparsect.data.phantom.vessels import _LIVER_TREES, _LUNG_TREES, _grow_vessel_trees


def generate_subject(
    subject: int,
    seed: int,
    config: PhantomConfig = PhantomConfig(),  # noqa: B008 (frozen)
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one torso phantom.

    Args:
        subject: subject index (>= 0); subjects are independent of each other.
        seed: dataset seed (>= 0).
        config: grid and variation ranges.

    Returns:
        ``(hu, labels)``: ``hu`` float32 ``(x, y, z)`` in Hounsfield units (air
        outside the body is exactly -1000), ``labels`` uint8 ``(x, y, z)`` organ
        labels of :data:`ORGAN_LABELS`. Deterministic in ``(subject, seed, config)``.

    Raises:
        ValueError: if ``subject`` or ``seed`` is negative, or the in-plane field of
            view cannot hold a torso even when scaled down.
    """
    if subject < 0 or seed < 0:
        raise ValueError(f"subject and seed must be >= 0, got subject={subject}, seed={seed}")
    # One stream per step, so that a step drawing more or less leaves the others alone.
    # Streams added later come last: spawn(n)'s first children do not depend on n.
    streams = np.random.SeedSequence([int(seed), int(subject)]).spawn(7)
    anatomy_rng, vessel_rng, lesion_rng, texture_rng, noise_rng, lower_rng, bubble_rng = (
        np.random.default_rng(s) for s in streams
    )
    an = _Anatomy(anatomy_rng, config, lower_rng)
    grid = _make_grid(an, config)
    labels_ss, material_ss = _paint_volume(an, grid)
    for spec in (_LUNG_TREES, _LIVER_TREES):
        _grow_vessel_trees(vessel_rng, grid, labels_ss, material_ss, spec)
    _add_lesions(lesion_rng, grid, labels_ss, material_ss, an, config)
    _add_colon_bubbles(bubble_rng, grid, labels_ss, material_ss, an)

    # Partial volume: average HU over each output voxel, majority organ label.
    f, fz = config.supersample, config.slab_samples
    materials = _Blocks(material_ss, f, fz)
    labels_crop = _Blocks(labels_ss, f, fz).majority()
    del labels_ss, material_ss
    hu_crop = materials.mean(an.material_hu)

    # Texture: correlated noise scaled by the material mix of each voxel.
    _add_texture(texture_rng, hu_crop, materials, config.spacing_mm)
    _add_lung_gradient(hu_crop, materials, grid, an, f)
    return _in_volume(hu_crop, labels_crop, grid, config, noise_rng)


def _in_volume(
    hu_crop: np.ndarray,
    labels_crop: np.ndarray,
    grid: _Grid,
    config: PhantomConfig,
    noise_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Places the body crop into the full grid (air around it), applies the scanner blur and
    adds the reconstruction noise (inside the labelled voxels only: the air stays -1000)."""
    spacing = config.spacing_mm
    hu = np.full(config.shape, -1000.0, dtype=np.float32)
    labels = np.zeros(config.shape, dtype=np.uint8)
    hu[grid.crop] = hu_crop
    labels[grid.crop] = labels_crop
    if config.psf_sigma_mm > 0:
        # Blur the attenuation above air so that air stays exactly -1000 far from the body.
        sigma = [config.psf_sigma_mm / s for s in spacing[:2]] + [0.0]
        hu = ndimage.gaussian_filter(hu + 1000.0, sigma, mode="constant") - 1000.0
    if config.image_noise_hu > 0:
        _add_image_noise(noise_rng, hu[grid.crop], labels_crop > 0, config.image_noise_hu, spacing)
    np.clip(hu, -1000.0, 3071.0, out=hu)
    return hu.astype(np.float32, copy=False), labels
