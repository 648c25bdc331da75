"""Grid and variation ranges of the torso phantoms, and their voxel -> world affine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and variation ranges of the torso phantoms.

    Ranges are ``(low, high)`` of uniform distributions drawn once per subject.
    """

    # the voxel grid and its sampling
    shape: tuple[int, int, int] = (256, 256, 24)
    """Output grid ``(x, y, z)`` in voxels."""
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 5.0)
    """Voxel size ``(x, y, z)`` in mm; ``z`` is the slice thickness."""
    supersample: int = 2
    """In-plane supersampling factor for partial-volume averaging."""
    slab_samples: int = 3
    """Sub-slices sampled across each slice's thickness."""
    # the body and its placement
    body_width_mm: tuple[float, float] = (280.0, 340.0)
    """Full lateral width of the body."""
    body_depth_mm: tuple[float, float] = (200.0, 260.0)
    """Full anterior-posterior depth of the body."""
    subcutaneous_fat_mm: tuple[float, float] = (5.0, 25.0)
    """Range the subcutaneous fat thickness stays in."""
    max_offset_mm: float = 8.0
    """Largest in-plane shift of the body centre (per axis)."""
    max_rotation_deg: float = 4.0
    """Largest in-plane rotation of the body."""
    fov_margin_mm: float = 10.0
    """Smallest clearance between the body and the circle inscribed in the in-plane field of
    view (the reconstruction support); larger bodies are scaled down to keep it."""
    # anatomy, lesions and scanner blur
    dome_level_mm: tuple[float, float] = (10.0, 30.0)
    """Height of the right hemidiaphragm dome above the centre of the volume; sets which part
    of the thorax/abdomen the slab covers."""
    lesions: tuple[int, int] = (1, 4)
    """Number of lesions per subject (inclusive range)."""
    lesion_diameter_mm: tuple[float, float] = (4.0, 15.0)
    """Lesion diameters."""
    psf_sigma_mm: float = 0.5
    """In-plane Gaussian blur of the final HU image (scanner resolution); 0 disables it."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive sizes, got {self.spacing_mm}")
        if self.supersample < 1 or self.slab_samples < 1:
            raise ValueError("supersample and slab_samples must be >= 1")
        if self.lesions[0] < 0 or self.lesions[1] < self.lesions[0]:
            raise ValueError(f"lesions must be a range 0 <= low <= high, got {self.lesions}")


def phantom_affine(config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """Voxel -> RAS+ world (mm) affine: ``diag(spacing)`` with the volume centred on 0.

    Returns:
        ``(4, 4)`` float64 affine.
    """
    spacing = np.asarray(config.spacing_mm, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(config.shape, dtype=np.float64) - 1.0) / 2.0 * spacing
    return affine
