"""TotalSegmentator label maps: structure tables and their tissue classes.

`TotalSegmentator <https://github.com/wasserth/TotalSegmentator>`_ writes one
label value per anatomical structure ("total" task: 117 structures in v2, 104
in v1) and 0 where none of its structures is. That 0 is not air outside the
body: it also covers subcutaneous and visceral fat, unsegmented muscle and the
couch, so :data:`TISSUE_TABLES` maps it (and the structures that mix tissues,
see :data:`STRUCTURE_TO_TISSUE`) to :data:`~sparsect.priors.masks.FROM_HU`, and
the ``masks`` stage takes those voxels' classes from the HU thresholds of the
same slice.

>>> from sparsect.priors.classes import BONE, LUNG
>>> TISSUE_TABLES["totalsegmentator"][5] == structure_tissue("liver")
True
>>> structure_tissue(STRUCTURES_V2[16]) == LUNG, structure_tissue(STRUCTURES_V1[18]) == BONE
(True, True)
"""

from __future__ import annotations

from sparsect.priors.classes import BONE, LUNG, SOFT_TISSUE
from sparsect.priors.masks import FROM_HU

__all__ = [
    "STRUCTURES_V1",
    "STRUCTURES_V2",
    "STRUCTURE_TO_TISSUE",
    "TISSUE_TABLES",
    "structure_tissue",
]

_FIRST_SIX = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
}
"""The six abdominal organs both versions number first, 1 to 6."""

STRUCTURES_V2: dict[int, str] = {
    **_FIRST_SIX,
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    15: "esophagus",
    16: "trachea",
    17: "thyroid_gland",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
    21: "urinary_bladder",
    22: "prostate",
    23: "kidney_cyst_left",
    24: "kidney_cyst_right",
    25: "sacrum",
    26: "vertebrae_S1",
    27: "vertebrae_L5",
    28: "vertebrae_L4",
    29: "vertebrae_L3",
    30: "vertebrae_L2",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    33: "vertebrae_T11",
    34: "vertebrae_T10",
    35: "vertebrae_T9",
    36: "vertebrae_T8",
    37: "vertebrae_T7",
    38: "vertebrae_T6",
    39: "vertebrae_T5",
    40: "vertebrae_T4",
    41: "vertebrae_T3",
    42: "vertebrae_T2",
    43: "vertebrae_T1",
    44: "vertebrae_C7",
    45: "vertebrae_C6",
    46: "vertebrae_C5",
    47: "vertebrae_C4",
    48: "vertebrae_C3",
    49: "vertebrae_C2",
    50: "vertebrae_C1",
    51: "heart",
    52: "aorta",
    53: "pulmonary_vein",
    54: "brachiocephalic_trunk",
    55: "subclavian_artery_right",
    56: "subclavian_artery_left",
    57: "common_carotid_artery_right",
    58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left",
    62: "superior_vena_cava",
    63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein",
    65: "iliac_artery_left",
    66: "iliac_artery_right",
    67: "iliac_vena_left",
    68: "iliac_vena_right",
    69: "humerus_left",
    70: "humerus_right",
    71: "scapula_left",
    72: "scapula_right",
    73: "clavicula_left",
    74: "clavicula_right",
    75: "femur_left",
    76: "femur_right",
    77: "hip_left",
    78: "hip_right",
    79: "spinal_cord",
    80: "gluteus_maximus_left",
    81: "gluteus_maximus_right",
    82: "gluteus_medius_left",
    83: "gluteus_medius_right",
    84: "gluteus_minimus_left",
    85: "gluteus_minimus_right",
    86: "autochthon_left",
    87: "autochthon_right",
    88: "iliopsoas_left",
    89: "iliopsoas_right",
    90: "brain",
    91: "skull",
    92: "rib_left_1",
    93: "rib_left_2",
    94: "rib_left_3",
    95: "rib_left_4",
    96: "rib_left_5",
    97: "rib_left_6",
    98: "rib_left_7",
    99: "rib_left_8",
    100: "rib_left_9",
    101: "rib_left_10",
    102: "rib_left_11",
    103: "rib_left_12",
    104: "rib_right_1",
    105: "rib_right_2",
    106: "rib_right_3",
    107: "rib_right_4",
    108: "rib_right_5",
    109: "rib_right_6",
    110: "rib_right_7",
    111: "rib_right_8",
    112: "rib_right_9",
    113: "rib_right_10",
    114: "rib_right_11",
    115: "rib_right_12",
    116: "sternum",
    117: "costal_cartilages",
}
"""Label value -> structure name of the TotalSegmentator v2 "total" task (117 structures)."""

