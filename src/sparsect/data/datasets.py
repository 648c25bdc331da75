"""Public data set layouts that are not one file per scan: LoDoPaB-CT and TotalSegmentator.

LoDoPaB-CT (Leuschner et al., Sci Data 2021; Zenodo record 3384092) ships its ground
truth as ``ground_truth_<part>_<nnn>.hdf5`` files, each with a dataset ``data`` of
shape ``(128, 362, 362)`` (fewer slices in the last file of a part) in normalised
linear attenuation ``mu / MU_MAX``, clipped to ``[0, 1]``. The conventions are those of
its reference loader (``dival``, ``dival.util.constants`` and the LIDC-IDRI conversion
it was made with): ``MU_WATER = 20``, ``MU_AIR = 0.02`` (1/m),
``MU_MAX = 3071 (MU_WATER - MU_AIR) / 1000 + MU_WATER = 81.35858`` (3071 HU), an image
domain of 26 cm (pixels of 260/362 mm), and ``data[k, i, j]`` = the LIDC-IDRI slice's
pixel at column ``i``, row ``j`` (the DICOM pixel array, centre-cropped and transposed).

TotalSegmentator (Wasserthal et al., Radiology: AI 2023) ships one folder per
subject: ``ct.nii.gz`` and ``segmentations/<structure>.nii.gz``, one binary mask per
structure of its "total" task; the tool can also write one multi-label map.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from sparsect.errors import InputError, reading

LODOPAB_MU_WATER = 20.0
"""Linear attenuation of water, 1/m."""
LODOPAB_MU_AIR = 0.02
"""Linear attenuation of air, 1/m."""
LODOPAB_MU_MAX = 3071 * (LODOPAB_MU_WATER - LODOPAB_MU_AIR) / 1000 + LODOPAB_MU_WATER
"""The attenuation (of 3071 HU) by which LoDoPaB's values are normalised: 81.35858 1/m."""
LODOPAB_DOMAIN_MM = 260.0
"""Side of the square image domain."""
LODOPAB_SLICE_MM = 1.0
"""Nominal z spacing of the stack of independent slices of one file (see read_lodopab)."""
LODOPAB_NAME = re.compile(r"ground_truth_(train|validation|test)_\d+\.hdf5")

TOTALSEG_CT = "ct"
"""Stem of a TotalSegmentator subject's scan (``ct.nii.gz``)."""
TOTALSEG_MASKS = "segmentations"
"""Folder of a TotalSegmentator subject's binary masks."""
TOTALSEG_MAPS = ("seg", "segmentations")
"""Stems of a multi-label map beside ``ct.nii.gz``, in order of preference."""
MASK_SUFFIXES = (".nii.gz", ".nii")


def is_lodopab_file(path: Path) -> bool:
    return LODOPAB_NAME.fullmatch(Path(path).name) is not None


def lodopab_to_hu(values: np.ndarray) -> np.ndarray:
    """Normalised LoDoPaB attenuation -> HU: ``1000 (mu - mu_water) / (mu_water - mu_air)``
    with ``mu = value * MU_MAX`` (0 -> -1001 HU, 1 -> 3071 HU)."""
    mu = np.asarray(values, dtype=np.float64) * LODOPAB_MU_MAX
    return (1000.0 * (mu - LODOPAB_MU_WATER) / (LODOPAB_MU_WATER - LODOPAB_MU_AIR)).astype(
        np.float32)


def hu_to_lodopab(hu: np.ndarray) -> np.ndarray:
    """The inverse of :func:`lodopab_to_hu` (no clipping)."""
    mu = np.asarray(hu, dtype=np.float64) * (LODOPAB_MU_WATER - LODOPAB_MU_AIR) / 1000.0
    return ((mu + LODOPAB_MU_WATER) / LODOPAB_MU_MAX).astype(np.float32)


