"""``sparsect reconstruct FOLLOWUP --prior-scan BASELINE``: an earlier full-dose scan of
the patient, read, checked, brought to the follow-up's grid and registered to it.

The baseline is read like any scan (NIfTI, NRRD, MHA, DICOM), resampled in-plane onto
the reconstruction grid as ``prepare`` does and along z (linearly) onto the follow-up's
slice spacing, then registered rigidly and by a B-spline to the follow-up's own FBP
(:mod:`sparsect.priors.deformable`, the settings ``followup.registration`` chose on the
validation pairs). Refused, each in one sentence: a baseline whose values are not CT in
HU (no air near -1000 HU, or values outside what CT stores), and one that overlaps less
than :data:`MIN_OVERLAP` of the follow-up after registration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sparsect.data.io import ScanEntry, axial_slices, load_subject, standardise
from sparsect.errors import InputError
from sparsect.priors.deformable import overlap, register_scans, warp

MIN_OVERLAP = 0.5
"""Smallest share of the follow-up's voxels the registered baseline must cover."""
MIN_SLICES = 4
"""Slices both scans need along z (the registration's coarse level halves them)."""
_CT_RANGE = (-1100.0, 4100.0)


def read_prior_scan(path: Path, image_size: int, pixel_size_mm: float,
                    hu_clip: tuple[float, float] | None, slice_mm: float
                    ) -> tuple[np.ndarray, float]:
    """The baseline as ``(Z, H, W)`` HU on the reconstruction grid, resampled along z to
    ``slice_mm``; and its own slice spacing (mm)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Prior scan '{path}' does not exist: give the earlier CT scan of "
                         "this patient (NIfTI, NRRD, MHA or DICOM).")
    entry = ScanEntry(path.name, path, None)
    subject = load_subject(entry)
    raw = subject["ct"].data[0].numpy()
    check_ct(raw, path)
    subject = standardise(subject, image_size, pixel_size_mm,
                          hu_clip if hu_clip is not None else (-1024.0, 3071.0))
    hu = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    own = float(subject["ct"].spacing[2])
    if abs(own - slice_mm) > 1e-3 and hu.shape[0] > 1:
        count = max(1, int(np.floor((hu.shape[0] - 1) * own / slice_mm)) + 1)
        z = np.arange(count) * slice_mm / own
        rows, cols = np.mgrid[:hu.shape[1], :hu.shape[2]]
        hu = np.stack([ndimage.map_coordinates(hu, [np.full(rows.shape, v), rows, cols],
                                               order=1, mode="nearest") for v in z])
    return hu.astype(np.float32), own


def check_ct(values: np.ndarray, path: Path) -> None:
    """Refuses a volume whose values are not CT in HU."""
    finite = np.asarray(values, np.float32)[np.isfinite(values)]
    if finite.size == 0:
        raise InputError(f"Prior scan '{path}' holds no finite values: give a CT scan.")
    low, high = float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))
    air = float(np.mean(finite < -800.0))
    if low < _CT_RANGE[0] or high > _CT_RANGE[1] or air < 0.01:
        raise InputError(
            f"Prior scan '{path}' does not look like CT in HU (values {low:.0f} to {high:.0f}, "
            f"{100 * air:.1f} % near air at -1000 HU): give the earlier CT scan of this patient, "
            "not another modality or a rescaled image.")


def register_prior_scan(fixed_hu: np.ndarray, baseline_hu: np.ndarray,
                        spacing: tuple[float, float, float], settings: dict[str, Any],
                        path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The baseline registered to the follow-up's ``(Z, H, W)`` reconstruction: the warped
    baseline (HU, on the follow-up's grid) and the registration's record."""
    for name, volume in (("follow-up", fixed_hu), (f"prior scan '{path}'", baseline_hu)):
        if volume.shape[0] < MIN_SLICES:
            raise InputError(f"The {name} has {volume.shape[0]} slice(s) on the reconstruction "
                             f"grid; registering needs {MIN_SLICES}: give a volume of at least "
                             f"{MIN_SLICES} slices.")
    settings = {k: v for k, v in settings.items() if k != "fixed"}
    found = register_scans(fixed_hu, baseline_hu, spacing, **settings)
    covered = overlap(found.field, spacing, baseline_hu.shape)
    if covered < MIN_OVERLAP:
        raise InputError(
            f"Prior scan '{path}' covers only {100 * covered:.0f} % of the follow-up after "
            f"registration ({100 * MIN_OVERLAP:.0f} % needed): give an earlier scan of the same "
            "body region.")
    prior = warp(baseline_hu, found.field, spacing)
    return prior.astype(np.float32), {**found.record, "overlap": covered,
                                      "spacing_mm": list(spacing)}
