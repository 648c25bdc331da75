"""Reading CT scans and label maps through TorchIO.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``), MetaImage
(``.mha``, ``.mhd``) and DICOM series (a folder of ``.dcm`` files). A label map
for ``<stem>.<ext>`` is looked up as ``<stem>_seg.<ext>`` (any supported
extension), and label maps themselves are never treated as scans.

Volumes are brought to canonical RAS+ orientation. An axial slice is then
indexed ``[x, y]``; :func:`axial_slices` turns it into the radiological display
convention used everywhere else in the package, ``[row, col]`` with anterior at
the top and the patient's right on the left of the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torchio as tio

from sparsect.errors import InputError

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIX = "_seg"
AIR_HU = -1000.0


def _strip_suffix(path: Path) -> tuple[str, str] | None:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def _is_dicom_series(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


@dataclass(frozen=True)
class ScanEntry:
    """One scan found in the data folder, with its optional label map."""

    subject: str
    scan: Path
    labels: Path | None


def find_scans(data_dir: Path) -> list[ScanEntry]:
    """Lists the scans in ``data_dir`` (sorted by subject name).

    Raises:
        InputError: if the folder is missing or holds no supported scan.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(
            f"Data folder '{data_dir}' does not exist: create it and put scans in it, "
            "or run `sparsect make-data` to write the built-in phantoms."
        )
    files: dict[str, Path] = {}
    label_files: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if _is_dicom_series(path):
            stem = path.name
        else:
            parsed = _strip_suffix(path)
            if parsed is None or not path.is_file():
                continue
            stem, _ = parsed
        is_label = stem.endswith(LABEL_SUFFIX)
        found = label_files if is_label else files
        if is_label:
            stem = stem[: -len(LABEL_SUFFIX)]
        if stem in found:
            raise InputError(
                f"'{found[stem]}' and '{path}' are two {'label maps' if is_label else 'scans'} "
                f"of subject '{stem}': keep one of them or rename the other."
            )
        found[stem] = path
    if not files:
        raise InputError(
            f"Data folder '{data_dir}' holds no CT scan (NIfTI, NRRD, MHA or DICOM series): "
            "add scans, or run `sparsect make-data` to write the built-in phantoms."
        )
    return [ScanEntry(stem, files[stem], label_files.get(stem)) for stem in sorted(files)]


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


def _dicom_headers(path: Path) -> list[tuple[Path, object]]:
    import pydicom

    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix.lower() == ".dcm" and not p.name.startswith("."))
    headers = []
    for file in files:
        try:
            headers.append((file, pydicom.dcmread(file, stop_before_pixels=True)))
        except Exception as error:  # noqa: BLE001 - any parse failure is the file's fault
            raise InputError(
                f"Cannot read DICOM file '{file}' ({type(error).__name__}): replace it with a "
                "complete file or remove it from the series."
            ) from None
    return headers


def check_dicom_series(path: Path) -> None:
    """Checks a DICOM file or series folder before it is read as one CT volume.

    ITK reads whatever it is given: an MR series as if its values were HU, stored
    values without rescale tags as HU, and a series with a missing slice as a
    volume whose z spacing is silently wrong. Each of those is refused here.

    Raises:
        InputError: for another modality, missing rescale tags, several series in
            one folder, or duplicated, missing or unevenly spaced slices.
    """
    headers = _dicom_headers(Path(path))
    modalities = sorted({str(ds.get("Modality", "") or "none") for _, ds in headers})
    if modalities != ["CT"]:
        raise InputError(
            f"DICOM series '{path}' has modality {'/'.join(modalities)}, but sparsect simulates "
            "X-ray acquisitions from CT values in HU: give it a CT series."
        )
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise InputError(
            f"DICOM folder '{path}' mixes {len(series)} series: put each series in its own "
            "folder."
        )
    unscaled = [f.name for f, ds in headers
                if "RescaleSlope" not in ds or "RescaleIntercept" not in ds]
    if unscaled:
        raise InputError(
            f"DICOM series '{path}' has no RescaleSlope/RescaleIntercept tags (e.g. in "
            f"'{unscaled[0]}'), so its stored values cannot be converted to HU: add the tags "
            "or convert the series to NIfTI in HU."
        )
    if len(headers) < 2:
        return
    try:
        orientation = np.asarray([float(v) for v in headers[0][1].ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.asarray([np.dot(normal, [float(v) for v in ds.ImagePositionPatient])
                                for _, ds in headers])
    except (AttributeError, ValueError, TypeError):
        raise InputError(
            f"DICOM series '{path}' lacks ImagePositionPatient/ImageOrientationPatient, so its "
            "slices cannot be ordered: export the series with its geometry tags."
        ) from None
    order = np.argsort(positions, kind="stable")
    names = [headers[i][0].name for i in order]
    gaps = np.diff(positions[order])
    tolerance = 1e-3  # mm
    if (gaps < tolerance).any():
        i = int(np.argmax(gaps < tolerance))
        raise InputError(
            f"DICOM series '{path}' has duplicated slices ('{names[i]}' and '{names[i + 1]}' "
            f"lie at the same position {positions[order][i]:.2f} mm): remove the duplicates."
        )
    spacing = float(np.median(gaps))
    if (np.abs(gaps - spacing) > 0.1 * spacing + tolerance).any():
        i = int(np.argmax(np.abs(gaps - spacing)))
        what = "is missing slices" if gaps[i] > 1.5 * spacing else "is unevenly spaced"
        raise InputError(
            f"DICOM series '{path}' {what} (a {gaps[i]:.2f} mm step between '{names[i]}' and "
            f"'{names[i + 1]}' where the series spacing is {spacing:.2f} mm): export the complete, "
            "evenly spaced series."
        )


def load_subject(entry: ScanEntry) -> tio.Subject:
    """Loads a scan (and its label map) as a canonical-orientation TorchIO subject.

    Raises:
        InputError: if a file cannot be read or is not a 3D volume.
    """
    images: dict[str, tio.Image] = {}
    if entry.scan.is_dir() or entry.scan.suffix.lower() == ".dcm":
        check_dicom_series(entry.scan)
    try:
        images["ct"] = _image(tio.ScalarImage, entry.scan)
        images["ct"].load()
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure is the file's fault
        raise InputError(
            f"Cannot read scan '{entry.scan}' ({type(error).__name__}): "
            "check that the file is complete and in a supported format."
        ) from None
    if entry.labels is not None:
        try:
            images["labels"] = _image(tio.LabelMap, entry.labels)
            images["labels"].load()
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001
            raise InputError(
                f"Cannot read label map '{entry.labels}' ({type(error).__name__}): "
                "check the file or remove it."
            ) from None
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


def standardise(subject: tio.Subject, image_size: int, pixel_size_mm: float,
                hu_clip: tuple[float, float]) -> tio.Subject:
    """Resamples in-plane to ``pixel_size_mm`` (z spacing kept), crops/pads to
    ``image_size`` in-plane and clips HU. Label maps are resampled nearest-neighbour."""
    z_spacing = float(subject["ct"].spacing[2])
    target = (image_size, image_size, subject["ct"].spatial_shape[2])
    transform = tio.Compose(
        [
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
