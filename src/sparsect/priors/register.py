"""An earlier scan's label map as the tissue prior of the current scan.

A follow-up scan of the same patient can reuse the organ map made on an earlier
scan (for example TotalSegmentator's). The patient lies differently on the table
each time, so the map is first registered rigidly to the current scan, then
resampled onto the current scan's grid and turned into tissue classes:

- fixed image: the current scan as it exists at reconstruction time, its own
  sparse-view FBP in HU (a full-dose image of it does not exist);
- moving image: a pseudo-CT painted from the label map, one typical HU per tissue
  class (:data:`PSEUDO_HU`), since an organ map has no intensities of its own;
- metric Mattes mutual information (the FBP's streaks and the pseudo-CT's flat
  regions do not share intensities, only their statistical dependence), an
  :class:`SimpleITK.Euler3DTransform` started from the images' geometric centres,
  three resolution levels, and a fixed seed for the metric's random samples.

The label map is then resampled nearest-neighbour into the fixed grid. Voxels the
table sends to :data:`~sparsect.priors.masks.FROM_HU` (TotalSegmentator's 0) and
voxels the map does not cover take their classes from the HU of the FBP.

Arrays here are RAS+ ``(x, y, z)`` volumes with nibabel's voxel -> world affine,
as the rest of sparsect writes them; SimpleITK's world is LPS, converted at the
border (:func:`sitk_image`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsect.errors import InputError, reading
from sparsect.priors.classes import (
    BACKGROUND,
    BONE,
    FAT,
    LUNG,
    SOFT_TISSUE,
    TISSUE_CLASSES,
)
from sparsect.priors.labels import TABLE_NAMES, label_table
from sparsect.priors.masks import FROM_HU, tissue_masks_from_labels_and_hu

__all__ = [
    "MIN_COVERAGE",
    "PSEUDO_HU",
    "RegisteredPrior",
    "read_label_map",
    "register_label_map",
    "sitk_image",
]

PSEUDO_HU: dict[int, float] = {
    BACKGROUND: -1000.0,
    LUNG: -850.0,
    FAT: -100.0,
    SOFT_TISSUE: 40.0,
    BONE: 500.0,
}
"""Tissue class -> HU of the pseudo-CT painted from a label map."""

# A label whose class comes from HU (TotalSegmentator's 0 holds the outside air as
# well as fat and unsegmented muscle) has no one typical HU: it gets a level of its
# own, which mutual information pairs with whatever the scan shows there.
PSEUDO_HU_FROM_HU = -500.0

MIN_COVERAGE = 0.5
"""Smallest fraction of the scan's voxels the registered map must cover."""

# Rigid motion between two scans of one patient is a few centimetres at most; the
# optimiser's steps are in mm (rotations scaled to the same physical shift).
_LEARNING_RATE_MM = 2.0
_MIN_STEP_MM = 0.01
_ITERATIONS = 100
_SHRINK_FACTORS = (4, 2, 1)
_SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)
_SAMPLING_PERCENTAGE = 0.25
_HISTOGRAM_BINS = 32
# ITK's Gaussian smoothing and image gradients need four voxels along every axis.
_MIN_VOXELS = 4
# The FBP's HU range that carries anatomy: streaks beyond it only add histogram bins.
_FIXED_HU_RANGE = (-1000.0, 1000.0)
# The nibabel (RAS) <-> SimpleITK (LPS) world flip.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class RegisteredPrior:
    """``classes``: ``(x, y, z)`` uint8 tissue classes on the fixed grid; ``labels``: the
    label map resampled onto it (``-1`` where the map does not reach); ``record``: the
    transform and the registration's outcome (see :func:`register_label_map`)."""

    classes: np.ndarray
    labels: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a 3D integer label map (NIfTI) as ``(labels (x, y, z) int64, affine)``.

    Raises:
        InputError: if the file is missing, unreadable, not 3D or not integer-valued.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Label map '{path}' does not exist: give the NIfTI label map of an "
                         "earlier scan of this patient.")
    with reading(f"label map '{path}'", "give a complete NIfTI label map (.nii or .nii.gz)"):
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 1:
        raise InputError(f"Label map '{path}' has shape {data.shape} but a 3D volume is "
                         "expected: give the label map of a whole scan.")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(f"Label map '{path}' holds non-integer values: give a label map "
                             "(one integer per structure), not an image.")
    return data.astype(np.int64), affine


def sitk_image(array: np.ndarray, affine: np.ndarray):  # noqa: ANN201 - SimpleITK.Image
    """A RAS+ ``(x, y, z)`` array with nibabel's ``affine`` as a SimpleITK image (LPS world)."""
    import SimpleITK as sitk

    linear = np.asarray(affine, np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in _RAS_TO_LPS @ np.asarray(affine, np.float64)[:3, 3]])
    image.SetDirection([float(v) for v in (_RAS_TO_LPS @ (linear / spacing)).ravel()])
    return image


def _sitk_array(image) -> np.ndarray:  # noqa: ANN001 - SimpleITK.Image
    import SimpleITK as sitk

    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def _check_labels(labels: np.ndarray, table: Mapping[int, int], path: Path) -> np.ndarray:
    """The distinct label values, after checking that ``table`` knows them all."""
    values = np.unique(labels)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        raise InputError(f"Label map '{path}' holds values {shown} that the label table does "
                         "not know: pass --prior-table with the table of the tool that wrote "
                         "it (" + ", ".join(TABLE_NAMES) + ").")
    return values


def _pseudo_ct(labels: np.ndarray, values: np.ndarray, table: Mapping[int, int]) -> np.ndarray:
    """The label map painted with :data:`PSEUDO_HU` per tissue class."""
    offset = int(values.min())
    lookup = np.empty(int(values.max()) - offset + 1, np.float32)
    for value in values:
        tissue = table[int(value)]
        lookup[int(value) - offset] = (PSEUDO_HU_FROM_HU if tissue == FROM_HU
                                       else PSEUDO_HU[tissue])
    return lookup[labels - offset]


