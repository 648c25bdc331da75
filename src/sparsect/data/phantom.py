"""Deterministic anatomical torso phantoms: HU volumes with organ label maps, as NIfTI.

Each subject is a lower-thorax / upper-abdomen torso on an ``(x, y, z)`` voxel
grid in RAS+ orientation: ``x`` runs towards the patient's right, ``y``
towards anterior and ``z`` (the axial slice axis) towards superior, so the
lungs shrink and the liver, stomach, spleen and kidneys take over as ``z``
decreases. The anatomy is built from analytic shapes whose sizes, positions
and outlines are drawn per subject:

* body outline (superellipse with low-order harmonic bumps), subcutaneous fat
  of varying thickness, a muscle wall with paraspinal and pectoral bulk;
* domed hemidiaphragms (right higher than left) that decide where lung ends
  and abdomen begins, which gives the posterior costophrenic recesses;
* lungs with a gravity-dependent density gradient, correlated parenchymal
  texture and a 3D vessel tree that thins towards the periphery;
* heart (blood pool, left-ventricular myocardium, epicardial fat), descending
  aorta, oesophagus, inferior vena cava;
* vertebrae (cortical shell, trabecular core, discs, posterior elements),
  obliquely cut ribs, sternum;
* liver, spleen, stomach (sometimes with a gas cap), kidneys with sinus fat,
  bowel loops, and a few small hypo-/hyper-dense lesions in liver or lung.

Partial volume is modelled by painting every slice on a grid that is
supersampled in-plane and across the slab thickness, then averaging HU and
taking the majority organ label per output voxel. All randomness comes from
``np.random.default_rng`` seeded with ``(seed, subject)``, so every subject is
reproducible on its own, and the NIfTI files are written byte-for-byte
deterministically (gzip with ``mtime=0``) so that DVC hashes are stable.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from sparsect.data import fpmath
from sparsect.notice import nifti_description
from sparsect.priors.classes import BACKGROUND, BONE, FAT, LUNG, SOFT_TISSUE

__all__ = [
    "ORGAN_LABELS",
    "ORGAN_TO_TISSUE",
    "PhantomConfig",
    "generate_subject",
    "organ_to_tissue",
    "phantom_affine",
    "write_dataset",
]

ORGAN_LABELS: dict[str, int] = {
    "background": 0,  # air outside the body
    "muscle": 1,
    "fat": 2,  # subcutaneous, visceral, epicardial and renal-sinus fat
    "lung": 3,
    "lung_vessel": 4,
    "heart": 5,  # blood pool of the chambers
    "myocardium": 6,
    "aorta": 7,
    "vena_cava": 8,
    "esophagus": 9,
    "spine": 10,  # vertebral bodies and posterior elements
    "disc": 11,
    "spinal_canal": 12,
    "rib": 13,
    "sternum": 14,
    "liver": 15,
    "spleen": 16,
    "stomach": 17,
    "kidney": 18,
    "bowel": 19,
    "bowel_gas": 20,
    "lesion": 21,
}
"""Organ name -> label value in the ``*_seg.nii.gz`` maps. 0 is air outside the body."""

_L = ORGAN_LABELS  # short alias for the painting code below

ORGAN_TO_TISSUE: dict[int, int] = {
    _L["background"]: BACKGROUND,
    _L["muscle"]: SOFT_TISSUE,
    _L["fat"]: FAT,
    _L["lung"]: LUNG,
    _L["lung_vessel"]: SOFT_TISSUE,
    _L["heart"]: SOFT_TISSUE,
    _L["myocardium"]: SOFT_TISSUE,
    _L["aorta"]: SOFT_TISSUE,
    _L["vena_cava"]: SOFT_TISSUE,
    _L["esophagus"]: SOFT_TISSUE,
    _L["spine"]: BONE,
    _L["disc"]: SOFT_TISSUE,
    _L["spinal_canal"]: SOFT_TISSUE,
    _L["rib"]: BONE,
    _L["sternum"]: BONE,
    _L["liver"]: SOFT_TISSUE,
    _L["spleen"]: SOFT_TISSUE,
    _L["stomach"]: SOFT_TISSUE,
    _L["kidney"]: SOFT_TISSUE,
    _L["bowel"]: SOFT_TISSUE,
    # The tissue classes are defined by HU: gas inside the body is air-dense like
    # lung, and the HU-threshold masks (air enclosed by the body -> lung) call it so.
    _L["bowel_gas"]: LUNG,
    _L["lesion"]: SOFT_TISSUE,
}
"""Organ label -> tissue class index of :mod:`sparsect.priors.classes`."""

_TISSUE_LUT = np.zeros(256, dtype=np.uint8)
_KNOWN_LABEL = np.zeros(256, dtype=bool)
for _label, _tissue in ORGAN_TO_TISSUE.items():
    _TISSUE_LUT[_label] = _tissue
    _KNOWN_LABEL[_label] = True


def organ_to_tissue(labels: np.ndarray) -> np.ndarray:
    """Maps an organ label map to tissue classes.

    Args:
        labels: integer array of any shape with values from :data:`ORGAN_LABELS`.

    Returns:
        uint8 array of the same shape with tissue class indices
        (:data:`sparsect.priors.classes.TISSUE_CLASSES`).

    Raises:
        ValueError: if ``labels`` is not an integer array or holds unknown values.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 255:
        raise ValueError(f"labels hold values outside 0..255 (min {low}, max {high})")
    index = labels.astype(np.uint8, copy=False)
    if not _KNOWN_LABEL[index].all():
        unknown = sorted(set(np.unique(index).tolist()) - set(ORGAN_TO_TISSUE))
        raise ValueError(f"labels hold values {unknown} that are not in ORGAN_LABELS")
    return _TISSUE_LUT[index]


@dataclass(frozen=True)
class PhantomConfig:
    """Grid and variation ranges of the torso phantoms.

    Ranges are ``(low, high)`` of uniform distributions drawn once per subject.

    Attributes:
        shape: output grid ``(x, y, z)`` in voxels.
        spacing_mm: voxel size ``(x, y, z)`` in mm; ``z`` is the slice thickness.
        supersample: in-plane supersampling factor for partial-volume averaging.
        slab_samples: sub-slices sampled across each slice's thickness.
        body_width_mm: full lateral width of the body.
        body_depth_mm: full anterior-posterior depth of the body.
        subcutaneous_fat_mm: range the subcutaneous fat thickness stays in.
        max_offset_mm: largest in-plane shift of the body centre (per axis).
        max_rotation_deg: largest in-plane rotation of the body.
        fov_margin_mm: smallest clearance between the body and the circle inscribed
            in the in-plane field of view (the reconstruction support); larger
            bodies are scaled down to keep it.
        dome_level_mm: height of the right hemidiaphragm dome above the centre of
            the volume; sets which part of the thorax/abdomen the slab covers.
        lesions: number of lesions per subject (inclusive range).
        lesion_diameter_mm: lesion diameters.
        psf_sigma_mm: in-plane Gaussian blur of the final HU image (scanner
            resolution); 0 disables it.
    """

    shape: tuple[int, int, int] = (256, 256, 24)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 5.0)
    supersample: int = 2
    slab_samples: int = 3
    body_width_mm: tuple[float, float] = (280.0, 340.0)
    body_depth_mm: tuple[float, float] = (200.0, 260.0)
    subcutaneous_fat_mm: tuple[float, float] = (5.0, 25.0)
    max_offset_mm: float = 8.0
    max_rotation_deg: float = 4.0
    fov_margin_mm: float = 10.0
    dome_level_mm: tuple[float, float] = (10.0, 30.0)
    lesions: tuple[int, int] = (1, 4)
    lesion_diameter_mm: tuple[float, float] = (4.0, 15.0)
    psf_sigma_mm: float = 0.5

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


