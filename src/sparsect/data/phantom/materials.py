"""Tissue materials of the phantoms: mean HU, its spread between subjects, texture amplitudes.

Label maps hold organs; the HU image is painted with materials (an organ such
as the stomach is made of several). Material ``k`` is index ``k`` into
:data:`_MATERIALS` and into each subject's HU table; lesions get indices from
:data:`_LESION_MATERIAL0` on, each with its own HU.
"""

from __future__ import annotations

from typing import NamedTuple


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