STRUCTURES_V1: dict[int, str] = {
    **_FIRST_SIX,
    7: "aorta",
    8: "inferior_vena_cava",
    9: "portal_vein_and_splenic_vein",
    10: "pancreas",
    11: "adrenal_gland_right",
    12: "adrenal_gland_left",
    13: "lung_upper_lobe_left",
    14: "lung_lower_lobe_left",
    15: "lung_upper_lobe_right",
    16: "lung_middle_lobe_right",
    17: "lung_lower_lobe_right",
    18: "vertebrae_L5",
    19: "vertebrae_L4",
    20: "vertebrae_L3",
    21: "vertebrae_L2",
    22: "vertebrae_L1",
    23: "vertebrae_T12",
    24: "vertebrae_T11",
    25: "vertebrae_T10",
    26: "vertebrae_T9",
    27: "vertebrae_T8",
    28: "vertebrae_T7",
    29: "vertebrae_T6",
    30: "vertebrae_T5",
    31: "vertebrae_T4",
    32: "vertebrae_T3",
    33: "vertebrae_T2",
    34: "vertebrae_T1",
    35: "vertebrae_C7",
    36: "vertebrae_C6",
    37: "vertebrae_C5",
    38: "vertebrae_C4",
    39: "vertebrae_C3",
    40: "vertebrae_C2",
    41: "vertebrae_C1",
    42: "esophagus",
    43: "trachea",
    44: "heart_myocardium",
    45: "heart_atrium_left",
    46: "heart_ventricle_left",
    47: "heart_atrium_right",
    48: "heart_ventricle_right",
    49: "pulmonary_artery",
    50: "brain",
    51: "iliac_artery_left",
    52: "iliac_artery_right",
    53: "iliac_vena_left",
    54: "iliac_vena_right",
    55: "small_bowel",
    56: "duodenum",
    57: "colon",
    58: "rib_left_1",
    59: "rib_left_2",
    60: "rib_left_3",
    61: "rib_left_4",
    62: "rib_left_5",
    63: "rib_left_6",
    64: "rib_left_7",
    65: "rib_left_8",
    66: "rib_left_9",
    67: "rib_left_10",
    68: "rib_left_11",
    69: "rib_left_12",
    70: "rib_right_1",
    71: "rib_right_2",
    72: "rib_right_3",
    73: "rib_right_4",
    74: "rib_right_5",
    75: "rib_right_6",
    76: "rib_right_7",
    77: "rib_right_8",
    78: "rib_right_9",
    79: "rib_right_10",
    80: "rib_right_11",
    81: "rib_right_12",
    82: "humerus_left",
    83: "humerus_right",
    84: "scapula_left",
    85: "scapula_right",
    86: "clavicula_left",
    87: "clavicula_right",
    88: "femur_left",
    89: "femur_right",
    90: "hip_left",
    91: "hip_right",
    92: "sacrum",
    93: "face",
    94: "gluteus_maximus_left",
    95: "gluteus_maximus_right",
    96: "gluteus_medius_left",
    97: "gluteus_medius_right",
    98: "gluteus_minimus_left",
    99: "gluteus_minimus_right",
    100: "autochthon_left",
    101: "autochthon_right",
    102: "iliopsoas_left",
    103: "iliopsoas_right",
    104: "urinary_bladder",
}
"""Label value -> structure name of the TotalSegmentator v1 "total" task (104 structures)."""

_BONE_PREFIXES = ("vertebrae_", "rib_", "humerus_", "scapula_", "clavicula_", "femur_", "hip_")
_BONES = frozenset({"sacrum", "skull", "sternum"})

# The tissue classes are defined by HU (see sparsect.priors.classes), so a
# structure gets the class its voxels have on a CT:
# - the lung lobes are lung; the trachea is air inside the body, which the HU
#   masks also call lung (as the phantom table does for bowel gas);
# - the bones are bone (cortex and most trabecular bone lie above +200 HU);
# - costal cartilage is soft tissue: hyaline cartilage lies at about +50 to
#   +150 HU, below the bone threshold (median +104 HU and no voxel above +200 on
#   the TotalSegmentator reference scan); where it has calcified it is patchy and
#   thin, so calling the whole structure bone would be wrong for most voxels;
# - the digestive tract's structures include the lumen, which holds gas (lung by
#   HU, as the phantoms' bowel gas) or fat-dense contents in proportions that vary
#   from scan to scan (the reference scan's colon: 50 % below -400 HU, 34 % fat,
#   16 % soft tissue), so their voxels take their HU classes;
# - v1's "face" is a coarse region for de-identification (skin, fat, facial
#   bones and sinus air together), so its voxels take their HU classes too;
# - neither version segments fat; every other structure (solid organs, vessels,
#   muscles, brain, spinal cord) is soft tissue.
_LUNG = frozenset({"trachea"})
_FROM_HU = frozenset({"face", "esophagus", "stomach", "duodenum", "small_bowel", "colon"})


def structure_tissue(name: str) -> int:
    """Tissue class index of a TotalSegmentator structure, or ``FROM_HU`` for mixed regions.

    Raises:
        KeyError: if ``name`` is in neither :data:`STRUCTURES_V2` nor :data:`STRUCTURES_V1`;
            use a structure name of those tables.
    """
    if name not in _NAMES:
        raise KeyError(
            f"'{name}' is not a TotalSegmentator structure: use a name of STRUCTURES_V2 "
            "or STRUCTURES_V1."
        )
    if name in _FROM_HU:
        return FROM_HU
    if name.startswith("lung_") or name in _LUNG:
        return LUNG
    if name.startswith(_BONE_PREFIXES) or name in _BONES:
        return BONE
    return SOFT_TISSUE


_NAMES = frozenset(STRUCTURES_V2.values()) | frozenset(STRUCTURES_V1.values())

STRUCTURE_TO_TISSUE: dict[str, int] = {name: structure_tissue(name) for name in sorted(_NAMES)}
"""Structure name -> tissue class index (``FROM_HU``: the voxel's class comes from its HU)."""


def _tissue_table(structures: dict[int, str]) -> dict[int, int]:
    table = {0: FROM_HU}
    table.update({value: STRUCTURE_TO_TISSUE[name] for value, name in structures.items()})
    return table


TISSUE_TABLES: dict[str, dict[int, int]] = {
    "totalsegmentator": _tissue_table(STRUCTURES_V2),
    "totalsegmentator_v1": _tissue_table(STRUCTURES_V1),
}
"""``masks.label_table`` name -> label value -> tissue class index.

Label 0 ("none of the structures": fat, unsegmented muscle, air inside and
outside the body) maps to ``FROM_HU``, as do the structures that mix tissues
(the digestive tract with its gas and contents, v1's face region).
"""