# --------------------------------------------------------------------------- materials


class _Material(NamedTuple):
    hu: float  # mean attenuation (non-contrast CT, 120 kVp)
    hu_sd: float  # between-subject spread of that mean
    fine: float  # amplitude (HU) of fine correlated texture (trabecular bone)
    soft: float  # amplitude (HU) of soft-tissue heterogeneity
    lung: float  # amplitude (HU) of lung parenchymal texture


# Typical non-contrast values: fat -100, muscle +50, blood +40, liver +60,
# spleen +45, kidney +30, lung parenchyma about -850, cortical bone about +1000,
# vertebral trabecular bone +200..+300.
_MATERIALS: dict[str, _Material] = {
    "air": _Material(-1000.0, 0.0, 0.0, 0.0, 0.0),
    "fat_subcutaneous": _Material(-105.0, 6.0, 0.0, 7.0, 0.0),
    "fat_visceral": _Material(-95.0, 6.0, 0.0, 7.0, 0.0),
    "muscle": _Material(50.0, 4.0, 0.0, 7.0, 0.0),
    "lung": _Material(-865.0, 12.0, 0.0, 0.0, 38.0),
    "blood": _Material(40.0, 3.0, 0.0, 5.0, 0.0),
    "myocardium": _Material(50.0, 3.0, 0.0, 6.0, 0.0),
    "liver": _Material(60.0, 4.0, 0.0, 8.0, 0.0),
    "spleen": _Material(45.0, 3.0, 0.0, 7.0, 0.0),
    "kidney": _Material(30.0, 3.0, 0.0, 7.0, 0.0),
    "gastric_content": _Material(15.0, 8.0, 0.0, 8.0, 0.0),
    "gut_wall": _Material(38.0, 4.0, 0.0, 6.0, 0.0),
    "bowel_content": _Material(20.0, 8.0, 0.0, 8.0, 0.0),
    "gas": _Material(-1000.0, 0.0, 0.0, 0.0, 0.0),
    "cortical": _Material(1000.0, 60.0, 40.0, 0.0, 0.0),
    "trabecular": _Material(265.0, 20.0, 45.0, 0.0, 0.0),
    "posterior_bone": _Material(600.0, 50.0, 60.0, 0.0, 0.0),
    "rib_cortex": _Material(850.0, 60.0, 40.0, 0.0, 0.0),
    "marrow": _Material(330.0, 25.0, 40.0, 0.0, 0.0),
    "disc": _Material(85.0, 6.0, 0.0, 8.0, 0.0),
    "csf_cord": _Material(25.0, 4.0, 0.0, 5.0, 0.0),
}
_M = {name: index for index, name in enumerate(_MATERIALS)}
_LESION_MATERIAL0 = 32  # lesion k uses material 32 + k with its own HU
_MAX_MATERIALS = 64
_MAX_LESIONS = _MAX_MATERIALS - _LESION_MATERIAL0


# --------------------------------------------------------------------------- anatomy


