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
    body_width_mm: tuple[float, float] = (240.0, 420.0)
    """Full lateral width of the body (before any scaling down to fit the field of view)."""
    body_depth_mm: tuple[float, float] = (170.0, 320.0)
    """Full anterior-posterior depth of the body (before any scaling down)."""
    subcutaneous_fat_mm: tuple[float, float] = (3.0, 50.0)
    """Range the subcutaneous fat thickness stays in; larger bodies tend to carry more fat."""
    max_offset_mm: float = 8.0
    """Largest in-plane shift of the body centre (per axis)."""
    max_rotation_deg: float = 4.0
    """Largest in-plane rotation of the body."""
    fov_margin_mm: float = 10.0
    """Smallest clearance between the body and the circle inscribed in the in-plane field of
    view (the reconstruction support); larger bodies are scaled down to keep it."""
    # anatomy, lesions and scanner blur
    dome_level_mm: tuple[float, float] = (-20.0, 150.0)
    """Height of the right hemidiaphragm dome above the centre of the volume; sets which part
    of the thorax/abdomen the slab covers (low: mostly lower chest, high: mid and lower
    abdomen)."""
    pelvic_probability: float = 0.2
    """Probability that a subject's slab lies in the pelvis: its dome level is then drawn
    from ``pelvic_dome_level_mm`` instead of ``dome_level_mm``."""
    pelvic_dome_level_mm: tuple[float, float] = (250.0, 300.0)
    """Dome level of the pelvic slabs (iliac wings, sacrum, bladder, at the lowest levels
    the femoral heads)."""
    oral_contrast_probability: float = 0.3
    """Probability that a subject has drunk positive oral contrast (some small-bowel loops
    are then filled with it)."""
    lesions: tuple[int, int] = (1, 4)
    """Number of lesions per subject (inclusive range)."""
    lesion_diameter_mm: tuple[float, float] = (4.0, 15.0)
    """Lesion diameters."""
    psf_sigma_mm: float = 0.5
    """In-plane Gaussian blur of the final HU image (scanner resolution); 0 disables it."""
    image_noise_hu: float = 21.0
    """Standard deviation (HU) of the quantum noise of a full-dose reconstruction in a
    1.5 x 1.5 x 5 mm voxel (smaller voxels are noisier, larger ones less so), added inside
    the body and on the patient table (the air stays -1000); each subject's level varies by
    up to 20 % around it. 0 disables it."""
    # scan set-up: contrast phase, patient table, arms
    contrast_phases: tuple[float, float, float] = (0.35, 0.45, 0.20)
    """Probabilities of the contrast phases (non-contrast, portal-venous, arterial)."""
    table_probability: float = 0.85
    """Probability that a subject lies on a patient table (below the back)."""
    arms_down_probability: float = 0.4
    """Probability that a subject's arms lie beside the body (else they are raised out of
    the slab)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive sizes, got {self.spacing_mm}")
        if self.supersample < 1 or self.slab_samples < 1:
            raise ValueError("supersample and slab_samples must be >= 1")
        if self.lesions[0] < 0 or self.lesions[1] < self.lesions[0]:
            raise ValueError(f"lesions must be a range 0 <= low <= high, got {self.lesions}")
        if self.image_noise_hu < 0:
            raise ValueError(f"image_noise_hu must be >= 0, got {self.image_noise_hu}")
        phases = self.contrast_phases
        if len(phases) != 3 or min(phases) < 0 or abs(sum(phases) - 1.0) > 1e-6:
            raise ValueError(f"contrast_phases must be 3 probabilities summing to 1, got {phases}")
        for name in ("dome_level_mm", "pelvic_dome_level_mm"):
            low, high = getattr(self, name)
            if high < low:
                raise ValueError(f"{name} must be a range low <= high, got {(low, high)}")
        for name in (
            "table_probability",
            "arms_down_probability",
            "pelvic_probability",
            "oral_contrast_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


def phantom_affine(config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """Voxel -> RAS+ world (mm) affine: ``diag(spacing)`` with the volume centred on 0.

    Returns:
        ``(4, 4)`` float64 affine.
    """
    spacing = np.asarray(config.spacing_mm, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(config.shape, dtype=np.float64) - 1.0) / 2.0 * spacing
    return affine
