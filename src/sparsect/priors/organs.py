"""Organ label values of the built-in phantoms and their tissue classes.

The phantom generator writes these values into its ``*_seg.nii.gz`` maps, the
``prepare`` stage writes :data:`NO_LABEL` where a scan comes without a label map,
and the ``masks`` stage turns label maps into tissue classes with
:data:`ORGAN_TO_TISSUE`.

>>> from sparsect.priors.classes import BONE
>>> ORGAN_TO_TISSUE[ORGAN_LABELS["rib"]] == BONE
True
"""

from __future__ import annotations

from sparsect.priors.classes import BACKGROUND, BONE, FAT, LUNG, SOFT_TISSUE

__all__ = ["NO_LABEL", "ORGAN_LABELS", "ORGAN_TO_TISSUE"]

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