def _modulation(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """``1 + sum_k a_k cos(k theta + phase_k)`` for k = 2, 3, ...: an organic outline."""
    out = np.ones_like(theta)
    for k, (amplitude, phase) in enumerate(coeffs, start=2):
        out += amplitude * fpmath.cos(k * theta + phase)
    return out


def _ellipse_rho(
    u: np.ndarray,
    v: np.ndarray,
    centre: tuple[float, float],
    semi_axes: tuple[float, float],
    angle: float = 0.0,
    coeffs: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised elliptical radius (< 1 inside) of a rotated, optionally bumpy ellipse.

    Because the radius is linear in size, an ellipsoid's cross-section at height
    ``z`` is simply ``rho < sqrt(1 - ((z - zc) / c)**2)``.
    """
    du, dv = u - centre[0], v - centre[1]
    cos, sin = _cos_sin(angle)
    p = (du * cos + dv * sin) / semi_axes[0]
    q = (-du * sin + dv * cos) / semi_axes[1]
    rho = fpmath.hypot(p, q)
    if coeffs is not None:
        rho /= _modulation(fpmath.arctan2(q, p), coeffs)
    return rho.astype(np.float32)


def _ellipsoid_scale(z: float, z_centre: float, z_semi: float) -> float:
    """In-plane scale of an ellipsoid's cross-section at height ``z`` (0 outside)."""
    t = (z - z_centre) / z_semi
    return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


def _cos_sin(angle: float) -> tuple[float, float]:
    return float(fpmath.cos(angle)), float(fpmath.sin(angle))


def _dot3(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of 3-vectors in a fixed order (``@`` goes through BLAS kernels)."""
    return float(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])


def _norm3(a: np.ndarray) -> float:
    return math.sqrt(_dot3(a, a))


def _rows_dot3(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Row-wise dot products of ``(N, 3)`` rows with ``(N, 3)`` rows or a 3-vector."""
    vector = np.broadcast_to(vector, rows.shape)
    return rows[:, 0] * vector[:, 0] + rows[:, 1] * vector[:, 1] + rows[:, 2] * vector[:, 2]


class _Organ(NamedTuple):
    centre: tuple[float, float]  # (u, v) mm
    semi: tuple[float, float]  # in-plane semi-axes, mm
    angle: float  # rad, direction of the first semi-axis in (u, v)
    z_centre: float  # mm
    z_semi: float  # mm
    coeffs: np.ndarray | None


class _Anatomy:
    """Per-subject anatomical parameters in mm.

    In-plane coordinates ``(u, v)`` are anatomical: ``u`` towards the patient's
    right, ``v`` anterior, origin at the body centre. ``z`` is the world z of
    the volume (0 at the centre slice), increasing superiorly.
    """

    def __init__(self, rng: np.random.Generator, config: PhantomConfig) -> None:
        def uniform(low: float, high: float) -> float:
            return float(rng.uniform(low, high))

        def harmonics(count: int, amplitude: float) -> np.ndarray:
            return np.stack(
                [fpmath.normal(rng, count, 0.0, amplitude), rng.uniform(0.0, 2 * np.pi, count)],
                axis=1,
            )

        # Body outline: the back is flatter than the front, hence the asymmetry.
        self.a = uniform(*config.body_width_mm) / 2
        depth = uniform(*config.body_depth_mm)
        asym = uniform(0.02, 0.07)
        self.b_ant, self.b_post = depth / 2 * (1 + asym), depth / 2 * (1 - asym)
        self.n_body = uniform(2.1, 2.6)
        self.abdomen_widen = (uniform(0.95, 1.04), uniform(0.98, 1.06))
        self.body_coeffs = harmonics(4, 0.012)
        self.offset = (
            uniform(-config.max_offset_mm, config.max_offset_mm),
            uniform(-config.max_offset_mm, config.max_offset_mm),
        )
        self.rotation = math.radians(uniform(-config.max_rotation_deg, config.max_rotation_deg))

        # Subcutaneous fat and muscle wall thickness profiles.
        fat_lo, fat_hi = config.subcutaneous_fat_mm
        self.fat_range = (fat_lo, fat_hi)
        span = fat_hi - fat_lo
        self.fat_mean = uniform(fat_lo + 0.15 * span, fat_lo + 0.65 * span)
        self.fat_coeffs = harmonics(3, 0.28)
        self.fat_abdomen_gain = uniform(1.0, 1.3)
        self.muscle_thorax = uniform(12.0, 17.0)
        self.pectoral = uniform(4.0, 14.0)
        self.muscle_abdomen = uniform(10.0, 14.0)

        # Diaphragm: two domes, the right one higher (the liver pushes it up).
        self.h_right = uniform(*config.dome_level_mm)
        self.h_left = self.h_right - uniform(8.0, 20.0)
        self.dome_depth = uniform(45.0, 65.0)
        self.posterior_drop = uniform(15.0, 30.0)
        self.diaphragm_mm = uniform(3.0, 5.0)
        a_c = self.a - self.fat_mean - self.muscle_thorax  # cavity semi-axes
        b_c = depth / 2 - self.fat_mean - self.muscle_thorax
        self.a_c, self.b_c = a_c, b_c
        self.dome_right = (uniform(0.4, 0.5) * a_c, uniform(0.0, 0.1) * b_c)
        self.dome_left = (-uniform(0.4, 0.5) * a_c, uniform(-0.05, 0.05) * b_c)
        self.dome_semi = (uniform(0.5, 0.6) * a_c, uniform(0.7, 0.8) * b_c)

        # Spine, measured from the posterior skin.
        self.spine_u = uniform(-3.0, 3.0)
        self.vb_semi = (uniform(17.0, 21.0), uniform(14.0, 17.0))
        self.vb_depth_from_skin = uniform(45.0, 55.0)  # mm behind the subcutaneous fat
        self.vertebra_period = uniform(27.0, 32.0)
        self.disc_height = uniform(5.0, 8.0)
        self.vertebra_phase = uniform(0.0, self.vertebra_period)
        self.canal_radius = uniform(7.0, 9.0)
        self.paraspinal_semi = (uniform(38.0, 48.0), uniform(26.0, 33.0))
        self.mediastinum_half_width = uniform(10.0, 16.0)

        # Ribs: oblique bands, so each axial slice cuts them as arcs.
        self.rib_period = uniform(24.0, 30.0)
        self.rib_height = uniform(10.0, 13.0)
        self.rib_slope = uniform(0.55, 0.8)
        self.rib_phase = uniform(0.0, self.rib_period)
        self.rib_side_shift = uniform(-4.0, 4.0)
        # Rib spacing and curvature are not perfectly regular.
        self.rib_wobble = [(uniform(1.0, 4.0), k, uniform(0.0, 2 * np.pi)) for k in (2, 3, 5)]
        self.rib_thickness = uniform(6.0, 8.0)
        self.sternum_semi = (uniform(12.0, 16.0), uniform(5.0, 7.0))
        self.sternum_bottom = self.h_right - uniform(5.0, 20.0)

        size = uniform(0.92, 1.08)  # organs scale together, a little
        # Heart: long axis pointing left-anterior, resting on the diaphragm.
        self.heart = _Organ(
            (-uniform(0.05, 0.15) * a_c, uniform(0.3, 0.42) * b_c),
            (uniform(45.0, 55.0) * size, uniform(36.0, 43.0) * size),
            math.radians(uniform(125.0, 145.0)),
            self.h_left + uniform(25.0, 40.0),
            uniform(60.0, 75.0),
            harmonics(3, 0.03),
        )
        self.pericardial_fat = uniform(2.0, 6.0)
        self.lv_wall = uniform(8.0, 12.0)
        # Vessels and oesophagus, placed relative to the spine.
        self.aorta_radius = uniform(11.0, 14.5)
        self.aorta_gap = uniform(2.0, 6.0)
        self.aorta_abdomen_u = -uniform(4.0, 12.0)
        self.esophagus_radius = uniform(6.0, 8.0)
        self.esophagus_u = -uniform(2.0, 10.0)
        self.ivc_radius = uniform(9.0, 12.0)
        self.ivc_u = uniform(15.0, 25.0)
        self.ivc_v = uniform(8.0, 18.0)

        # Abdominal organs.
        self.liver = _Organ(
            (uniform(0.2, 0.35) * a_c, uniform(-0.05, 0.1) * b_c),
            (uniform(0.75, 0.9) * a_c, uniform(0.85, 1.0) * b_c),
            math.radians(uniform(-10.0, 10.0)),
            0.0,  # no ellipsoid in z: the diaphragm caps the liver, liver_bottom ends it
            0.0,
            harmonics(4, 0.04),
        )
        self.liver_left_edge = -uniform(0.3, 0.45) * a_c
        self.liver_edge_curve = uniform(0.2, 0.4) * a_c
        self.liver_edge_wiggle = (uniform(3.0, 8.0), uniform(15.0, 30.0), uniform(0.0, 2 * np.pi))
        self.liver_bottom = self.h_right - uniform(120.0, 160.0)
        self.stomach = _Organ(
            (-uniform(0.35, 0.5) * a_c, uniform(0.1, 0.3) * b_c),
            (uniform(40.0, 55.0) * size, uniform(30.0, 42.0) * size),
            uniform(0.0, np.pi),
            self.h_left - uniform(35.0, 50.0),
            uniform(50.0, 70.0),
            harmonics(3, 0.06),
        )
        self.stomach_gas = uniform(0.0, 1.0) < 0.6
        self.stomach_gas_fraction = uniform(0.08, 0.25)
        self.spleen = _Organ(
            (-uniform(0.55, 0.7) * a_c, -uniform(0.25, 0.45) * b_c),
            (uniform(45.0, 60.0) * size, uniform(22.0, 30.0) * size),
            math.radians(uniform(115.0, 150.0)),
            self.h_left - uniform(40.0, 60.0),
            uniform(45.0, 60.0),
            harmonics(3, 0.06),
        )
        self.kidneys = []
        for side, dome in ((1.0, self.h_right - 10.0), (-1.0, self.h_left)):
            self.kidneys.append(
                _Organ(
                    (side * (self.vb_semi[0] + uniform(35.0, 45.0)), uniform(-5.0, 10.0)),
                    (uniform(27.0, 33.0) * size, uniform(19.0, 25.0) * size),
                    math.radians(90.0 - side * uniform(30.0, 50.0)),
                    dome - uniform(95.0, 110.0),
                    uniform(50.0, 60.0),
                    harmonics(2, 0.03),
                )
            )
        self.bowel = []
        for _ in range(int(rng.integers(5, 11))):
            self.bowel.append(
                _Organ(
                    (uniform(-0.6, 0.25) * a_c, uniform(-0.05, 0.65) * b_c),
                    (uniform(10.0, 22.0), uniform(9.0, 18.0)),
                    uniform(0.0, np.pi),
                    self.h_left - uniform(50.0, 150.0),
                    uniform(15.0, 40.0),
                    harmonics(2, 0.08),
                )
            )
        self.bowel_gas = [uniform(0.0, 1.0) < 0.3 for _ in self.bowel]

        # Tissue attenuation of this subject.
        hu = np.zeros(_MAX_MATERIALS, dtype=np.float32)
        for index, material in enumerate(_MATERIALS.values()):
            spread = fpmath.normal(rng, None, 0.0, material.hu_sd) if material.hu_sd else 0.0
            hu[index] = material.hu + spread
        self.material_hu = hu
        self.lung_gradient = uniform(20.0, 45.0)  # HU, dependent (posterior) lung is denser

        # Vertebral-body centre at a fixed depth from the posterior skin, behind the fat.
        back_theta = np.array([-np.pi / 2])
        back = float(_body_radius(self, back_theta, False)[0])
        back_fat = float(_fat_thickness(self, back_theta, False)[0])
        self.vb_v = -back + back_fat + self.vb_depth_from_skin
        self.canal_v = self.vb_v - self.vb_semi[1] - 2.0 - self.canal_radius


# --------------------------------------------------------------------------- geometry


def _superellipse_radius(
    theta: np.ndarray, a: float, b_ant: float, b_post: float, n: float
) -> np.ndarray:
    cos, sin = np.abs(fpmath.cos(theta)), fpmath.sin(theta)
    b = np.where(sin >= 0, b_ant, b_post)
    pow_ = fpmath.pow_positive
    return pow_(pow_(cos / a, n) + pow_(np.abs(sin) / b, n), -1.0 / n)


def _body_radius(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    widen_u, widen_v = an.abdomen_widen if abdomen else (1.0, 1.0)
    radius = _superellipse_radius(
        theta, an.a * widen_u, an.b_ant * widen_v, an.b_post * widen_v, an.n_body
    )
    return radius * _modulation(theta, an.body_coeffs)


def _fat_thickness(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    gain = an.fat_abdomen_gain if abdomen else 1.0
    return np.clip(an.fat_mean * gain * _modulation(theta, an.fat_coeffs), *an.fat_range)


def _muscle_thickness(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    if abdomen:
        return np.full_like(theta, an.muscle_abdomen)
    # Pectoral bulk on both sides of the sternum (theta = +-60 deg off anterior).
    off_anterior = fpmath.wrap_angle(theta - np.pi / 2)
    bump = fpmath.exp(-(((np.abs(off_anterior) - 0.6) / 0.35) ** 2))
    return an.muscle_thorax + an.pectoral * bump


class _Grid(NamedTuple):
    """Supersampled crop of the volume in world and anatomical coordinates."""

    crop: tuple[slice, slice]  # native in-plane index window
    x: np.ndarray  # (Nx,) world x (mm) of supersampled columns
    y: np.ndarray  # (Ny,) world y
    z: np.ndarray  # (Nz,) world z of sub-slices
    u: np.ndarray  # (Nx, Ny) anatomical coordinates (mm)
    v: np.ndarray
    scale: float  # world mm per anatomical mm


def _fit_scale(an: _Anatomy, config: PhantomConfig) -> float:
    """Shrinks the anatomy if needed so the body stays inside the reconstruction circle."""
    theta = np.linspace(-np.pi, np.pi, 721)
    r_max = max(_body_radius(an, theta, abdomen).max() for abdomen in (False, True))
    fov_radius = min(n * s for n, s in zip(config.shape[:2], config.spacing_mm[:2], strict=True))
    limit = fov_radius / 2 - config.fov_margin_mm - float(fpmath.hypot(*an.offset))
    if limit <= 0:
        raise ValueError(
            f"field of view {fov_radius:.0f} mm is too small for a torso phantom: "
            "use more voxels or larger spacing"
        )
    return min(1.0, limit / float(r_max))


def _make_grid(an: _Anatomy, config: PhantomConfig) -> _Grid:
    nx, ny, nz = config.shape
    sx, sy, sz = config.spacing_mm
    f, fz = config.supersample, config.slab_samples
    scale = _fit_scale(an, config)
    cos, sin = _cos_sin(an.rotation)

    # Bounding box of the body outline in world coordinates, plus a margin for the PSF.
    theta = np.linspace(-np.pi, np.pi, 721)
    radius = np.maximum(_body_radius(an, theta, False), _body_radius(an, theta, True)) * scale
    bu, bv = radius * fpmath.cos(theta), radius * fpmath.sin(theta)
    bx = an.offset[0] + cos * bu - sin * bv
    by = an.offset[1] + sin * bu + cos * bv
    margin = 3
    ix0 = max(0, int(np.floor(bx.min() / sx + (nx - 1) / 2)) - margin)
    ix1 = min(nx, int(np.ceil(bx.max() / sx + (nx - 1) / 2)) + margin + 1)
    iy0 = max(0, int(np.floor(by.min() / sy + (ny - 1) / 2)) - margin)
    iy1 = min(ny, int(np.ceil(by.max() / sy + (ny - 1) / 2)) + margin + 1)

    def subsample(i0: int, i1: int, n: int, s: float, k: int) -> np.ndarray:
        centres = (np.arange(i0, i1) - (n - 1) / 2) * s
        offsets = ((np.arange(k) + 0.5) / k - 0.5) * s
        return (centres[:, None] + offsets[None, :]).ravel()

    x = subsample(ix0, ix1, nx, sx, f)
    y = subsample(iy0, iy1, ny, sy, f)
    z = subsample(0, nz, nz, sz, fz)
    dx, dy = np.meshgrid(x - an.offset[0], y - an.offset[1], indexing="ij")
    # float32 is ample for mm coordinates and halves the cost of the per-pixel maths.
    u = ((cos * dx + sin * dy) / scale).astype(np.float32)
    v = ((-sin * dx + cos * dy) / scale).astype(np.float32)
    return _Grid((slice(ix0, ix1), slice(iy0, iy1)), x, y, z, u, v, scale)


class _Fields:
    """In-plane fields that do not change with z, computed once per subject."""

    def __init__(self, an: _Anatomy, grid: _Grid) -> None:
        u, v = grid.u, grid.v
        self.u, self.v = u, v
        self.r = fpmath.hypot(u, v).astype(np.float32)
        theta = fpmath.arctan2(v, u)
        # Angle from the posterior midline, 0 (back) .. pi (front), same on both sides.
        self.phi = fpmath.arctan2(np.abs(u), -v).astype(np.float32)
        self.rib_shift = np.where(u < 0, an.rib_side_shift, 0.0).astype(np.float32)
        for amplitude, k, phase in an.rib_wobble:
            self.rib_shift += (amplitude * fpmath.sin(k * self.phi + phase)).astype(np.float32)
        self.body = [_body_radius(an, theta, ab).astype(np.float32) for ab in (False, True)]
        self.fat = [_fat_thickness(an, theta, ab).astype(np.float32) for ab in (False, True)]
        self.muscle = [_muscle_thickness(an, theta, ab).astype(np.float32) for ab in (False, True)]

        # Diaphragm height: the higher of two paraboloid domes, with deeper
        # posterior recesses (the costophrenic sulci reach lowest at the back).
        heights = []
        for (cu, cv), top in ((an.dome_right, an.h_right), (an.dome_left, an.h_left)):
            # The anterior slope is flatter: the diaphragm attaches high at the
            # xiphoid and costal margin, so the anterior recess is shallow.
            dv = np.where(v > cv, (v - cv) / 1.8, v - cv)
            d2 = ((u - cu) / an.dome_semi[0]) ** 2 + (dv / an.dome_semi[1]) ** 2
            heights.append(top - an.dome_depth * d2)
        posterior = np.clip(-v / an.b_c, 0.0, 1.0)
        self.diaphragm = (np.maximum(*heights) - an.posterior_drop * posterior).astype(np.float32)

        # Spine: vertebral body, canal, paraspinal muscles and processes.
        self.vb = _ellipse_rho(u, v, (an.spine_u, an.vb_v), an.vb_semi)
        self.canal = fpmath.hypot(u - an.spine_u, v - an.canal_v).astype(np.float32)
        self.paraspinal = _ellipse_rho(u, v, (an.spine_u, an.canal_v - 14.0), an.paraspinal_semi)
        du = u - an.spine_u
        self.spinous = (np.abs(du) < 3.5) & (v < an.canal_v - an.canal_radius - 2.0)
        self.spinous &= v > an.canal_v - an.canal_radius - 30.0
        self.transverse = np.zeros(u.shape, dtype=bool)
        for side in (1.0, -1.0):
            start_u, start_v = an.spine_u + side * (an.canal_radius + 3.0), an.canal_v + 2.0
            cos_tilt, sin_tilt = _cos_sin(0.35)
            dir_u, dir_v = side * cos_tilt, -sin_tilt
            along = (u - start_u) * dir_u + (v - start_v) * dir_v
            across = -(u - start_u) * dir_v + (v - start_v) * dir_u
            self.transverse |= (along > 0) & (along < 26.0) & (np.abs(across) < 4.0)
        # Posterior mediastinum (aorta, oesophagus, azygos, fat) between spine and heart.
        self.central_band = (np.abs(du) < an.mediastinum_half_width) & (v > an.canal_v)
        self.central_band &= v < an.vb_v + an.vb_semi[1] + 45.0

        # Sternum in the anterior chest wall.
        front = float(_body_radius(an, np.array([np.pi / 2]), False)[0])
        front_wall = float(
            _fat_thickness(an, np.array([np.pi / 2]), False)[0]
            + _muscle_thickness(an, np.array([np.pi / 2]), False)[0]
        )
        self.sternum = _ellipse_rho(
            u, v, (an.spine_u, front - front_wall + an.sternum_semi[1] - 1.0), an.sternum_semi
        )

        # Organs: normalised radii of their in-plane outlines.
        def rho(organ: _Organ) -> np.ndarray:
            return _ellipse_rho(u, v, organ.centre, organ.semi, organ.angle, organ.coeffs)

        self.heart = rho(an.heart)
        # Left ventricle: towards the apex along the long axis, and posterior.
        h = an.heart
        along, behind = 0.2 * h.semi[0], 0.25 * h.semi[1]
        cos, sin = _cos_sin(h.angle)
        lv_centre = (
            h.centre[0] + along * cos + behind * sin,
            h.centre[1] + along * sin - behind * cos,
        )
        self.lv_semi = (0.6 * h.semi[0], 0.6 * h.semi[1])
        self.lv = _ellipse_rho(u, v, lv_centre, self.lv_semi, h.angle)
        self.liver = rho(an.liver)
        # Medial edge of the left lobe: furthest left anteriorly, curved and uneven.
        amplitude, wavelength, phase = an.liver_edge_wiggle
        self.liver_edge = (
            an.liver_left_edge
            + 0.35 * an.a_c * np.clip(-v / (0.8 * an.b_c), 0.0, 1.0)
            + an.liver_edge_curve * ((v - an.liver.centre[1]) / an.b_c) ** 2
            + amplitude * fpmath.sin(v / wavelength + phase)
        ).astype(np.float32)
        self.stomach = rho(an.stomach)
        self.spleen = rho(an.spleen)
        self.kidneys = [rho(k) for k in an.kidneys]
        self.sinus = []
        for side, k in zip((1.0, -1.0), an.kidneys, strict=True):
            # Renal sinus fat sits at the hilum, anteromedially.
            centre = (k.centre[0] - side * 0.35 * k.semi[1], k.centre[1] + 0.35 * k.semi[1])
            self.sinus.append(
                _ellipse_rho(u, v, centre, (0.45 * k.semi[0], 0.35 * k.semi[1]), k.angle)
            )
        self.bowel = [rho(b) for b in an.bowel]
        self.esophagus = fpmath.hypot(
            u - an.esophagus_u, v - (an.vb_v + an.vb_semi[1] + an.esophagus_radius + 3.0)
        ).astype(np.float32)
        self.ivc = fpmath.hypot(u - an.ivc_u, v - (an.vb_v + an.vb_semi[1] + an.ivc_v)).astype(
            np.float32
        )


def _paint_slice(an: _Anatomy, fields: _Fields, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Organ labels and materials of one (sub-)slice at world height ``z`` (mm)."""
    F = fields
    labels = np.zeros(F.r.shape, dtype=np.uint8)
    material = np.zeros(F.r.shape, dtype=np.uint8)

    def paint(mask: np.ndarray, label: str, mat: str) -> None:
        labels[mask] = _L[label]
        material[mask] = _M[mat]

    # 0 at the right dome apex (thorax), 1 about 8 cm below it (abdomen).
    t = min(max((an.h_right - z) / 80.0, 0.0), 1.0)
    r_body = F.body[0] + t * (F.body[1] - F.body[0])
    r_fat = r_body - (F.fat[0] + t * (F.fat[1] - F.fat[0]))
    r_cavity = r_fat - (F.muscle[0] + t * (F.muscle[1] - F.muscle[0]))
    body = F.r < r_body
    inner = F.r < r_fat
    cavity = F.r < r_cavity
    paint(body, "muscle", "muscle")
    paint(body & ~inner, "fat", "fat_subcutaneous")
    paint(cavity, "fat", "fat_visceral")
    paraspinal = F.paraspinal < 1.0
    paint(paraspinal & inner, "muscle", "muscle")

    above = z > F.diaphragm + an.diaphragm_mm  # thoracic side of the diaphragm
    below = z < F.diaphragm
    paint(cavity & ~above & ~below & ~paraspinal, "muscle", "muscle")  # diaphragm muscle
    abdomen = cavity & below & ~paraspinal

    # Liver: right upper quadrant; its left lobe reaches across the midline
    # anteriorly and recedes lower down, and the whole liver tapers at its tip.
    taper = min(max((z - an.liver_bottom) / 50.0, 0.0), 1.0)
    if taper > 0:
        recede = 0.45 * an.a_c * min(max((an.h_right - 30.0 - z) / 70.0, 0.0), 1.0)
        liver = abdomen & (F.liver < 0.55 + 0.45 * taper) & (F.u > F.liver_edge + recede)
        paint(liver, "liver", "liver")

    s = _ellipsoid_scale(z, an.stomach.z_centre, an.stomach.z_semi)
    if s > 0.15:
        stomach = abdomen & (F.stomach < s)
        paint(stomach, "stomach", "gut_wall")
        lumen = stomach & (F.stomach < s - 5.0 / an.stomach.semi[0])
        paint(lumen, "stomach", "gastric_content")
        if an.stomach_gas:
            # Gas floats to the non-dependent (anterior) part of the lumen.
            cap = 1 - 2 * an.stomach_gas_fraction
            level = an.stomach.centre[1] + cap * an.stomach.semi[1] * s
            paint(lumen & (F.v > level), "bowel_gas", "gas")

    s = _ellipsoid_scale(z, an.spleen.z_centre, an.spleen.z_semi)
    if s > 0:
        paint(abdomen & (F.spleen < s), "spleen", "spleen")

    for kidney, rho, sinus in zip(an.kidneys, F.kidneys, F.sinus, strict=True):
        s = _ellipsoid_scale(z, kidney.z_centre, kidney.z_semi)
        if s > 0:
            paint(cavity & (rho < s) & ~paraspinal, "kidney", "kidney")
            if s > 0.75:
                paint(cavity & (sinus < (s - 0.75) * 4.0) & (rho < s), "fat", "fat_visceral")

    for organ, rho, gas in zip(an.bowel, F.bowel, an.bowel_gas, strict=True):
        s = _ellipsoid_scale(z, organ.z_centre, organ.z_semi)
        if s > 0.2:
            loop = abdomen & (rho < s) & (labels == _L["fat"])
            paint(loop, "bowel", "gut_wall")
            lumen = loop & (rho < s - 3.0 / organ.semi[1])
            paint(lumen, "bowel_gas" if gas else "bowel", "gas" if gas else "bowel_content")

    # Great vessels and oesophagus; the aorta moves from left-paravertebral in the
    # chest to pre-vertebral in the abdomen.
    ta = min(max((an.h_left - z) / 60.0, 0.0), 1.0)
    aorta_u = (1 - ta) * (
        an.spine_u - (0.6 * an.vb_semi[0] + an.aorta_radius + an.aorta_gap)
    ) + ta * an.aorta_abdomen_u
    aorta_v = (1 - ta) * (an.vb_v + 4.0) + ta * (an.vb_v + an.vb_semi[1] + an.aorta_radius + 2.0)
    aorta_d = fpmath.hypot(F.u - aorta_u, F.v - aorta_v)
    has_ivc = z < an.h_right + 5.0
    has_esophagus = z > an.h_left - 25.0

    # Heart with epicardial fat, sitting on the diaphragm.
    sh = _ellipsoid_scale(z, an.heart.z_centre, an.heart.z_semi)
    heart_zone = cavity & above
    fat_rho = an.pericardial_fat / an.heart.semi[1]

    # Lungs: the thoracic cavity minus the mediastinum.
    excluded = F.central_band | (F.paraspinal < 1.1) | (F.vb < 1.25)
    excluded |= aorta_d < an.aorta_radius + 3.0
    if sh > 0:
        excluded |= F.heart < sh + fat_rho + 0.04
    if has_esophagus:
        excluded |= F.esophagus < an.esophagus_radius + 3.0
    lung = cavity & above & ~excluded
    paint(lung, "lung", "lung")

    if sh > 0:
        paint(heart_zone & (F.heart < sh + fat_rho), "fat", "fat_visceral")
        heart = heart_zone & (F.heart < sh)
        paint(heart, "myocardium", "myocardium")  # free wall
        paint(heart & (F.heart < sh - 3.5 / an.heart.semi[1]), "heart", "blood")
        lv = heart & (F.lv < sh)
        paint(lv, "myocardium", "myocardium")
        paint(lv & (F.lv < sh - an.lv_wall / F.lv_semi[1]), "heart", "blood")

    paint(cavity & (aorta_d < an.aorta_radius), "aorta", "blood")
    if has_esophagus:
        paint(cavity & (F.esophagus < an.esophagus_radius), "esophagus", "muscle")
    if has_ivc:
        paint(cavity & ~above & (F.ivc < an.ivc_radius), "vena_cava", "blood")

    # Vertebra: body or disc depending on the level; cortical shell around a
    # trabecular core; posterior arch around the canal; processes in part of
    # each vertebral period (they point downwards).
    grow = 1.0 + 0.12 * t  # lumbar vertebrae are larger than thoracic ones
    phase = ((z - an.vertebra_phase) / an.vertebra_period) % 1.0
    vb = F.vb < grow
    if phase < an.disc_height / an.vertebra_period:
        paint(vb, "disc", "disc")
    else:
        paint(vb, "spine", "cortical")
        paint(F.vb < grow - 1.5 / an.vb_semi[1], "spine", "trabecular")
    canal_r = an.canal_radius * grow
    paint(
        (F.canal >= canal_r) & (F.canal < canal_r + 5.0) & (F.v < an.canal_v + 0.5 * canal_r),
        "spine",
        "posterior_bone",
    )
    if 0.15 < phase < 0.75:
        paint(F.spinous, "spine", "posterior_bone")
    if 0.25 < phase < 0.6:
        paint(F.transverse, "spine", "posterior_bone")
    paint(F.canal < canal_r, "spinal_canal", "csf_cord")

    # Ribs: a band just outside the cavity; a rib is present where the oblique
    # rib "phase" (descending anteriorly) falls inside the rib height.
    band = (F.r >= r_cavity + 0.5) & (F.r < r_cavity + 0.5 + an.rib_thickness)
    phi_max = np.pi - 0.5 - 1.1 * t  # the costal margin recedes in the abdomen
    band &= (F.phi > 0.35) & (F.phi < phi_max)
    rib_phase = (z - an.rib_phase + an.rib_slope * 110.0 * F.phi + F.rib_shift) / an.rib_period
    rib_phase %= 1.0
    rib = band & (rib_phase < an.rib_height / an.rib_period)
    paint(rib, "rib", "rib_cortex")
    depth = F.r - r_cavity - 0.5
    core = (depth > 1.3) & (depth < an.rib_thickness - 1.3)
    core &= (rib_phase > 1.3 / an.rib_period) & (rib_phase < (an.rib_height - 1.3) / an.rib_period)
    paint(rib & core, "rib", "marrow")

    if z > an.sternum_bottom:
        paint(F.sternum < 1.0, "sternum", "rib_cortex")
        paint(F.sternum < 1.0 - 2.0 / an.sternum_semi[1], "sternum", "marrow")

    # Nothing outside the skin.
    outside = ~body
    labels[outside] = _L["background"]
    material[outside] = _M["air"]
    return labels, material


# --------------------------------------------------------------------------- 3D details


def _segment_coverage(
    grid: _Grid, start: np.ndarray, end: np.ndarray, radius: float
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Supersampled voxels within ``radius`` of the segment ``start``-``end`` (world mm)."""
    low = np.minimum(start, end) - radius
    high = np.maximum(start, end) + radius
    index = []
    for axis, coords in enumerate((grid.x, grid.y, grid.z)):
        i0 = int(np.searchsorted(coords, low[axis]))
        i1 = int(np.searchsorted(coords, high[axis], side="right"))
        if i1 <= i0:
            return None
        index.append(slice(i0, i1))
    x = grid.x[index[0]][:, None, None] - start[0]
    y = grid.y[index[1]][None, :, None] - start[1]
    z = grid.z[index[2]][None, None, :] - start[2]
    d = end - start
    length2 = _dot3(d, d)
    t = (x * d[0] + y * d[1] + z * d[2]) / length2 if length2 > 0 else 0.0 * x
    t = np.clip(t, 0.0, 1.0)
    dist2 = (x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2
    return (index[0], index[1], index[2]), dist2 < radius * radius


class _TreeSpec(NamedTuple):
    host: int  # organ label the vessels grow in (and replace)
    label: int  # organ label painted on vessel voxels
    material: str
    per_side: bool  # one tree system per body side (the two lungs)
    roots: int  # roots per system
    root_radius_mm: tuple[float, float]
    min_radius_mm: float
    max_segments: int  # per system


# Pulmonary vessels (blood, +40 HU, in -850 HU lung) and hepatic veins (blood,
# slightly hypodense to +60 HU liver on non-contrast CT; still liver parenchyma).
_LUNG_TREES = _TreeSpec(_L["lung"], _L["lung_vessel"], "blood", True, 8, (4.0, 6.5), 0.9, 500)
_LIVER_TREES = _TreeSpec(_L["liver"], _L["liver"], "blood", False, 3, (3.0, 4.5), 1.2, 60)


def _grow_vessel_trees(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    spec: _TreeSpec,
) -> None:
    """Paints branching vessel trees into an organ.

    Trees start at the most medial points of the organ (towards the hilum)
    and branch towards random points of the same organ, with radii shrinking
    at each bifurcation, so vessels are thick centrally and thin peripherally.
    """
    host_index = np.flatnonzero(labels_ss == spec.host)
    if host_index.size < 1000:
        return
    sample = np.sort(rng.choice(host_index, size=min(5000, host_index.size), replace=False))
    ix, iy, iz = np.unravel_index(sample, labels_ss.shape)
    points = np.stack([grid.x[ix], grid.y[iy], grid.z[iz]], axis=1)
    # Sides in anatomical coordinates (u > 0 is the patient's right).
    side_of = np.where(grid.u[ix, iy] > 0, 1, -1) if spec.per_side else np.ones(ix.size, int)
    medial = np.abs(grid.u[ix, iy])
    nx, ny, nz = labels_ss.shape
    step = (grid.x[1] - grid.x[0], grid.y[1] - grid.y[0], grid.z[1] - grid.z[0] if nz > 1 else 1)

    def inside_host(p: np.ndarray) -> bool:
        i, j, k = (
            int(round((p[a] - c[0]) / step[a])) for a, c in enumerate((grid.x, grid.y, grid.z))
        )
        if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
            return False
        return labels_ss[i, j, k] in (spec.host, spec.label)

    for side in (1, -1) if spec.per_side else (1,):
        mine = side_of == side
        if mine.sum() < 200:
            continue
        pts = points[mine]
        # Roots among the most medial points of the organ's upper half (the
        # hilum lies above a lower-thorax slab, so vessels mostly run downwards).
        upper = np.flatnonzero(pts[:, 2] >= np.median(pts[:, 2]))
        order = upper[np.argsort(medial[mine][upper], kind="stable")]
        roots = order[: max(spec.roots, order.size // 10)]
        # Breadth-first, so that the segment budget is spent generation by
        # generation (all trunks before any twig) rather than on one subtree.
        queue: deque[tuple[np.ndarray, np.ndarray, float]] = deque()
        # From the hilum outwards, backwards and mostly downwards (lower lobes).
        lateral = np.array([0.6 * side, -0.3, -1.0])
        for root in rng.choice(roots, size=min(spec.roots, roots.size), replace=False):
            radius = float(rng.uniform(*spec.root_radius_mm)) * grid.scale
            direction = lateral + np.array([0.0, 0.0, rng.uniform(0.0, 1.2)])
            queue.append((pts[root], direction / _norm3(direction), radius))
        segments = 0
        while queue and segments < spec.max_segments:
            start, direction, radius = queue.popleft()
            length = float(np.clip(radius * rng.uniform(6.0, 10.0), 5.0, 35.0))
            rel = pts - start
            dist = np.sqrt(_rows_dot3(rel, rel))
            cosine = _rows_dot3(rel, direction) / np.maximum(dist, 1e-6)
            near = (dist > 0.5 * length) & (dist < 3.0 * length)
            candidates = np.flatnonzero(near & (cosine > 0.3))
            if candidates.size == 0:  # nothing ahead: allow a sharper turn
                candidates = np.flatnonzero(near & (cosine > -0.2))
            if candidates.size == 0:
                continue
            target = pts[candidates[int(rng.integers(candidates.size))]]
            heading = (target - start) / _norm3(target - start)
            new_dir = 0.4 * direction + 0.6 * heading
            new_dir /= _norm3(new_dir)
            end = start + length * new_dir
            if not inside_host(end):
                continue
            covered = _segment_coverage(grid, start, end, radius)
            if covered is not None:
                window, inside = covered
                inside &= labels_ss[window] == spec.host
                labels_ss[window][inside] = spec.label
                material_ss[window][inside] = _M[spec.material]
            segments += 1
            # Asymmetric bifurcation (a major and a minor daughter), roughly Murray's law.
            for child in (radius * rng.uniform(0.75, 0.88), radius * rng.uniform(0.6, 0.8)):
                if child >= spec.min_radius_mm * grid.scale:
                    queue.append((end, new_dir, child))


def _add_lesions(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    an: _Anatomy,
    config: PhantomConfig,
) -> None:
    """Spherical lesions in liver (hypo- or hyper-dense) or lung (solid nodules)."""
    count = int(rng.integers(config.lesions[0], config.lesions[1] + 1))
    for k in range(min(count, _MAX_LESIONS)):
        in_liver = rng.uniform() < 0.6
        diameter = float(rng.uniform(*config.lesion_diameter_mm)) * grid.scale
        contrast = float(rng.uniform(20.0, 60.0))
        sign = 1.0 if rng.uniform() < 0.4 else -1.0  # most liver lesions are hypodense
        hosts = (_L["liver"],) if in_liver else (_L["lung"], _L["lung_vessel"])
        candidates = np.flatnonzero(labels_ss == hosts[0])
        pick = int(rng.integers(1 << 62))
        if candidates.size == 0:
            continue
        i, j, m = np.unravel_index(candidates[pick % candidates.size], labels_ss.shape)
        centre = np.array([grid.x[i], grid.y[j], grid.z[m]])
        covered = _segment_coverage(grid, centre, centre, diameter / 2)
        if covered is None:
            continue
        window, inside = covered
        inside &= np.isin(labels_ss[window], hosts)
        hu = an.material_hu[_M["liver"]] + sign * contrast if in_liver else contrast
        an.material_hu[_LESION_MATERIAL0 + k] = hu
        labels_ss[window][inside] = _L["lesion"]
        material_ss[window][inside] = _LESION_MATERIAL0 + k


# --------------------------------------------------------------------------- volume


class _Blocks:
    """The supersampled values falling into each output voxel, ``(x, y, z, samples)``.

    Most output voxels lie inside one material; only the mixed ones (at
    boundaries) need the per-sample work, which keeps partial-volume averaging cheap.
    """

    def __init__(self, values_ss: np.ndarray, f: int, fz: int) -> None:
        nx, ny, nz = values_ss.shape
        blocks = values_ss.reshape(nx // f, f, ny // f, f, nz // fz, fz)
        blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(nx // f, ny // f, nz // fz, -1)
        self.first = blocks[..., 0].copy()
        self.mixed = blocks.min(axis=-1) != blocks.max(axis=-1)
        self.rows = blocks[self.mixed]

    def mean(self, table: np.ndarray) -> np.ndarray:
        """Average of ``table[value]`` over each output voxel (float32)."""
        out = table[self.first]
        # Sample by sample, in a fixed order: numpy's reductions are free to
        # pick their summation order by SIMD width.
        values = table[self.rows]
        total = values[:, 0].copy()
        for j in range(1, values.shape[1]):
            total += values[:, j]
        out[self.mixed] = total / np.float32(values.shape[1])
        return out

    def majority(self) -> np.ndarray:
        """Most frequent value per output voxel (ties go to the lower value)."""
        out = self.first.copy()
        if self.rows.size:
            present = np.unique(self.rows)
            counts = np.stack([(self.rows == value).sum(axis=1) for value in present], axis=1)
            out[self.mixed] = present[np.argmax(counts, axis=1)]
        return out


def _correlated_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float, spacing: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with an isotropic ``sigma_mm`` kernel."""
    noise = fpmath.normal(rng, shape).astype(np.float32)
    field = ndimage.gaussian_filter(noise, [sigma_mm / s for s in spacing], mode="reflect")
    sd = float(field.std())
    return field / sd if sd > 0 else field


def generate_subject(
    subject: int, seed: int, config: PhantomConfig = PhantomConfig()
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
    streams = np.random.SeedSequence([int(seed), int(subject)]).spawn(4)
    anatomy_rng, vessel_rng, lesion_rng, texture_rng = (np.random.default_rng(s) for s in streams)
    an = _Anatomy(anatomy_rng, config)
    grid = _make_grid(an, config)
    fields = _Fields(an, grid)
    f, fz = config.supersample, config.slab_samples

    shape_ss = (grid.u.shape[0], grid.u.shape[1], grid.z.size)
    labels_ss = np.empty(shape_ss, dtype=np.uint8)
    material_ss = np.empty(shape_ss, dtype=np.uint8)
    for k, z in enumerate(grid.z):
        labels_ss[:, :, k], material_ss[:, :, k] = _paint_slice(an, fields, float(z))
    for spec in (_LUNG_TREES, _LIVER_TREES):
        _grow_vessel_trees(vessel_rng, grid, labels_ss, material_ss, spec)
    _add_lesions(lesion_rng, grid, labels_ss, material_ss, an, config)

    # Partial volume: average HU over each output voxel, majority organ label.
    materials = _Blocks(material_ss, f, fz)
    labels_crop = _Blocks(labels_ss, f, fz).majority()
    del labels_ss, material_ss
    hu_crop = materials.mean(an.material_hu)

    # Texture: correlated noise scaled by the material mix of each voxel.
    spacing = config.spacing_mm
    table = np.zeros((3, _MAX_MATERIALS), dtype=np.float32)
    for index, material in enumerate(_MATERIALS.values()):
        table[:, index] = (material.fine, material.soft, material.lung)
    table[1, _LESION_MATERIAL0:] = 6.0
    for row, sigma_mm in zip(table, (0.8, 2.0, 2.5), strict=True):
        noise = _correlated_noise(texture_rng, hu_crop.shape, sigma_mm, spacing)
        hu_crop += materials.mean(row) * noise
    # Gravity-dependent lung density: posterior (dependent) parenchyma is denser.
    is_lung = np.zeros(_MAX_MATERIALS, dtype=np.float32)
    is_lung[_M["lung"]] = 1.0
    v_blocks = grid.v.reshape(hu_crop.shape[0], f, hu_crop.shape[1], f)
    v_native = sum(v_blocks[:, i, :, j] for i in range(f) for j in range(f)) / np.float32(f * f)
    gradient = an.lung_gradient * np.clip(-v_native / an.b_c, -1.0, 1.0)
    hu_crop += materials.mean(is_lung) * gradient[:, :, None].astype(np.float32)

    hu = np.full(config.shape, -1000.0, dtype=np.float32)
    labels = np.zeros(config.shape, dtype=np.uint8)
    hu[grid.crop] = hu_crop
    labels[grid.crop] = labels_crop
    if config.psf_sigma_mm > 0:
        # Blur the attenuation above air so that air stays exactly -1000 far from the body.
        sigma = [config.psf_sigma_mm / s for s in spacing[:2]] + [0.0]
        hu = ndimage.gaussian_filter(hu + 1000.0, sigma, mode="constant") - 1000.0
    np.clip(hu, -1000.0, 3071.0, out=hu)
    return hu.astype(np.float32, copy=False), labels


# --------------------------------------------------------------------------- NIfTI


_SCAN_DESCRIPTION = nifti_description("CT torso phantom, HU")
_SEG_DESCRIPTION = nifti_description("sparsect organ labels")


def _nifti_gz_bytes(data: np.ndarray, affine: np.ndarray, description: str, label: bool) -> bytes:
    """Serialises a volume as .nii.gz bytes that depend on the data only (no timestamps)."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()
    if label:
        header.set_intent("label")
    # code 1 = scanner-based anatomical coordinates (RAS+ world in mm).
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _write_synced(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def write_dataset(
    out_dir: Path, subjects: int, seed: int, config: PhantomConfig = PhantomConfig()
) -> list[Path]:
    """Writes ``subjects`` phantoms as NIfTI.

    For each ``i`` in ``range(subjects)``: ``out_dir/subject_{i:03d}.nii.gz`` (HU,
    int16, rounded) and ``out_dir/subject_{i:03d}_seg.nii.gz`` (uint8 organ labels
    of :data:`ORGAN_LABELS`), both with the affine of :func:`phantom_affine`
    (RAS+, mm). Files are byte-for-byte deterministic in ``(subjects, seed,
    config)``. They are written into a hidden temporary folder next to
    ``out_dir`` and renamed into place, so an interruption never leaves a
    half-written file in ``out_dir``; other files in ``out_dir`` are left alone.

    Args:
        out_dir: output folder (created if missing).
        subjects: number of subjects, indexed ``0 .. subjects - 1``.
        seed: dataset seed (>= 0); subject ``i`` is ``generate_subject(i, seed, config)``.
        config: grid and variation ranges.

    Returns:
        The scan paths (not the label maps), in subject order.

    Raises:
        ValueError: if ``subjects`` or ``seed`` is negative, or the grid cannot hold a torso.
    """
    if subjects < 0:
        raise ValueError(f"subjects must be >= 0, got {subjects}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    affine = phantom_affine(config)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    names: list[str] = []
    try:
        for i in range(subjects):
            hu, labels = generate_subject(i, seed, config)
            hu_int = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
            scan, seg = f"subject_{i:03d}.nii.gz", f"subject_{i:03d}_seg.nii.gz"
            _write_synced(
                staging / scan, _nifti_gz_bytes(hu_int, affine, _SCAN_DESCRIPTION, label=False)
            )
            _write_synced(
                staging / seg, _nifti_gz_bytes(labels, affine, _SEG_DESCRIPTION, label=True)
            )
            names += [scan, seg]
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / f"subject_{i:03d}.nii.gz" for i in range(subjects)]
