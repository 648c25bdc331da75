"""A real scan's organ labels in the phantoms' values (:data:`~.organs.ORGAN_LABELS`).

The follow-up pairs made from real scans (:func:`sparsect.data.followup.make_pair`) need
what the phantoms have: the body, the fat outside the muscle wall, the organs whose
enhancement changes, the bowel, and the lesions' host organs. A TotalSegmentator map
gives the organs by name; every body voxel it leaves unlabelled (and every voxel of a
scan without a map) takes a label from its HU: gas below -400 HU (a large connected
region is lung where no map says otherwise, a small one bowel gas), fat from -190 to
-30 HU, bone above 250 HU, soft tissue (``muscle``) otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sparsect.priors.masks import body_mask
from sparsect.priors.organs import ORGAN_LABELS

__all__ = ["organ_labels", "structure_organ"]

_L = ORGAN_LABELS
_BY_NAME = {
    "liver": "liver", "spleen": "spleen", "kidney_left": "kidney", "kidney_right": "kidney",
    "aorta": "aorta", "inferior_vena_cava": "vena_cava", "stomach": "stomach",
    "small_bowel": "bowel", "duodenum": "bowel", "colon": "colon", "esophagus": "esophagus",
    "urinary_bladder": "bladder", "sacrum": "pelvis_bone", "sternum": "sternum", "heart": "heart",
}
_BY_PREFIX = (("lung_", "lung"), ("vertebrae_", "spine"), ("rib_", "rib"), ("hip_", "pelvis_bone"),
              ("femur_", "femur"), ("heart_", "heart"))
LARGE_GAS = 0.02
"""A gas region larger than this share of the body is lung (where no map labels it)."""


def structure_organ(name: str) -> int | None:
    """The organ label of a TotalSegmentator structure (None: soft tissue, by HU).

    >>> structure_organ("kidney_left") == ORGAN_LABELS["kidney"], structure_organ("pancreas")
    (True, None)
    """
    if name in _BY_NAME:
        return _L[_BY_NAME[name]]
    for prefix, organ in _BY_PREFIX:
        if name.startswith(prefix):
            return _L[organ]
    return None


def organ_labels(hu: np.ndarray, labels: np.ndarray | None = None,
                 structures: dict[int, str] | None = None) -> np.ndarray:
    """``(Z, H, W)`` int16 organ labels of a ``(Z, H, W)`` HU volume and (optionally) its
    TotalSegmentator map ``labels`` with ``structures`` (value -> name)."""
    hu = np.asarray(hu, np.float32)
    body = np.stack([body_mask(image) for image in hu])
    out = np.zeros(hu.shape, np.int16)
    out[body] = _L["muscle"]
    out[body & (hu >= -190) & (hu < -30)] = _L["fat"]
    out[body & (hu > 250)] = _L["spine"]
    gas = body & (hu < -400)
    regions, count = ndimage.label(gas)
    if count:
        sizes = ndimage.sum_labels(gas, regions, np.arange(1, count + 1))
        large = np.isin(regions, 1 + np.flatnonzero(sizes > LARGE_GAS * body.sum()))
        out[gas & large] = _L["lung"]
        out[gas & ~large] = _L["bowel_gas"]
    if labels is not None:
        for value, name in (structures or {}).items():
            organ = structure_organ(name)
            if organ is not None:
                inside = (labels == value) & body
                # gas inside a bowel organ stays gas
                if organ in (_L["bowel"], _L["colon"], _L["stomach"]):
                    inside &= hu >= -400
                out[inside] = organ
    return out
