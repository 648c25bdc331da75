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

A header that gives no usable voxel spacing or orientation is refused, naming the
field, rather than read with a guess: a NIfTI file without sform or qform (both codes
0), with a zero, negative or non-finite ``pixdim`` under its qform, or with a
non-finite, singular or sheared sform affine; a NRRD or MetaImage file that declares
no spacing; any volume whose affine is so; and the DICOM geometry
:func:`sparsect.data.dicom.check_series` refuses. An explicit voxel spacing
(``spacing``: x, y, z in mm, :func:`load_subject` or :func:`spacing_override`) is
taken instead of the header's: the header's orientation and origin are kept where
they are usable, else the array is taken as already canonical (RAS+ for a volume
file, the standard axial ``ImageOrientationPatient`` for DICOM).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
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
ORTHOGONALITY_TOLERANCE = 1e-3
"""Largest cosine between two voxel axes of an affine that is not sheared (0.06 degrees)."""
SPACING_FIX = ("fix the header, or give the voxel spacing explicitly with `sparsect "
               "reconstruct --spacing X Y Z` (mm)")
"""What to do about a header without usable spacing or orientation."""

Spacing = tuple[float, float, float]
_OVERRIDE: ContextVar[tuple[Path, Spacing] | None] = ContextVar("spacing_override",
                                                                default=None)


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


def check_spacing(spacing: Sequence[float]) -> Spacing:
    """An explicit voxel spacing as three positive sizes (x, y, z) in mm.

    Raises:
        InputError: for anything else.
    """
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"Voxel spacing {list(spacing)} is not three positive sizes in mm: "
                         "give x, y and z, e.g. --spacing 0.8 0.8 2.5.")
    return values  # type: ignore[return-value]


@contextmanager
def spacing_override(spacing: Sequence[float] | None, inputs: Path) -> Iterator[None]:
    """Within the block, :func:`load_subject` takes ``spacing`` (x, y, z in mm) as the voxel
    spacing of every scan at or under ``inputs`` (``sparsect reconstruct --spacing``);
    ``None`` changes nothing.

    Raises:
        InputError: if ``spacing`` is not three positive sizes.
    """
    if spacing is None:
        yield
        return
    token = _OVERRIDE.set((Path(inputs).resolve(), check_spacing(spacing)))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def active_spacing_override() -> tuple[Path, Spacing] | None:
    """The (folder, spacing) of the :func:`spacing_override` block this runs in, if any:
    what a process started inside the block needs to enter the same one."""
    return _OVERRIDE.get()


def _override_for(path: Path) -> Spacing | None:
    """The spacing :func:`spacing_override` gives the scan at ``path``, if any."""
    override = _OVERRIDE.get()
    if override is None:
        return None
    root, spacing = override
    path = Path(path).resolve()
    return spacing if path == root or root in path.parents else None


def _untrusted(what: str, path: Path, problem: str, fix: str = SPACING_FIX) -> InputError:
    return InputError(f"{what} '{path}' {problem}, so its voxel spacing and orientation "
                      f"cannot be trusted: {fix}.")


