"""Tissue-class prior masks from HU values, from a label map, or from both.

Classes are those of :mod:`sparsect.priors.classes`. Thresholds alone
mislabel partial-volume pixels (a lung boundary at -300 HU is not fat) and
stray noise, so the HU route adds morphology: the body is the largest
connected component of non-air with its holes filled (so the lungs are
inside it), lung is air inside the body, and small islands of any class are
absorbed by their surroundings. A label map that leaves voxels unassigned
(TotalSegmentator's 0) is completed from HU by :func:`tissue_masks_from_labels_and_hu`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from sparsect.errors import InputError
from sparsect.priors.classes import (
    BACKGROUND,
    BONE,
    FAT,
    HU_BONE_MIN,
    HU_FAT_MAX,
    HU_LUNG_MAX,
    LUNG,
    NUM_TISSUE_CLASSES,
    SOFT_TISSUE,
)

# Anything denser than this is the patient (air is -1000 HU, lung about -850,
# so -500 separates the outside air from skin without eating into the lungs,
# which are enclosed by the body and recovered by hole filling).
HU_BODY_MIN = -500.0

FROM_HU = -1
"""Label-table value meaning "no label covers this voxel": its class comes from the HU masks."""


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Largest connected non-air component with holes filled, for one ``(H, W)`` slice."""
    foreground = ndimage.binary_opening(hu > HU_BODY_MIN, iterations=1)
    components, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = ndimage.sum_labels(foreground, components, index=np.arange(1, count + 1))
    body = components == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(body)


def _absorb_small_islands(classes: np.ndarray, body: np.ndarray, min_pixels: int) -> np.ndarray:
    """Gives every connected island smaller than ``min_pixels`` the class of the
    nearest pixel outside all small islands (one distance transform per slice,
    rather than a loop over islands: noisy FBPs have thousands of them)."""
    small = np.zeros(classes.shape, dtype=bool)
    for tissue in (LUNG, FAT, BONE, SOFT_TISSUE):
        components, count = ndimage.label(classes == tissue)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        too_small = sizes < min_pixels
        too_small[0] = False
        small |= too_small[components]
    small &= body
    if not small.any() or small.all():
        return classes
    _, (rows, cols) = ndimage.distance_transform_edt(small, return_indices=True)
    out = classes.copy()
    out[small] = classes[rows[small], cols[small]]
    return out


def tissue_masks_from_hu(hu: np.ndarray, min_component_pixels: int = 20) -> np.ndarray:
    """Tissue classes from HU with morphological clean-up.

    Args:
        hu: ``(H, W)`` or ``(N, H, W)`` slices in Hounsfield units.
        min_component_pixels: islands smaller than this are absorbed by their surroundings.

    Returns:
        uint8 array of the same shape with values in ``0..NUM_TISSUE_CLASSES-1``.

    >>> import numpy as np
    >>> hu = np.full((32, 32), -1000.0); hu[8:24, 8:24] = 40.0
    >>> int(tissue_masks_from_hu(hu)[16, 16])
    3
    """
    if hu.ndim == 3:
        out = np.zeros(hu.shape, dtype=np.uint8)
        for index, hu_slice in enumerate(hu):
            out[index] = tissue_masks_from_hu(hu_slice, min_component_pixels)
        return out
    if hu.ndim != 2:
        raise ValueError(f"hu must be (H, W) or (N, H, W), got shape {hu.shape}")
    body = body_mask(hu)
    classes = np.full(hu.shape, SOFT_TISSUE, dtype=np.uint8)
    classes[hu < HU_FAT_MAX] = FAT
    classes[hu < HU_LUNG_MAX] = LUNG
    classes[hu >= HU_BONE_MIN] = BONE
    classes[~body] = BACKGROUND
    return _absorb_small_islands(classes, body, min_component_pixels)


