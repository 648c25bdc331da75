"""Tissue classes shared by the prior masks, the models and the evaluation.

The classes are deliberately coarse: they are what an HU threshold plus
morphology can recover from a full-dose scan, and what a segmentation head can
plausibly predict from a streaky sparse-view FBP.
"""

from __future__ import annotations

TISSUE_CLASSES: tuple[str, ...] = ("background", "lung", "fat", "soft_tissue", "bone")
"""Class index -> name. Index 0 is air outside the body."""

BACKGROUND, LUNG, FAT, SOFT_TISSUE, BONE = range(len(TISSUE_CLASSES))
NUM_TISSUE_CLASSES = len(TISSUE_CLASSES)

# HU boundaries between classes, taken from the usual clinical windows:
# lung parenchyma is below about -400 HU, fat lies between about -200 and
# -30 HU, bone (cortical and most trabecular) above about +200 HU.
HU_LUNG_MAX = -400.0
HU_FAT_MAX = -30.0
HU_BONE_MIN = 200.0