def read_lodopab(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One LoDoPaB-CT ground-truth file as a volume ``(x, y, z)`` in HU and its RAS+ affine.

    The slices of a file are *not* one contiguous volume: LoDoPaB shuffled the slices
    of each part (train, validation, test) at random, so neighbouring slices of a file
    come from different patients, and the patients of one file recur in the other files
    of its part. The file is read as a stack of independent 2D slices with a nominal
    z spacing of :data:`LODOPAB_SLICE_MM`; models that read neighbouring slices as
    context (``model.context_slices`` > 1) must not be trained on it, and a split by
    file does not separate patients (LoDoPaB's own parts do, and
    ``patient_ids_rand_<part>.csv`` names the patient of each slice).

    In-plane, ``x`` runs along the columns of the original slice (to the patient's
    left) and ``y`` along its rows (to posterior); the pixel size is the data set's
    nominal 26 cm domain over the image width (260/362 mm), centred on the origin.

    Raises:
        InputError: if the file cannot be read or holds no ``(slices, rows, columns)``
            dataset ``data``.
    """
    import h5py

    path = Path(path)
    with reading(f"LoDoPaB file '{path}'", "check that the file is complete"), \
            h5py.File(path, "r") as file:
        if "data" not in file or getattr(file["data"], "ndim", 0) != 3:
            shape = getattr(file.get("data"), "shape", None)
            raise InputError(
                f"LoDoPaB file '{path}' has no 3D dataset 'data' (found "
                f"{'none' if shape is None else tuple(shape)}): give a ground_truth_*.hdf5 "
                "file of LoDoPaB-CT as downloaded."
            )
        values = np.asarray(file["data"][...], dtype=np.float32)
    slices, width, height = values.shape
    pixel = LODOPAB_DOMAIN_MM / width
    affine = np.diag([-pixel, -pixel, LODOPAB_SLICE_MM, 1.0])
    affine[:3, 3] = [pixel * (width - 1) / 2, pixel * (height - 1) / 2, 0.0]
    return np.ascontiguousarray(np.transpose(lodopab_to_hu(values), (1, 2, 0))), affine


def totalsegmentator_layout(folder: Path, scan_suffixes: tuple[str, ...]
                            ) -> tuple[Path, Path | None] | None:
    """``(scan, labels)`` of a TotalSegmentator subject folder (``ct`` with one of
    ``scan_suffixes``), or ``None`` if ``folder`` is not one. ``labels`` is a multi-label
    map (``seg.nii.gz`` or ``segmentations.nii.gz``, preferred when present), else the
    ``segmentations/`` folder of binary masks, else ``None``."""
    folder = Path(folder)
    scans = [folder / f"{TOTALSEG_CT}{suffix}" for suffix in scan_suffixes]
    scan = next((p for p in scans if p.is_file()), None)
    if scan is None:
        return None
    for stem in TOTALSEG_MAPS:
        for suffix in MASK_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return scan, folder / f"{stem}{suffix}"
    masks = folder / TOTALSEG_MASKS
    return scan, masks if masks.is_dir() else None


def _structure(path: Path) -> str | None:
    for suffix in MASK_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def combine_masks(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The TotalSegmentator v2 label map of a folder of binary masks
    ``<structure>.nii.gz``: ``(x, y, z)`` int16 label values and the masks' affine.

    A voxel inside no mask is 0. Where masks overlap, the larger label value wins
    (whatever the order of the files).

    Raises:
        InputError: for an empty folder, a file named after no TotalSegmentator v2
            structure, or masks of different shapes.
    """
    from sparsect.priors.totalsegmentator import STRUCTURES_V2

    folder = Path(folder)
    values = {name: int(value) for value, name in STRUCTURES_V2.items()}
    masks = sorted(p for p in folder.iterdir()
                   if not p.name.startswith(".") and _structure(p) is not None)
    if not masks:
        raise InputError(
            f"Mask folder '{folder}' holds no <structure>.nii.gz mask: add the TotalSegmentator "
            "masks or remove the folder."
        )
    unknown = [p for p in masks if _structure(p) not in values]
    if unknown:
        raise InputError(
            f"Mask '{unknown[0]}' names structure '{_structure(unknown[0])}', which is not a "
            "TotalSegmentator v2 'total' class: rename it to the class name (e.g. liver.nii.gz) "
            "or remove it."
        )
    labels: np.ndarray | None = None
    affine = np.eye(4)
    for path in sorted(masks, key=lambda p: values[_structure(p)]):
        try:
            image = nib.load(str(path))
            inside = np.asarray(image.dataobj) > 0
        except Exception as error:  # noqa: BLE001 - any reader failure is the file's fault
            raise InputError(
                f"Cannot read mask '{path}' ({type(error).__name__}): check the file or remove "
                "it."
            ) from None
        if labels is None:
            labels, affine = np.zeros(inside.shape, np.int16), image.affine
        if inside.shape != labels.shape:
            raise InputError(
                f"Mask '{path}' has shape {inside.shape} but the other masks of '{folder}' have "
                f"{labels.shape}: supply every mask on the scan's grid."
            )
        labels[inside] = values[_structure(path)]
    assert labels is not None
    return labels, affine