def _label_lookup(labels: np.ndarray, table: Mapping[int, int]) -> np.ndarray:
    """Class of every label value up to the largest one (``FROM_HU`` allowed), after checking
    that ``table`` covers every value in ``labels``."""
    values = np.unique(labels)
    missing = [int(v) for v in values if int(v) not in table]
    if missing:
        raise InputError(
            f"label values {missing} have no tissue class in the label table: "
            "add them to masks.label_table or choose the table of the tool that wrote the maps."
        )
    lookup = np.zeros(int(max(max(table), values.max())) + 1, dtype=np.int16)
    for label, tissue in table.items():
        lookup[int(label)] = tissue
    return lookup


def tissue_masks_from_labels(labels: np.ndarray, table: Mapping[int, int]) -> np.ndarray:
    """Maps organ labels to tissue classes with ``table`` (label value -> class index).

    The table must cover every voxel (as the phantom table does); a table with
    ``FROM_HU`` entries needs the scan too: see :func:`tissue_masks_from_labels_and_hu`.

    Raises:
        InputError: if the label map holds a value the table does not cover; add
            the value to ``masks.label_table``.
        ValueError: if the table maps a value to ``FROM_HU``; call
            :func:`tissue_masks_from_labels_and_hu` instead.
    """
    if FROM_HU in table.values():
        raise ValueError(
            "the label table takes some classes from HU: use tissue_masks_from_labels_and_hu."
        )
    return _label_lookup(labels, table)[labels.astype(np.int64)].astype(np.uint8)


def tissue_masks_from_labels_and_hu(
    labels: np.ndarray,
    hu: np.ndarray,
    table: Mapping[int, int],
    min_component_pixels: int = 20,
) -> np.ndarray:
    """Tissue classes from a label map where ``table`` covers a voxel, from HU elsewhere.

    A voxel whose label the table maps to :data:`FROM_HU` (for the
    TotalSegmentator tables: label 0, "none of the structures", which holds fat,
    unsegmented muscle and air inside and outside the body) takes its class from
    :func:`tissue_masks_from_hu` of the same slice; every other voxel takes the
    table's class. With a table that has no ``FROM_HU`` entry this equals
    :func:`tissue_masks_from_labels` and the HU masks are not computed.

    Args:
        labels: ``(H, W)`` or ``(N, H, W)`` integer label map.
        hu: slices in Hounsfield units, of the same shape as ``labels``.
        table: label value -> class index or ``FROM_HU``.
        min_component_pixels: passed to :func:`tissue_masks_from_hu`.

    Returns:
        uint8 array of the shape of ``labels`` with values in ``0..NUM_TISSUE_CLASSES-1``.

    Raises:
        InputError: if the label map holds a value the table does not cover; add
            the value to ``masks.label_table``.
        ValueError: if ``labels`` and ``hu`` differ in shape; pass the label map
            of the same slices.

    >>> import numpy as np
    >>> hu = np.full((32, 32), -1000.0); hu[4:28, 4:28] = -100.0; hu[10:20, 10:20] = 40.0
    >>> labels = np.zeros((32, 32), int); labels[10:20, 10:20] = 5
    >>> classes = tissue_masks_from_labels_and_hu(labels, hu, {0: FROM_HU, 5: BONE})
    >>> [int(classes[y, x]) for y, x in ((15, 15), (6, 6), (1, 1))]  # bone, fat, background
    [4, 2, 0]
    """
    if labels.shape != hu.shape:
        raise ValueError(
            f"labels {labels.shape} and hu {hu.shape} differ in shape: "
            "pass the label map of the same slices."
        )
    classes = _label_lookup(labels, table)[labels.astype(np.int64)]
    uncovered = classes == FROM_HU
    if uncovered.any():
        classes[uncovered] = tissue_masks_from_hu(hu, min_component_pixels)[uncovered]
    return classes.astype(np.uint8)


def one_hot(classes: np.ndarray) -> np.ndarray:
    """``(..., H, W)`` class map -> ``(..., C, H, W)`` float32 one-hot probabilities."""
    eye = np.eye(NUM_TISSUE_CLASSES, dtype=np.float32)
    return np.moveaxis(eye[classes.astype(np.int64)], -1, -3)
