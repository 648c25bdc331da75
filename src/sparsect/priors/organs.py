"""Organ label values of the built-in phantoms and their tissue classes.

The phantom generator writes these values into its ``*_seg.nii.gz`` maps, the
``prepare`` stage writes :data:`NO_LABEL` where a scan comes without a label map,
and the ``masks`` stage turns label maps into tissue classes with
:data:`ORGAN_TO_TISSUE`.

>>> from sparsect.priors.classes import BONE
>>> ORGAN_TO_TISSUE[ORGAN_LABELS["rib"]] == BONE
True

The downstream segmenter (:mod:`sparsect.models.segmenter`) learns the organs of
:data:`DOWNSTREAM_ORGANS` as classes of :func:`segmenter_classes`:

>>> segmenter_classes(np.array([[0, 22, 1, 15, NO_LABEL]], dtype=np.int16)).tolist()
[[0, 0, 1, 3, -1]]
"""

from __future__ import annotations

import numpy as np

from sparsect.priors.classes import BACKGROUND, BONE, FAT, LUNG, SOFT_TISSUE

__all__ = ["DOWNSTREAM_ORGANS", "NO_LABEL", "ORGAN_LABELS", "ORGAN_TO_TISSUE",
           "SEGMENTER_BACKGROUND", "SEGMENTER_BODY", "segmenter_class_names",
           "segmenter_classes"]

NO_LABEL = -1
"""Label value ``prepare`` writes on every pixel of a scan that has no label map."""

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
    "table": 22,  # patient table and mattress, outside the body
    "arm": 23,  # arm muscle
    "arm_bone": 24,  # humerus, radius and ulna: cortex and marrow
    "arm_fat": 25,  # subcutaneous fat of the arms
    "colon": 26,  # colon and rectum: wall and faecal content (its gas is "bowel_gas")
    "bladder": 27,  # urinary bladder: wall and urine
    "pelvis_bone": 28,  # iliac wings, acetabula and sacrum: cortex and marrow
    "femur": 29,  # femoral heads: cortex and marrow
}
"""Organ name -> label value in the phantoms' ``*_seg.nii.gz`` maps. 0 is air outside the body;
"table" is not part of the body either."""

_L = ORGAN_LABELS

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
    # The table is not the patient: whatever its HU, it belongs with the air around it.
    _L["table"]: BACKGROUND,
    _L["arm"]: SOFT_TISSUE,
    _L["arm_bone"]: BONE,
    _L["arm_fat"]: FAT,
    _L["colon"]: SOFT_TISSUE,
    _L["bladder"]: SOFT_TISSUE,
    _L["pelvis_bone"]: BONE,
    _L["femur"]: BONE,
}
"""Organ label value -> tissue class index of :mod:`sparsect.priors.classes`."""

DOWNSTREAM_ORGANS: dict[str, tuple[int, ...]] = {
    # the vessels inside the lung are part of the organ a lung mask delineates
    "lung": (_L["lung"], _L["lung_vessel"]),
    "liver": (_L["liver"],),
    "spleen": (_L["spleen"],),
    "kidney": (_L["kidney"],),
    # blood pool and wall: the heart as one organ, as a clinical heart mask draws it
    "heart": (_L["heart"], _L["myocardium"]),
    "aorta": (_L["aorta"],),
    "stomach": (_L["stomach"],),
    # The vertebral column: vertebrae and the discs between them (a continuous column
    # along z). The spinal canal is left out: it holds cord and CSF, soft-tissue dense
    # and a structure of its own (TotalSegmentator's spinal_cord), not bone.
    "spine": (_L["spine"], _L["disc"]),
}
"""Organ name -> the phantom label values it is made of, scored by the downstream
segmenter. Lesions (in liver or lung) belong to no organ: the rest of the body."""

SEGMENTER_BACKGROUND = 0
"""Segmenter class of air outside the body and of the patient table."""
SEGMENTER_BODY = 1
"""Segmenter class of every body voxel outside the organs of :data:`DOWNSTREAM_ORGANS`."""


def segmenter_class_names() -> tuple[str, ...]:
    """Names of the segmenter classes by index: background, body, then the organs.

    >>> segmenter_class_names()[:4]
    ('background', 'body', 'lung', 'liver')
    """
    return ("background", "body", *DOWNSTREAM_ORGANS)


ORGAN_CLASSES = 2 + len(DOWNSTREAM_ORGANS)
"""Number of segmenter classes: the organ-level classes a prior scan's organ map holds."""


def scan_prior(prior_hu: np.ndarray, organ_classes: np.ndarray) -> np.ndarray:
    """What a ``prior: scan`` network reads beside the FBP: ``(N, 1 + ORGAN_CLASSES, H, W)``
    float32, the earlier scan registered to the slices (``hu / HU_SCALE``) and its organ
    map one-hot (segmenter classes, :func:`segmenter_classes`).

    >>> scan_prior(np.zeros((2, 4, 4)), np.ones((2, 4, 4), np.uint8)).shape
    (2, 11, 4, 4)
    """
    from sparsect.physics.units import HU_SCALE

    prior_hu = np.asarray(prior_hu, np.float32)
    organ_classes = np.asarray(organ_classes)
    if prior_hu.shape != organ_classes.shape or prior_hu.ndim != 3:
        raise ValueError(f"a prior scan (N, H, W) and its organ map must match, got "
                         f"{prior_hu.shape} and {organ_classes.shape}")
    if organ_classes.size and (organ_classes.min() < 0 or organ_classes.max() >= ORGAN_CLASSES):
        raise ValueError(f"organ classes must lie in [0, {ORGAN_CLASSES})")
    out = np.zeros((len(prior_hu), 1 + ORGAN_CLASSES, *prior_hu.shape[1:]), np.float32)
    out[:, 0] = prior_hu / HU_SCALE
    n, h, w = np.indices(organ_classes.shape)
    out[n, 1 + organ_classes.astype(np.int64), h, w] = 1.0
    return out


def _class_table() -> np.ndarray:
    table = np.full(max(ORGAN_LABELS.values()) + 1, SEGMENTER_BODY, dtype=np.int8)
    table[[_L["background"], _L["table"]]] = SEGMENTER_BACKGROUND
    for index, labels in enumerate(DOWNSTREAM_ORGANS.values(), start=2):
        table[list(labels)] = index
    return table


def segmenter_classes(labels: np.ndarray) -> np.ndarray:
    """Phantom label values (any shape, as ``prepare`` writes them) -> segmenter classes.

    0 is air and the table, 1 the rest of the body, ``2 + i`` the i-th organ of
    :data:`DOWNSTREAM_ORGANS`; :data:`NO_LABEL` stays :data:`NO_LABEL` (int8 result).

    Raises:
        ValueError: for a value that is neither a phantom label nor :data:`NO_LABEL`
            (a label map of another table).

    >>> segmenter_classes(np.array([3, 4, 5, 6, 10, 11, 12, 21], dtype=np.int16)).tolist()
    [2, 2, 6, 6, 9, 9, 1, 1]
    """
    labels = np.asarray(labels)
    table = _class_table()
    unknown = (labels != NO_LABEL) & ((labels < 0) | (labels >= len(table)))
    if unknown.any():
        raise ValueError(f"label value {int(labels[unknown].flat[0])} is not a phantom organ "
                         "label: segmenter classes are defined for the phantom table only")
    classes = table[np.clip(labels, 0, len(table) - 1)]
    return np.where(labels == NO_LABEL, np.int8(NO_LABEL), classes).astype(np.int8)