def _axes_problem(affine: np.ndarray, field: str) -> str | None:
    """Why the affine (at least its top 3 x 4) gives no usable voxel spacing and
    orientation, as a clause naming ``field``; None when it does: its entries must be
    finite and its voxel axes (columns) of non-zero length, independent and orthogonal."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    if not np.isfinite(np.asarray(affine, dtype=float)[:3, :4]).all():
        return f"has non-finite values in its {field}"
    norms = np.linalg.norm(matrix, axis=0)
    scale = float(np.prod(norms))
    if scale == 0.0 or abs(float(np.linalg.det(matrix))) <= 1e-6 * scale:
        return (f"has a singular {field} (a voxel axis of zero length, or two axes along one "
                "line)")
    cosines = np.abs((matrix / norms).T @ (matrix / norms) - np.eye(3))
    if cosines.max() > ORTHOGONALITY_TOLERANCE:
        angle = math.degrees(math.acos(min(1.0, float(cosines.max()))))
        return f"has a sheared {field} (two voxel axes meet at {angle:.2f} degrees, not 90)"
    return None


def _directions(affine: np.ndarray) -> np.ndarray | None:
    """The unit voxel axes of ``affine``, or None where they are no usable orientation."""
    if _axes_problem(affine, "affine") is not None:
        return None
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    return matrix / np.linalg.norm(matrix, axis=0)


def _with_spacing(directions: np.ndarray | None, origin: np.ndarray, spacing: Spacing
                  ) -> np.ndarray:
    """The affine of voxel size ``spacing`` along ``directions`` (the canonical RAS+ axes
    when None) from ``origin`` (0 where it is not finite)."""
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if directions is None else directions) * np.asarray(spacing)
    origin = np.asarray(origin, dtype=float)
    affine[:3, 3] = np.where(np.isfinite(origin), origin, 0.0)
    return affine


def respaced(affine: np.ndarray, spacing: Spacing) -> np.ndarray:
    """``affine`` with voxel size ``spacing`` (x, y, z in mm): its orientation and origin are
    kept where usable, else the array is taken as canonical RAS+ from the origin."""
    return _with_spacing(_directions(affine), np.asarray(affine, dtype=float)[:3, 3], spacing)


def _nifti_geometry(header: nib.Nifti1Header) -> tuple[str | None, np.ndarray | None,
                                                       np.ndarray]:
    """What a NIfTI header (as stored, before nibabel's fixes) says of its grid, as nibabel
    reads it (the sform where ``sform_code`` > 0, else the qform where ``qform_code`` > 0):
    why its spacing or orientation is unusable (a clause naming the field, None when
    usable), the unit voxel axes where its orientation is usable, and its origin."""
    if int(header["sform_code"]) > 0:
        sform = header.get_sform()
        return (_axes_problem(sform, "sform affine srow_x/srow_y/srow_z"),
                _directions(sform), sform[:3, 3])
    origin = np.array([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]], float)
    if int(header["qform_code"]) <= 0:
        return "has sform_code and qform_code 0 (no affine in its header)", None, origin
    quaternion = np.array([header["quatern_b"], header["quatern_c"], header["quatern_d"]],
                          dtype=float)
    directions = None
    if np.isfinite(quaternion).all() and float(quaternion @ quaternion) <= 1.0 + 1e-6:
        directions = nib.quaternions.quat2mat(header.get_qform_quaternion())
        if header["pixdim"][0] < 0:
            directions[:, 2] *= -1.0
    for axis, size in enumerate(header["pixdim"][1:4], start=1):
        if not (math.isfinite(float(size)) and size > 0):
            return f"has pixdim[{axis}] = {float(size):g} under its qform", directions, origin
    if directions is None:
        return ("has no rotation in its qform (quatern_b, quatern_c, quatern_d are not "
                "finite or exceed a unit quaternion)", None, origin)
    if not np.isfinite(origin).all():
        return "has non-finite values in its qform offset (qoffset_x/y/z)", directions, origin
    return None, directions, origin


def _read_nifti(path: Path, what: str = "Scan", fix: str = SPACING_FIX,
                spacing: Spacing | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI through nibabel: unlike the ITK reader it keeps NaN voxels (so they can be
    refused) and fails on a truncated file instead of returning zeros. A header without
    usable spacing or orientation is refused (``what`` and ``fix`` name the file and what
    to do) unless ``spacing`` is given."""
    with nib.imageglobals.LoggingOutputSuppressor(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the stored header is checked below
        image = nib.load(str(path))
    if len(image.shape) < 3:
        # TorchIO would silently turn (x, y) into a one-slice volume of unknown z spacing
        raise InputError(
            f"Scan '{path}' is a 2D image of shape {tuple(image.shape)} but a 3D volume is "
            "expected: save it with a third axis (x, y, 1) or stack the slices into one volume."
        )
    with nib.openers.ImageOpener(str(path)) as file:
        stored = type(image.header).from_fileobj(file, check=False)
    problem, directions, origin = _nifti_geometry(stored)
    if spacing is not None:
        affine = _with_spacing(directions, origin, spacing)
    elif problem is not None:
        raise _untrusted(what, path, problem, fix)
    else:
        affine = image.affine
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    return data, affine


_DECLARED_SPACING = {".nrrd": ("space directions", "spacings"),
                     ".mha": ("ElementSpacing", "ElementSize"),
                     ".mhd": ("ElementSpacing", "ElementSize")}
"""Header fields that give the spacing of a NRRD or MetaImage file (ITK takes 1 mm
without them)."""

_AFFINE_FIELDS = {".nrrd": "space directions", ".mha": "ElementSpacing/TransformMatrix",
                  ".mhd": "ElementSpacing/TransformMatrix"}
"""The header fields behind the affine of a file ITK reads."""


def _undeclared_spacing(path: Path) -> str | None:
    """A clause naming the spacing field a NRRD or MetaImage header lacks; None for a
    header that has one, or another format."""
    fields = _DECLARED_SPACING.get(path.suffix.lower())
    if fields is None or not path.is_file():
        return None
    with path.open("rb") as file:
        head = file.read(1 << 16).replace(b"\r\n", b"\n")
    if path.suffix.lower() == ".nrrd":
        lines, separator = head.split(b"\n\n")[0].split(b"\n")[1:], b":"
    else:
        lines, separator = head.split(b"ElementDataFile")[0].split(b"\n"), b"="
    keys = {line.split(separator)[0].strip().decode("latin-1").lower() for line in lines}
    if any(field.lower() in keys for field in fields):
        return None
    return f"declares no {fields[0]} in its header (ITK would take 1 mm)"


def _geometry(image: tio.Image, path: Path, what: str, fix: str = SPACING_FIX,
              spacing: Spacing | None = None) -> tio.Image:
    """A loaded image with its affine respaced to ``spacing``, or as read once its header
    and affine give a usable spacing and orientation."""
    if spacing is not None:
        image.affine = respaced(image.affine, spacing)
        return image
    problem = _undeclared_spacing(path) or _axes_problem(
        image.affine, _AFFINE_FIELDS.get(path.suffix.lower(), "affine"))
    if problem is not None:
        raise _untrusted(what, path, problem, fix)
    return image


def _image(cls: type[tio.Image], path: Path, what: str, fix: str = SPACING_FIX,
           spacing: Spacing | None = None) -> tio.Image:
    if path.name.endswith((".nii", ".nii.gz")):
        return cls(path, reader=partial(_read_nifti, what=what, fix=fix, spacing=spacing))
    return cls(path)


def _array_scan(entry: ScanEntry, spacing: Spacing | None = None) -> tio.ScalarImage | None:
    """A DICOM or LoDoPaB scan, read here (these readers explain their own failures);
    ``None`` for a file that TorchIO reads."""
    if entry.scan.is_dir() or dicom.is_dicom_file(entry.scan):
        volume, affine = dicom.read_series(entry.scan, entry.series, spacing)
    elif datasets.is_lodopab_file(entry.scan):
        volume, affine = datasets.read_lodopab(entry.scan)
    else:
        return None
    return tio.ScalarImage(tensor=torch.from_numpy(volume[None]), affine=affine)


LABEL_FIX = "save it with the header of its scan"
"""What to do about a label map whose header gives no usable spacing or orientation."""


def _label_image(path: Path, spacing: Spacing | None) -> tio.LabelMap:
    if path.is_dir():
        labels, affine = datasets.combine_masks(path)
        return tio.LabelMap(tensor=torch.from_numpy(labels[None]), affine=affine)
    return _image(tio.LabelMap, path, "Label map", LABEL_FIX, spacing)


def load_subject(entry: ScanEntry, spacing: Sequence[float] | None = None) -> tio.Subject:
    """Loads a scan (and its label map) as a canonical-orientation TorchIO subject.

    ``spacing`` (x, y, z in mm; by default what :func:`spacing_override` gives the scan)
    replaces the voxel spacing of the scan's header, whose orientation and origin are kept
    where usable (else the array is taken as canonical, see the module's notes); a label
    map then takes the scan's affine.

    Raises:
        InputError: if a file cannot be read or is not a 3D volume, or, without
            ``spacing``, its header gives no usable voxel spacing or orientation.
    """
    spacing = _override_for(entry.scan) if spacing is None else check_spacing(spacing)
    images: dict[str, tio.Image] = {}
    scan = _array_scan(entry, spacing)
    with reading(f"scan '{entry.scan}'",
                 "check that the file is complete and in a supported format"):
        images["ct"] = scan if scan is not None else _image(tio.ScalarImage, entry.scan,
                                                            "Scan", spacing=spacing)
        images["ct"].load()
    images["ct"] = _geometry(images["ct"], entry.scan, "Scan", spacing=spacing)
    if entry.labels is not None:
        with reading(f"label map '{entry.labels}'", "check the file or remove it"):
            images["labels"] = _label_image(entry.labels, spacing)
            images["labels"].load()
        if spacing is None:
            _geometry(images["labels"], entry.labels, "Label map", LABEL_FIX)
        else:
            images["labels"].affine = images["ct"].affine
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
