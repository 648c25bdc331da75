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
    # Materials below take their native HU from another one (no spread of their own):
    # they differ only once contrast medium arrives, see _ENHANCEMENT.
    "blood_venous": _Material(40.0, 0.0, 0.0, 5.0, 0.0),  # native HU of "blood"
    "kidney_medulla": _Material(30.0, 0.0, 0.0, 7.0, 0.0),  # native HU of "kidney"
    # The patient table (its HU are drawn per subject, see _Anatomy._draw_table).
    "table_shell": _Material(200.0, 0.0, 0.0, 0.0, 0.0),  # carbon-fibre skin
    "table_core": _Material(-780.0, 0.0, 0.0, 0.0, 0.0),  # foam
    "mattress": _Material(-850.0, 0.0, 0.0, 0.0, 0.0),
    # Gut content and urine (their HU are drawn per subject, see _Anatomy._draw_gut).
    "faeces": _Material(30.0, 0.0, 0.0, 10.0, 0.0),  # matrix between the gas bubbles
    "oral_contrast": _Material(150.0, 0.0, 0.0, 8.0, 0.0),  # positive oral contrast
    "urine": _Material(10.0, 0.0, 0.0, 4.0, 0.0),
}
_M = {name: index for index, name in enumerate(_MATERIALS)}
_NATIVE_OF = {"blood_venous": "blood", "kidney_medulla": "kidney"}

# Intravenous contrast phases, and the HU each adds to a material's native value, as
# (low, high) per contrast phase: (portal-venous, arterial). Non-contrast adds nothing.
_PHASES = ("non_contrast", "portal_venous", "arterial")
_ENHANCEMENT: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # heart, aorta and lung vessels: the arterial bolus is far denser than the mixed blood
    "blood": ((120.0, 180.0), (250.0, 350.0)),
    # venae cavae and hepatic veins: still unopacified in the arterial phase
    "blood_venous": ((110.0, 170.0), (20.0, 60.0)),
    "liver": ((40.0, 60.0), (10.0, 25.0)),  # mostly portal supply: late
    "spleen": ((60.0, 90.0), (70.0, 110.0)),
    "kidney": ((100.0, 160.0), (150.0, 200.0)),  # cortex
    "kidney_medulla": ((80.0, 130.0), (30.0, 70.0)),  # corticomedullary difference early
    "gut_wall": ((20.0, 40.0), (20.0, 40.0)),
    "myocardium": ((50.0, 80.0), (70.0, 110.0)),
    "muscle": ((3.0, 10.0), (2.0, 6.0)),
}
_LESION_MATERIAL0 = 32  # lesion k uses material 32 + k with its own HU
_MAX_MATERIALS = 64
_MAX_LESIONS = _MAX_MATERIALS - _LESION_MATERIAL0
