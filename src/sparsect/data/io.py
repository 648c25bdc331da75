"""Reading CT scans and label maps through TorchIO.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``), MetaImage
(``.mha``, ``.mhd``), DICOM series (see :mod:`sparsect.data.dicom`: recognised by
content, in nested folders, several series per folder) and the layouts of
:mod:`sparsect.data.datasets` (LoDoPaB-CT ground-truth HDF5 files, TotalSegmentator
subject folders). A label map for ``<stem>.<ext>`` is looked up as
``<stem>_seg.<ext>`` (any supported extension), and label maps themselves are never
treated as scans.

Volumes are brought to canonical RAS+ orientation. An axial slice is then
indexed ``[x, y]``; :func:`axial_slices` turns it into the radiological display
convention used everywhere else in the package, ``[row, col]`` with anterior at
the top and the patient's right on the left of the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from sparsect.data import datasets, dicom
from sparsect.errors import InputError, reading

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIX = "_seg"
AIR_HU = -1000.0


def _strip_suffix(path: Path) -> tuple[str, str] | None:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def scan_name(path: Path) -> str:
    """A scan's name: its file name without the scan suffix (a folder's own name), as
    :func:`find_scans` names a subject (the name keys the scan's simulated noise).

    >>> scan_name(Path("realct/abdomen_ct.nii.gz")), scan_name(Path("realct/abdomen_dicom"))
    ('abdomen_ct', 'abdomen_dicom')
    """
    stripped = _strip_suffix(Path(path))
    return Path(path).name if stripped is None else stripped[0]


def is_dicom_input(path: Path) -> bool:
    """Whether ``path`` is a DICOM file, or a folder holding DICOM files at any depth."""
    path = Path(path)
    return dicom.holds_dicom(path) if path.is_dir() else dicom.is_dicom_file(path)


@dataclass(frozen=True)
class ScanEntry:
    """One scan found in the data folder, with its optional label map.

    ``scan`` is a file, or a folder of DICOM files; ``series`` picks one series of such
    a folder (its UID, series number or key, see :func:`sparsect.data.dicom.select_series`)
    when it holds several. ``labels`` is a label map, or a folder of TotalSegmentator
    binary masks combined on reading.
    """

    subject: str
    scan: Path
    labels: Path | None
    series: str | None = None
    patient: str | None = None
    """Scans of one patient share it and stay in one split (None: the subject alone)."""


def _dicom_entries(folder: Path) -> list[ScanEntry]:
    """The scans of a folder of DICOM files (at any depth): one named after the folder
    when it holds one series, else ``<folder>_<series name>`` per series."""
    series = dicom.image_series(folder)
    if len(series) <= 1:
        return [ScanEntry(folder.name, folder, None, patient=_patient(series[0], folder))
                ] if series else []
    return [ScanEntry(f"{folder.name}_{name}", folder, None, series=s.key,
                      patient=_patient(s, folder))
            for s, name in zip(series, dicom.series_names(series), strict=True)]


def _patient(series: dicom.Series, folder: Path) -> str:
    """The series' PatientID, else its top folder: series of one patient (a full- and a
    quarter-dose scan, two phases) must not end up in two splits."""
    patient_id = str(series.headers[0].get("PatientID", "") or "").strip()
    return f"patient:{patient_id}" if patient_id else f"folder:{folder.name}"


def _lodopab_entry(path: Path) -> ScanEntry:
    """A LoDoPaB file; its part (train, validation, test) is its patient group: the
    parts are patient-disjoint, the files of one part are not."""
    part = datasets.LODOPAB_NAME.fullmatch(path.name).group(1)
    return ScanEntry(path.name.removesuffix(".hdf5"), path, None, patient=f"lodopab:{part}")


def _folder_entries(folder: Path) -> list[tuple[ScanEntry, bool]]:
    """The scans of a sub-folder of the data folder, each with whether it is a label map:
    a TotalSegmentator subject, LoDoPaB files, or DICOM series (at any depth)."""
    layout = datasets.totalsegmentator_layout(folder, SCAN_SUFFIXES)
    if layout is not None:
        return [(ScanEntry(folder.name, layout[0], layout[1]), False)]
    lodopab = sorted(p for p in folder.iterdir() if datasets.is_lodopab_file(p))
    if lodopab:
        return [(_lodopab_entry(p), False) for p in lodopab]
    return [(entry, False) for entry in _dicom_entries(folder)]


def find_scans(data_dir: Path) -> list[ScanEntry]:
    """Lists the scans in ``data_dir`` (sorted by subject name).

    Each entry of ``data_dir`` gives scans:

    - ``<stem>.<ext>`` (NIfTI, NRRD, MHA) is subject ``<stem>``, with the label map
      ``<stem>_seg.<ext>`` if there is one;
    - ``ground_truth_<part>_<nnn>.hdf5`` (LoDoPaB-CT) is subject ``ground_truth_<part>_<nnn>``;
    - a TotalSegmentator subject folder ``<subject>/ct.nii.gz`` is subject ``<subject>``,
      labelled by ``<subject>/seg.nii.gz`` or ``segmentations.nii.gz`` if present, else by
      its ``segmentations/<structure>.nii.gz`` masks;
    - a folder of LoDoPaB files gives one subject per file;
    - a folder of DICOM files, at any depth (patient/study/series), is subject
      ``<folder>`` when it holds one series, else ``<folder>_<series>`` per series, the
      series named by its SeriesNumber (or the end of its UID when numbers are missing or
      shared). Localizers, and series of another modality beside CT series, are skipped
      with a note.

    Raises:
        InputError: if the folder is missing or holds no supported scan, or two scans
            claim one subject name.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(
            f"Data folder '{data_dir}' does not exist: create it and put scans in it, "
            "or run `sparsect make-data` to write the built-in phantoms."
        )
    files, label_files = _by_subject(data_dir)
    if not files:
        raise InputError(
            f"Data folder '{data_dir}' holds no CT scan (NIfTI, NRRD, MHA or DICOM series): "
            "add scans, or run `sparsect make-data` to write the built-in phantoms."
        )
    entries = []
    for stem in sorted(files):
        entry = files[stem]
        if stem in label_files:
            if entry.labels is not None:
                raise InputError(
                    f"'{entry.labels}' and '{label_files[stem]}' are two label maps of subject "
                    f"'{stem}': keep one of them or rename the other."
                )
            entry = ScanEntry(stem, entry.scan, label_files[stem], entry.series, entry.patient)
        entries.append(entry)
    return entries


