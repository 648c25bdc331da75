"""Organ segmentation scores: Dice and the 95th-percentile Hausdorff distance.

The downstream segmenter (:mod:`sparsect.models.segmenter`) labels every
method's reconstruction; these functions score its classes against the true
organ classes (:func:`sparsect.priors.organs.segmenter_classes`) per subject, on
the subject's 3D volume (its slices stacked in order) and in millimetres of the
anisotropic grid.

Definitions, per organ and subject:

- Dice ``2 |P & T| / (|P| + |T|)``;
- HD95: the surface of a mask is its voxels with a face-neighbour outside it (the
  volume's border counts as outside); the distances from every surface voxel of
  ``P`` to the nearest surface voxel of ``T`` and from every surface voxel of
  ``T`` to the nearest of ``P`` are pooled, and HD95 is their 95th percentile
  (linear interpolation), in mm.

Edge cases: an organ absent from both ``P`` and ``T`` gives NaN for both scores
(nothing to score); absent from one only gives Dice 0 and HD95 NaN (no surface
to measure to), and is counted in ``one_sided``. A subject whose true labels
are missing (:data:`~sparsect.priors.organs.NO_LABEL`) is left out.

Two cubes of side 10 voxels offset by 2 slices of 5 mm: Dice (10 - 2) / 10, HD95 10 mm
(the faces that do not overlap are 2 slices apart):

>>> true = np.zeros((20, 16, 16), dtype=np.uint8)
>>> pred = np.zeros_like(true)
>>> true[4:14, 3:13, 3:13] = 2
>>> pred[6:16, 3:13, 3:13] = 2
>>> scores = organ_scores(pred, true, ["a"] * 20, (1.0, 1.0, 5.0))
>>> scores["lung"]["dice"]["a"], scores["lung"]["hd95_mm"]["a"]
(0.8, 10.0)
>>> math.isnan(scores["liver"]["dice"]["a"]), scores["liver"]["one_sided"]
(True, 0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from sparsect.priors.organs import DOWNSTREAM_ORGANS, NO_LABEL

__all__ = ["hd95_mm", "mean_organ_dice", "organ_scores", "surface"]

Spacing = tuple[float, float, float]

_FACES = ndimage.generate_binary_structure(3, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face-neighbour outside it (or on the volume's border).

    >>> surface(np.ones((3, 3, 3), dtype=bool)).sum()  # all but the centre
    np.int64(26)
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def hd95_mm(pred: np.ndarray, true: np.ndarray, sampling: Sequence[float]) -> float:
    """95th percentile of the pooled surface distances of two non-empty 3D masks, in
    the units of ``sampling`` (the spacing of the array's axes, in their order)."""
    pred_surface, true_surface = surface(pred), surface(true)
    to_true = ndimage.distance_transform_edt(~true_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    distances = np.concatenate([to_true[pred_surface], to_pred[true_surface]])
    return float(np.percentile(distances, 95))


def _spacing_of(spacing_mm: Spacing | Mapping[str, Spacing], subject: str) -> Spacing:
    value = spacing_mm[subject] if isinstance(spacing_mm, Mapping) else spacing_mm
    row, col, slice_ = (float(v) for v in value)
    return row, col, slice_


def organ_scores(pred: np.ndarray, true: np.ndarray, subjects: Sequence[str],
                 spacing_mm: Spacing | Mapping[str, Spacing],
                 organs: Sequence[str] | None = None) -> dict[str, dict]:
    """Dice and HD95 per organ and subject.

    Args:
        pred, true: segmenter classes ``(N, H, W)`` (class ``2 + i`` is the i-th organ
            of :data:`DOWNSTREAM_ORGANS`); ``true`` may hold ``NO_LABEL``.
        subjects: subject id of each slice; a subject's slices must be contiguous and
            in order (as ``prepare`` stores them).
        spacing_mm: ``(row mm, col mm, slice mm)``, or a mapping subject -> that.
        organs: names of :data:`DOWNSTREAM_ORGANS` to score (default: all).

    Returns:
        ``{organ: {"dice": {subject: float}, "hd95_mm": {subject: float},
        "one_sided": int}}``: ``one_sided`` counts the subjects where the organ is
        in one of the two only (Dice 0, HD95 NaN). See the module docstring.

    Raises:
        ValueError: if the shapes differ, ``subjects`` does not give one id per
            slice, or a subject's slices are not contiguous.
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(f"pred and true must be equal (N, H, W) arrays, got {pred.shape} "
                         f"and {true.shape}")
    subjects = [str(s) for s in subjects]
    if len(subjects) != pred.shape[0]:
        raise ValueError(f"{len(subjects)} subject ids for {pred.shape[0]} slices")
    names = list(DOWNSTREAM_ORGANS)
    organs = list(organs) if organs is not None else names
    for organ in organs:
        if organ not in DOWNSTREAM_ORGANS:
            raise ValueError(f"unknown organ '{organ}': use one of {', '.join(names)}")
    scores = {organ: {"dice": {}, "hd95_mm": {}, "one_sided": 0} for organ in organs}
    for subject, slices in _runs(subjects).items():
        truth = true[slices]
        if (truth == NO_LABEL).any():
            continue
        guess = pred[slices]
        row, col, slice_ = _spacing_of(spacing_mm, subject)
        for organ in organs:
            index = 2 + names.index(organ)
            p, t = guess == index, truth == index
            dice, hd = _pair_scores(p, t, (slice_, row, col))
            if math.isnan(hd) and not math.isnan(dice):
                scores[organ]["one_sided"] += 1
            scores[organ]["dice"][subject] = dice
            scores[organ]["hd95_mm"][subject] = hd
    return scores


def _runs(subjects: list[str]) -> dict[str, slice]:
    """Subject -> its slices, checking that they are contiguous."""
    runs: dict[str, slice] = {}
    start = 0
    for end in range(1, len(subjects) + 1):
        if end == len(subjects) or subjects[end] != subjects[start]:
            if subjects[start] in runs:
                raise ValueError(f"the slices of subject '{subjects[start]}' are not contiguous")
            runs[subjects[start]] = slice(start, end)
            start = end
    return runs


def _pair_scores(p: np.ndarray, t: np.ndarray, sampling: Spacing) -> tuple[float, float]:
    """(Dice, HD95) of two 3D masks with the edge cases of the module docstring."""
    size_p, size_t = int(p.sum()), int(t.sum())
    if size_p == 0 and size_t == 0:
        return math.nan, math.nan
    if size_p == 0 or size_t == 0:
        return 0.0, math.nan
    dice = 2.0 * int((p & t).sum()) / (size_p + size_t)
    return dice, hd95_mm(p, t, sampling)


def mean_organ_dice(scores: Mapping[str, Mapping]) -> dict[str, float]:
    """Subject -> mean Dice over the organs present in its prediction or truth (NaN
    Dice, organ in neither, left out; NaN when no organ is present).

    >>> mean_organ_dice({"lung": {"dice": {"a": 0.8, "b": float("nan")}},
    ...                  "liver": {"dice": {"a": 0.0, "b": float("nan")}}})
    {'a': 0.4, 'b': nan}
    """
    subjects = dict.fromkeys(s for organ in scores.values() for s in organ["dice"])
    means = {}
    for subject in subjects:
        values = [organ["dice"][subject] for organ in scores.values()
                  if subject in organ["dice"] and not math.isnan(organ["dice"][subject])]
        means[subject] = float(np.mean(values)) if values else math.nan
    return means