def _euler_record(transform, final_metric: float, initial_metric: float,  # noqa: ANN001
                  iterations: int, stop: str) -> dict[str, Any]:
    """The fitted transform in RAS mm and degrees, and the registration's outcome."""
    translation = _RAS_TO_LPS @ np.asarray(transform.GetTranslation())
    angles = np.degrees([transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ()])
    return {
        "transform": "Euler3DTransform",
        "direction": "scan point -> label-map point",
        "translation_mm": [round(float(v), 3) for v in translation],
        "rotation_deg": [round(float(v), 3) for v in angles],
        "center_mm": [round(float(v), 3)
                      for v in _RAS_TO_LPS @ np.asarray(transform.GetCenter())],
        "metric": "mattes_mutual_information",
        "initial_metric": round(float(initial_metric), 6),
        "final_metric": round(float(final_metric), 6),
        "iterations": int(iterations),
        "stop": stop,
    }


def register_label_map(path: Path, fixed_hu: np.ndarray, fixed_affine: np.ndarray,
                       table: str | Mapping = "totalsegmentator",
                       seed: int = 0) -> RegisteredPrior:
    """Registers label map ``path`` rigidly to the scan ``fixed_hu`` and resamples it there.

    Args:
        path: NIfTI label map of an earlier scan of the same patient.
        fixed_hu: ``(x, y, z)`` RAS+ volume in HU of the current scan (its sparse-view
            FBP), on the grid of ``fixed_affine``.
        fixed_affine: its voxel -> world (mm, RAS+) affine.
        table: a label table (:func:`sparsect.priors.labels.label_table`): a name of
            :data:`~sparsect.priors.labels.TABLE_NAMES` or a mapping label value ->
            tissue class name or ``"hu"``.
        seed: seed (>= 0) of the metric's random samples; the result is deterministic in it.

    Returns:
        The tissue classes on the fixed grid and a record: ``translation_mm`` (RAS)
        and ``rotation_deg`` (about x, y, z) of the transform taking a scan point to
        the label-map point that matches it, the metric before and after, the
        iterations of the last level, and ``coverage``, the fraction of the scan's
        voxels the registered map reaches.

    Raises:
        InputError: for a missing, unreadable, non-3D, too thin or non-integer label map, label
            values the table does not know, a fixed volume that is not 3D, or a map
            that covers less than :data:`MIN_COVERAGE` of the scan once registered.
    """
    import SimpleITK as sitk

    path = Path(path)
    table = label_table(table)
    fixed_hu = np.asarray(fixed_hu, np.float32)
    if fixed_hu.ndim != 3:
        raise InputError(f"The scan to register label map '{path}' to has shape "
                         f"{fixed_hu.shape}: give a 3D volume.")
    labels, label_affine = read_label_map(path)
    if min(labels.shape) < _MIN_VOXELS:
        raise InputError(f"Label map '{path}' has shape {labels.shape}, too thin to register "
                         f"(at least {_MIN_VOXELS} voxels along each axis): give the map of the "
                         "whole earlier scan.")
    values = _check_labels(labels, table, path)
    with reading(f"the orientation of label map '{path}'", "give a map with an invertible, "
                 "non-sheared affine"):
        moving = sitk_image(_pseudo_ct(labels, values, table), label_affine)
    fixed = sitk_image(np.clip(fixed_hu, *_FIXED_HU_RANGE), fixed_affine)

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads a seed of 0 as "seed from the wall clock": shift ours past it
    method.SetMetricSamplingPercentage(_SAMPLING_PERCENTAGE, int(seed) + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=_LEARNING_RATE_MM, minStep=_MIN_STEP_MM, numberOfIterations=_ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(_SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(_SMOOTHING_SIGMAS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=True)
    # one thread: the metric's sums then add up in the same order on every run
    method.SetNumberOfThreads(1)
    try:
        initial_metric = method.MetricEvaluate(fixed, moving)
        method.Execute(fixed, moving)
    except RuntimeError as error:
        raise InputError(f"Label map '{path}' could not be registered to the scan "
                         f"({str(error).strip().splitlines()[-1]}): check that it is a map of "
                         "this patient's body region.") from None
    transform = initial
    record = _euler_record(transform, method.GetMetricValue(), initial_metric,
                           method.GetOptimizerIteration(),
                           method.GetOptimizerStopConditionDescription())

    outside = int(values.max()) + 1
    resampled = _sitk_array(sitk.Resample(
        sitk_image(labels.astype(np.int32), label_affine), fixed, transform,
        sitk.sitkNearestNeighbor, outside, sitk.sitkInt32)).astype(np.int64)
    covered = resampled != outside
    coverage = float(covered.mean())
    record["coverage"] = round(coverage, 4)
    if coverage < MIN_COVERAGE:
        raise InputError(f"Label map '{path}' covers {coverage:.0%} of the scan once registered "
                         f"(at least {MIN_COVERAGE:.0%} needed): give a map of the same body "
                         "region of this patient.")
    # classes per axial slice (the HU masks' morphology works slice by slice)
    classes = tissue_masks_from_labels_and_hu(
        np.moveaxis(resampled, 2, 0), np.moveaxis(fixed_hu, 2, 0), {**table, outside: FROM_HU})
    record["class_fractions"] = {
        name: round(float(np.mean(classes == index)), 4)
        for index, name in enumerate(TISSUE_CLASSES)}
    return RegisteredPrior(np.ascontiguousarray(np.moveaxis(classes, 0, 2)),
                           np.where(covered, resampled, -1), record)