def _top_level_entries(data_dir: Path) -> list[tuple[ScanEntry, bool]]:
    """Every scan (and label map: True) of the data folder's entries, in name order."""
    found: list[tuple[ScanEntry, bool]] = []
    for path in sorted(data_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            found += _folder_entries(path)
        elif datasets.is_lodopab_file(path):
            found.append((_lodopab_entry(path), False))
        elif (parsed := _strip_suffix(path)) is not None and path.is_file():
            stem = parsed[0]
            is_label = stem.endswith(LABEL_SUFFIX)
            found.append((ScanEntry(stem[: -len(LABEL_SUFFIX)] if is_label else stem, path,
                                    None), is_label))
    return found


def _by_subject(data_dir: Path) -> tuple[dict[str, ScanEntry], dict[str, Path]]:
    """Scans and label maps by subject name; two of either for one subject are refused."""
    files: dict[str, ScanEntry] = {}
    label_files: dict[str, Path] = {}
    for entry, is_label in _top_level_entries(data_dir):
        stem = entry.subject
        taken = label_files.get(stem) if is_label else files.get(stem)
        if taken is not None:
            other = taken if is_label else taken.scan
            raise InputError(
                f"'{other}' and '{entry.scan}' are two {'label maps' if is_label else 'scans'} "
                f"of subject '{stem}': keep one of them or rename the other."
            )
        if is_label:
            label_files[stem] = entry.scan
        else:
            files[stem] = entry
    return files, label_files


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI through nibabel: unlike the ITK reader it keeps NaN voxels (so they can be
    refused) and fails on a truncated file instead of returning zeros."""
    image = nib.load(str(path))
    if len(image.shape) < 3:
        # TorchIO would silently turn (x, y) into a one-slice volume of unknown z spacing
        raise InputError(
            f"Scan '{path}' is a 2D image of shape {tuple(image.shape)} but a 3D volume is "
            "expected: save it with a third axis (x, y, 1) or stack the slices into one volume."
        )
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    return data, image.affine


def _image(cls: type[tio.Image], path: Path) -> tio.Image:
    if path.name.endswith((".nii", ".nii.gz")):
        return cls(path, reader=_read_nifti)
    return cls(path)


def _array_scan(entry: ScanEntry) -> tio.ScalarImage | None:
    """A DICOM or LoDoPaB scan, read here (these readers explain their own failures);
    ``None`` for a file that TorchIO reads."""
    if entry.scan.is_dir() or dicom.is_dicom_file(entry.scan):
        volume, affine = dicom.read_series(entry.scan, entry.series)
    elif datasets.is_lodopab_file(entry.scan):
        volume, affine = datasets.read_lodopab(entry.scan)
    else:
        return None
    return tio.ScalarImage(tensor=torch.from_numpy(volume[None]), affine=affine)


def _label_image(path: Path) -> tio.LabelMap:
    if path.is_dir():
        labels, affine = datasets.combine_masks(path)
        return tio.LabelMap(tensor=torch.from_numpy(labels[None]), affine=affine)
    return _image(tio.LabelMap, path)


def load_subject(entry: ScanEntry) -> tio.Subject:
    """Loads a scan (and its label map) as a canonical-orientation TorchIO subject.

    Raises:
        InputError: if a file cannot be read or is not a 3D volume.
    """
    images: dict[str, tio.Image] = {}
    scan = _array_scan(entry)
    with reading(f"scan '{entry.scan}'",
                 "check that the file is complete and in a supported format"):
        images["ct"] = scan if scan is not None else _image(tio.ScalarImage, entry.scan)
        images["ct"].load()
    if entry.labels is not None:
        with reading(f"label map '{entry.labels}'", "check the file or remove it"):
            images["labels"] = _label_image(entry.labels)
            images["labels"].load()
    subject = tio.Subject(**images)
    ct = subject["ct"]
    if ct.data.shape[0] != 1 or ct.data.ndim != 4:
        raise InputError(
            f"Scan '{entry.scan}' has shape {tuple(ct.data.shape)} but a single-channel 3D "
            "volume is expected: split multi-channel or 4D files into one volume per scan."
        )
    if not np.isfinite(ct.data.numpy()).all():
        raise InputError(
            f"Scan '{entry.scan}' contains NaN or infinite voxels: fix or remove the scan."
        )
    if "labels" in subject and subject["labels"].spatial_shape != ct.spatial_shape:
        raise InputError(
            f"Label map '{entry.labels}' has shape {subject['labels'].spatial_shape} but its scan "
            f"has {ct.spatial_shape}: supply a label map on the scan's grid."
        )
    return tio.ToCanonical()(subject)


def _antialias(data: torch.Tensor, spacing: tuple[float, float], pixel_size_mm: float
               ) -> torch.Tensor:
    """In-plane Gaussian pre-filter of a ``(C, x, y, z)`` image about to be downsampled to
    ``pixel_size_mm``, so that an output pixel is (close to) the average over its area:
    sampling a 0.98 mm scan at 3 mm points with linear interpolation alone keeps its
    full-resolution noise and aliases fine detail.

    The filter matches variances: an output pixel of ``f`` input pixels should average a
    box of width ``f`` (variance ``f^2 / 12`` in input pixels); each input pixel already
    averages a box of width 1 (``1 / 12``) and linear interpolation adds about ``1 / 6``,
    so the Gaussian adds the rest, ``sigma^2 = (f^2 - 3) / 12`` (none below ``f = sqrt 3``).
    The FWHM rule of Cardoso et al. (MICCAI 2015; TorchIO's ``antialias``), which treats
    every kernel as a Gaussian, blurs twice as much at ``f = 2``; on the real scans of
    ``realct/`` models trained on phantoms prepared that way did 0.2 to 0.3 dB worse
    (body PSNR of the 3 mm NIfTI scans, whose references no pre-filter touches). Axes not
    downsampled and z are left alone (this works on single slices, unlike TorchIO's 3D
    filter)."""
    factors = [pixel_size_mm / s for s in spacing]
    sigmas = [math.sqrt(max(0.0, (f * f - 3.0) / 12.0)) for f in factors]
    if not any(sigmas):
        return data
    smoothed = ndimage.gaussian_filter(data.numpy().astype(np.float32, copy=False),
                                       [0.0, *sigmas, 0.0], mode="nearest")
    return torch.from_numpy(smoothed)


def standardise(subject: tio.Subject, image_size: int, pixel_size_mm: float,
                hu_clip: tuple[float, float]) -> tio.Subject:
    """Resamples in-plane to ``pixel_size_mm`` (z spacing kept; anti-aliased by
    :func:`_antialias` when downsampling), crops/pads to
    ``image_size`` in-plane and clips HU. Label maps are resampled nearest-neighbour."""
    z_spacing = float(subject["ct"].spacing[2])
    spacing = tuple(float(v) for v in subject["ct"].spacing[:2])
    target = (image_size, image_size, subject["ct"].spatial_shape[2])
    transform = tio.Compose(
        [
            tio.Lambda(lambda data: _antialias(data, spacing, pixel_size_mm),
                       types_to_apply=[tio.INTENSITY]),
            tio.Resample((pixel_size_mm, pixel_size_mm, z_spacing)),
            # pad with air (zero would be water); label maps are reset to background below
            tio.CropOrPad(target, padding_mode=AIR_HU),
            tio.Clamp(out_min=hu_clip[0], out_max=hu_clip[1], include=["ct"]),
        ]
    )
    subject = transform(subject)
    if "labels" in subject:
        subject["labels"].set_data(subject["labels"].data.clamp(min=0))
    return subject


def axial_slices(volume: np.ndarray) -> np.ndarray:
    """Canonical RAS+ volume ``(x, y, z)`` -> display-convention slices ``(z, row, col)``.

    Rows run anterior to posterior and columns from the patient's right to
    left (radiological convention).
    """
    return np.ascontiguousarray(np.flip(np.transpose(volume, (2, 1, 0)), axis=(1, 2)))


def volume_from_slices(slices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`axial_slices`: ``(z, row, col)`` -> RAS+ ``(x, y, z)``."""
    return np.ascontiguousarray(np.transpose(np.flip(slices, axis=(1, 2)), (2, 1, 0)))
