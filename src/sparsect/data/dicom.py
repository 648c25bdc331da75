"""DICOM series as archives ship them: found by content, grouped by series, read with pydicom.

A file is DICOM by its content, whatever its name: the 128-byte preamble and the
``DICM`` magic, or a data set written without preamble (it starts with a group 0002
or 0008 tag) that parses as an image. Suffixes do not matter (``.dcm``, ``.IMA`` as in
the AAPM/Mayo low-dose data, or none, as PACS exports name files ``CT.1.2.3...``),
except that a file named ``.dcm``/``.dicom``/``.dic``/``.ima`` that does not parse is an
error rather than skipped.

Folders are walked at any depth (patient/study/series, as LIDC-IDRI and the Mayo
data ship) and image files are grouped by ``SeriesInstanceUID`` (files without one, as
some anonymisers leave them, are grouped by folder). Skipped without a word: DICOMDIR
files and DICOM objects that are not images (structured reports, RT structures,
presentation states). Skipped with a one-line note on stderr, once per series:
localizer (scout) images, and series of another modality than CT when CT series are
there too (the X-ray images of LIDC-IDRI).

A series is read with pydicom, which decodes the compressed transfer syntaxes through
its plugins (JPEG, JPEG-LS and JPEG 2000 through pylibjpeg, RLE natively). The affine is
the one ITK builds for the same series, so volumes read here and through ITK overlay:
slices sorted along the slice normal (the cross product of the row and column
directions of ``ImageOrientationPatient``), the first of them at the origin, the z step
the mean distance between neighbouring slices, from DICOM's LPS to RAS+ coordinates.
Geometry sparsect does not reconstruct correctly (gantry tilt, sagittal or coronal
slices, multi-frame images) is refused with the fix, and so is geometry the headers do
not give: a missing, zero, negative or non-finite ``PixelSpacing``, an
``ImageOrientationPatient`` whose directions are not finite unit vectors at right
angles, missing or non-finite ``ImagePositionPatient``, and slice positions (or, for a
single slice, ``SliceThickness``) that give no slice spacing. An explicit voxel spacing
(x, y, z in mm) is taken instead of the headers' spacing; an unusable orientation is
then taken as the standard axial one (``1\\0\\0\\0\\1\\0``, slices as displayed) and
unusable positions as slices in ``InstanceNumber`` order (else file order).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsect.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
"""Suffixes that declare a file DICOM: such a file that does not parse is refused."""

LOCALIZER = "LOCALIZER"
"""The ``ImageType`` value of localizer (scout, topogram) images."""

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
TOLERANCE_MM = 1e-3
"""Positions closer than this are the same position."""
DIRECTION_TOLERANCE = 1e-3
"""Largest departure of an ``ImageOrientationPatient`` direction from unit length, and of
the cosine between its row and column directions from zero (0.06 degrees)."""
STANDARD_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
"""``ImageOrientationPatient`` of axial slices as displayed (rows to the patient's left,
columns to posterior)."""
SPACING_FIX = ("export the series with its geometry tags, or give the voxel spacing "
               "explicitly with `sparsect reconstruct --spacing X Y Z` (mm)")
"""What to do about headers that give no usable spacing or orientation."""

_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
"""First bytes of a little-endian data set written without preamble (group 0002 or 0008)."""

_NOT_DICOM = (".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".zraw", ".img",
              ".hdr", ".npy", ".npz", ".hdf5", ".h5", ".json", ".xml", ".txt", ".csv", ".md",
              ".zip", ".png", ".jpg", ".jpeg", ".pdf")
"""Suffixes of files never parsed as DICOM without preamble (they are still DICOM with
the ``DICM`` magic)."""

_AXES = ("sagittal", "coronal", "axial")
"""Plane of a slice whose normal is mostly along LPS x, y or z."""

_DECODER_PACKAGES = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), "pylibjpeg-libjpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                     "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                     "1.2.840.10008.1.2.4.203"), "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}
"""Transfer syntax -> the pylibjpeg plugin through which pydicom decodes it."""

_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
"""Names of transfer syntaxes this pydicom does not know."""

_NOTED: set[str] = set()


def note(message: str) -> None:
    """Prints ``note: <message>`` on stderr, once per message and process."""
    if message in _NOTED:
        return
    _NOTED.add(message)
    from tqdm import tqdm

    tqdm.write(f"note: {message}", file=sys.stderr)


def _cannot_read(path: Path, why: BaseException | str) -> InputError:
    reason = why if isinstance(why, str) else type(why).__name__
    return InputError(
        f"Cannot read DICOM file '{path}' ({reason}): replace it with a complete file or "
        "remove it from the series."
    )


def _dcmread(path: Path, force: bool, pixels: bool) -> Any:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd values in tags the reader does not use
        return pydicom.dcmread(path, stop_before_pixels=not pixels, force=force)


def _sniff(path: Path) -> tuple[bool, bool]:
    """(has the preamble and ``DICM`` magic, starts like a data set without preamble)."""
    try:
        with path.open("rb") as file:
            head = file.read(132)
    except OSError:
        return False, False
    magic = len(head) == 132 and head[128:] == b"DICM"
    raw = (not magic and len(head) >= 8 and head[:2] in _RAW_STARTS
           and path.suffix.lower() not in _NOT_DICOM)
    return magic, raw


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a file that is, or says it is, DICOM (content or suffix)."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() in DICOM_SUFFIXES or any(_sniff(path)))


def read_header(path: Path) -> Any | None:
    """The header (no pixels) of a DICOM image file; ``None`` for any other file.

    Raises:
        InputError: for a file that is DICOM by its magic or its suffix but does not parse.
    """
    path = Path(path)
    declared = path.suffix.lower() in DICOM_SUFFIXES
    magic, raw = _sniff(path)
    if not (magic or raw or declared):
        return None
    try:
        header = _dcmread(path, force=raw, pixels=False)
    except Exception as error:  # noqa: BLE001 - any parse failure is the file's fault
        if magic or declared:
            raise _cannot_read(path, error) from None
        return None
    meta = getattr(header, "file_meta", None)
    sop_class = str((meta.get("MediaStorageSOPClassUID", "") if meta is not None else "")
                    or header.get("SOPClassUID", "") or "")
    if path.name.upper() == "DICOMDIR" or sop_class == DICOMDIR_SOP_CLASS:
        return None
    if "Rows" not in header or "Columns" not in header:
        if _is_image_class(sop_class):
            raise _cannot_read(path, "its image header is missing or cut short")
        return None  # a report, a structure set, a presentation state: not an image
    return header


def _is_image_class(sop_class: str) -> bool:
    from pydicom.uid import UID

    return bool(sop_class) and "Image Storage" in UID(sop_class).name


def is_localizer(header: Any) -> bool:
    return LOCALIZER in [str(v).upper() for v in (header.get("ImageType", None) or [])]


@dataclass
class Series:
    """One DICOM series: its image files (sorted by path) and their headers."""

    key: str
    """``SeriesInstanceUID``, or ``folder:<relative folder>[#<SeriesNumber>]`` for files
    without one."""
    folder: Path
    """The folder holding all its files."""
    files: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return str(self.headers[0].get("SeriesInstanceUID", "") or "")

    @property
    def number(self) -> str | None:
        value = self.headers[0].get("SeriesNumber", None)
        return None if value in (None, "") else str(value)

    @property
    def description(self) -> str:
        return str(self.headers[0].get("SeriesDescription", "") or "").strip()

    @property
    def modality(self) -> str:
        return "/".join(sorted({str(ds.get("Modality", "") or "none") for ds in self.headers}))

    def describe(self) -> str:
        """``#3 'CT Body 3.0' (20 slices, UID 1.2.3)`` for listings."""
        number = f"#{self.number}" if self.number else "unnumbered"
        description = f" '{self.description}'" if self.description else ""
        return (f"{number}{description} ({len(self.files)} slice"
                f"{'' if len(self.files) == 1 else 's'}, UID {self.uid or 'none'})")


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return files


def find_series(root: Path) -> list[Series]:
    """Every DICOM image series under ``root`` (a file or a folder walked at any depth),
    localizers included, sorted by folder, series number and UID."""
    root = Path(root)
    groups: dict[str, Series] = {}
    for path in _walk(root):
        header = read_header(path)
        if header is None:
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        number = header.get("SeriesNumber", None)
        key = uid or (f"folder:{_relative(path.parent, root)}"
                      + ("" if number in (None, "") else f"#{number}"))
        series = groups.setdefault(key, Series(key, path.parent))
        series.files.append(path)
        series.headers.append(header)
        if path.parent != series.folder:
            series.folder = Path(os.path.commonpath([series.folder, path.parent]))
    return sorted(groups.values(), key=lambda s: (str(s.folder), _number_key(s.number), s.uid))


def _relative(folder: Path, root: Path) -> str:
    if root.is_file():
        return folder.name
    relative = folder.relative_to(root).as_posix()
    return root.name if relative == "." else relative


def _number_key(number: str | None) -> tuple[int, str]:
    try:
        return int(float(number)), ""  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return sys.maxsize, number or ""


def image_series(root: Path) -> list[Series]:
    """The series under ``root`` that can be CT scans.

    Localizer images are dropped; so are series of another modality when CT series
    are there too (each drop noted once on stderr). A folder without any CT series
    keeps its series, so reading one of them refuses its modality.
    """
    found = []
    for series in find_series(root):
        kept = [(f, ds) for f, ds in zip(series.files, series.headers, strict=True)
                if not is_localizer(ds)]
        dropped = len(series.files) - len(kept)
        if dropped and not kept:
            note(f"skipped the localizer series {series.describe()} in '{series.folder}'.")
            continue
        series.files, series.headers = [f for f, _ in kept], [ds for _, ds in kept]
        if dropped:
            note(f"skipped {dropped} localizer image{'s' if dropped > 1 else ''} of series "
                 f"{series.describe()} in '{series.folder}'.")
        found.append(series)
    ct = [s for s in found if s.modality == "CT"]
    if ct and len(ct) < len(found):
        for series in found:
            if series.modality != "CT":
                note(f"skipped the {series.modality} series {series.describe()} in "
                     f"'{series.folder}': it is not CT.")
        found = ct
    return found


def holds_dicom(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM file at any depth (by suffix or by content)."""
    return any(is_dicom_file(path) for path in _walk(Path(folder)))


def series_names(series: list[Series]) -> list[str]:
    """A short, unique and stable name per series of one folder: its ``SeriesNumber`` when
    no other series has the same, else the end of its UID, else its folder."""
    numbers = [s.number for s in series]
    names = []
    for s in series:
        if s.number and numbers.count(s.number) == 1:
            names.append(s.number)
            continue
        digits = s.uid.replace(".", "")
        folder = s.key.removeprefix("folder:").replace("/", "-").replace("#", "-")
        names.append(digits[-8:] if digits else folder)
    for index, name in enumerate(names):
        if names.count(name) > 1:
            digits = series[index].uid.replace(".", "")
            names[index] = f"{name}-{digits or index}"
    return names


def _listing(series: list[Series]) -> str:
    return "; ".join(s.describe() for s in series)


def select_series(root: Path, choice: str | None = None) -> tuple[Series, str]:
    """The series of ``root`` to read (``choice``: a UID, series number or series key;
    needed when ``root`` holds several) and how messages name it (``'<folder>'``).

    Raises:
        InputError: if ``root`` holds no image series, several without a choice, or
            none matching the choice.
    """
    root = Path(root)
    candidates = image_series(root)
    if not candidates:
        raise InputError(
            f"DICOM input '{root}' holds no CT image (only localizers or objects that are not "
            "images): give a folder with an axial CT series."
        )
    if choice is None:
        if len(candidates) > 1:
            raise InputError(
                f"DICOM folder '{root}' holds {len(candidates)} series ({_listing(candidates)}): "
                "choose one with --series UID-or-number, or give the folder of one series."
            )
        matches = candidates
    else:
        matches = [s for s in candidates if _matches(s, str(choice))]
    if not matches:
        raise InputError(
            f"DICOM folder '{root}' holds no series '{choice}' (it holds "
            f"{_listing(candidates)}): give one of these UIDs or numbers to --series."
        )
    if len(matches) > 1:
        raise InputError(
            f"Series '{choice}' matches {len(matches)} series in '{root}' "
            f"({_listing(matches)}): give its UID to --series instead."
        )
    series = matches[0]
    if root.is_file():
        return series, f"'{root}'"
    shared = sum(s.folder == series.folder for s in candidates) > 1
    name = series.number or series.uid or series.key
    return series, f"'{series.folder}'" + (f" (series {name})" if shared else "")


def _matches(series: Series, choice: str) -> bool:
    if choice in (series.key, series.uid) and choice:
        return True
    if series.number is not None and _number_key(series.number) == _number_key(choice) \
            and _number_key(choice)[1] == "":
        return True
    return not series.uid and choice == series.key.removeprefix("folder:")


def _floats(header: Any, tag: str, count: int) -> np.ndarray | None:
    try:
        values = np.asarray([float(v) for v in header.get(tag, None)], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (count,) else None


@dataclass(frozen=True)
class _Geometry:
    order: np.ndarray
    affine: np.ndarray


def check_series(series: Series, where: str,
                 spacing: tuple[float, float, float] | None = None) -> _Geometry:
    """Checks one series before it is read as a CT volume; returns its slice order and
    RAS+ affine.

    ITK reads whatever it is given: an MR series as if its values were HU, stored values
    without rescale tags as HU, and a series with a missing slice as a volume whose z
    spacing is silently wrong. Each of those is refused here, and so is geometry a
    stack of axial slices cannot represent, or that the headers do not give. ``spacing``
    (x, y, z in mm) replaces the headers' pixel and slice spacing; where they give no
    usable orientation or slice positions, the standard axial orientation and the
    ``InstanceNumber`` order are taken instead of refusing.

    Raises:
        InputError: for another modality, missing rescale tags, a multi-frame image,
            slices of different sizes or orientations, a sagittal or coronal series,
            duplicated, missing or unevenly spaced slices, or a gantry tilt; and, without
            ``spacing``, for a missing or unusable PixelSpacing, ImageOrientationPatient
            or ImagePositionPatient, or no slice spacing.
    """
    names = [f.name for f in series.files]
    _check_values(series, where, names)
    pixel = _pixel_spacing(series.headers, where, spacing)  # (between rows, between columns)
    row, column, normal, points = _axial_plane(series.headers, where, names,
                                               spacing is not None)
    along = None if points is None else points @ normal
    if along is not None and (len(along) == 1 or np.ptp(along) >= TOLERANCE_MM):
        order, step = _slice_order(along, names, series.headers, where, spacing)
        if len(order) > 1:
            step = _untilted_step(points[order[-1]] - points[order[0]], normal, pixel, where)
            step /= len(order) - 1
        origin = points[order[0]]
    elif spacing is None:
        raise InputError(
            f"DICOM series {where} has all its {len(names)} slices at one "
            "ImagePositionPatient, so its slice spacing (SliceThickness/ImagePositionPatient) "
            f"is unknown: {SPACING_FIX}."
        )
    else:
        order, step, origin = _listed_order(series.headers), 0.0, np.zeros(3)
        if points is not None:
            origin = points[order[0]]
    if spacing is not None:
        step = spacing[2]
    lps = np.eye(4)
    lps[:3, 0] = row * pixel[1]
    lps[:3, 1] = column * pixel[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return _Geometry(order, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def _listed_order(headers: list[Any]) -> np.ndarray:
    """Slices by ``InstanceNumber`` where every slice has a distinct one, else in file order."""
    try:
        numbers = [float(ds.get("InstanceNumber", None)) for ds in headers]
    except (TypeError, ValueError):
        return np.arange(len(headers))
    if len(set(numbers)) < len(numbers) or not np.isfinite(numbers).all():
        return np.arange(len(headers))
    return np.argsort(numbers, kind="stable")


def _check_values(series: Series, where: str, names: list[str]) -> None:
    """CT values that convert to HU, one frame per file."""
    headers = series.headers
    if series.modality != "CT":
        raise InputError(
            f"DICOM series {where} has modality {series.modality}, but sparsect simulates "
            "X-ray acquisitions from CT values in HU: give it a CT series."
        )
    unscaled = [n for n, ds in zip(names, headers, strict=True)
                if "RescaleSlope" not in ds or "RescaleIntercept" not in ds]
    if unscaled:
        raise InputError(
            f"DICOM series {where} has no RescaleSlope/RescaleIntercept tags (e.g. in "
            f"'{unscaled[0]}'), so its stored values cannot be converted to HU: add the tags "
            "or convert the series to NIfTI in HU."
        )
    frames = [n for n, ds in zip(names, headers, strict=True)
              if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if frames:
        raise InputError(
            f"DICOM series {where} holds multi-frame images (e.g. '{frames[0]}'), which "
            "sparsect does not read: convert the series to NIfTI (e.g. with dcm2niix) and "
            "give that."
        )


def _pixel_spacing(headers: list[Any], where: str,
                   spacing: tuple[float, float, float] | None = None) -> np.ndarray:
    """The one slice size and pixel spacing of the series (rows, columns), in mm; the
    spacing is ``spacing``'s y and x where given."""
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    if spacing is not None:
        if len(sizes) > 1:
            raise InputError(
                f"DICOM series {where} mixes slice sizes ({sorted(sizes)}): export one "
                "uniform series."
            )
        return np.array([spacing[1], spacing[0]], dtype=float)
    pixel_spacings = [_floats(ds, "PixelSpacing", 2) for ds in headers]
    if any(s is None for s in pixel_spacings):
        raise InputError(
            f"DICOM series {where} has no PixelSpacing tag, so its pixel size is unknown: "
            f"{SPACING_FIX}."
        )
    unusable = [s for s in pixel_spacings if not (np.isfinite(s).all() and (s > 0).all())]
    if unusable:
        raise InputError(
            f"DICOM series {where} has PixelSpacing {_listed(unusable[0])} mm, which is no "
            f"pixel size, so its geometry cannot be trusted: {SPACING_FIX}."
        )
    spacings = {tuple(np.round(s, 4).tolist()) for s in pixel_spacings}
    if len(sizes) > 1 or len(spacings) > 1:
        raise InputError(
            f"DICOM series {where} mixes slice sizes or pixel spacings "
            f"({sorted(sizes)}, {sorted(spacings)} mm): export one uniform series."
        )
    return pixel_spacings[0]


def _listed(values: np.ndarray) -> str:
    return "\\".join(f"{v:g}" for v in values)


def _orientation_problem(orientation: np.ndarray) -> str | None:
    """Why an ``ImageOrientationPatient`` is no orientation: a clause, or None."""
    if not np.isfinite(orientation).all():
        return "that is not finite"
    row, column = orientation[:3], orientation[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(column)])
    if np.abs(lengths - 1.0).max() > DIRECTION_TOLERANCE:
        return "with a direction that is not of unit length"
    cosine = float(abs(row @ column)) / float(lengths.prod())
    if cosine > DIRECTION_TOLERANCE:
        angle = np.degrees(np.arccos(min(1.0, cosine)))
        return f"whose row and column directions are {angle:.2f} degrees apart, not 90"
    return None


def _axial_plane(headers: list[Any], where: str, names: list[str], override: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Row and column directions, slice normal (LPS) and slice positions of an axial series.

    With ``override`` (an explicit spacing), unusable orientations are taken as the
    standard axial one and unusable positions as None, instead of refusing them."""
    orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in headers]
    positions = [_floats(ds, "ImagePositionPatient", 3) for ds in headers]
    if len(headers) == 1 and (orientations[0] is None or positions[0] is None):
        orientations, positions = [STANDARD_ORIENTATION], [np.zeros(3)]
    missing = [tag for tag, values in (("ImagePositionPatient", positions),
                                       ("ImageOrientationPatient", orientations))
               if any(v is None for v in values)]
    if missing and not override:
        raise InputError(
            f"DICOM series {where} lacks {'/'.join(missing)}, so its slices cannot be "
            f"ordered and its geometry cannot be trusted: {SPACING_FIX}."
        )
    problems = [(i, problem) for i, o in enumerate(orientations)
                if o is not None and (problem := _orientation_problem(o)) is not None]
    if problems and not override:
        i, problem = problems[0]
        raise InputError(
            f"DICOM series {where} has an ImageOrientationPatient {problem} (in "
            f"'{names[i]}': {_listed(orientations[i])}), so its "
            f"geometry cannot be trusted: {SPACING_FIX}."
        )
    if problems or "ImageOrientationPatient" in missing:
        orientations = [STANDARD_ORIENTATION] * len(headers)
    if any(p is None or not np.isfinite(p).all() for p in positions):
        if not override:
            i = next(i for i, p in enumerate(positions) if not np.isfinite(p).all())
            raise InputError(
                f"DICOM series {where} has an ImagePositionPatient that is not finite (in "
                f"'{names[i]}': {_listed(positions[i])}), so its "
                f"geometry cannot be trusted: {SPACING_FIX}."
            )
        positions = None
    orientation = orientations[0]
    if any(np.abs(o - orientation).max() > 1e-4 for o in orientations):
        raise InputError(
            f"DICOM series {where} mixes slice orientations: export one series of parallel "
            "axial slices."
        )
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    plane = _AXES[int(np.argmax(np.abs(normal)))]
    if plane != "axial":
        raise InputError(
            f"DICOM series {where} holds {plane} slices (slice normal "
            f"{tuple(np.round(normal, 2).tolist())} in LPS), but sparsect reconstructs axial "
            "slices: reformat the series to axial slices or give the axial series."
        )
    return row, column, normal, None if positions is None else np.stack(positions)


def _slice_order(along: np.ndarray, names: list[str], headers: list[Any], where: str,
                 spacing: tuple[float, float, float] | None = None
                 ) -> tuple[np.ndarray, float]:
    """Slice order along the normal and the median step; refuses duplicated, missing or
    unevenly spaced slices."""
    order = np.argsort(along, kind="stable")
    ordered = [names[i] for i in order]
    gaps = np.diff(along[order])
    if (gaps < TOLERANCE_MM).any():
        i = int(np.argmax(gaps < TOLERANCE_MM))
        raise InputError(
            f"DICOM series {where} has duplicated slices ('{ordered[i]}' and "
            f"'{ordered[i + 1]}' lie at the same position {along[order][i]:.2f} mm): remove "
            "the duplicates."
        )
    if len(gaps):
        step = float(np.median(gaps))
    elif spacing is not None:
        step = spacing[2]
    else:
        step = _single_slice_spacing(headers[0], where)
    if (np.abs(gaps - step) > 0.1 * step + TOLERANCE_MM).any():
        i = int(np.argmax(np.abs(gaps - step)))
        what = "is missing slices" if gaps[i] > 1.5 * step else "is unevenly spaced"
        raise InputError(
            f"DICOM series {where} {what} (a {gaps[i]:.2f} mm step between '{ordered[i]}' "
            f"and '{ordered[i + 1]}' where the series spacing is {step:.2f} mm): export the "
            "complete, evenly spaced series."
        )
    return order, step


def _untilted_step(travel: np.ndarray, normal: np.ndarray, pixel: np.ndarray,
                   where: str) -> float:
    """The distance from first to last slice along the normal; refuses a gantry tilt
    (slices not stacked along their normal)."""
    drift = float(np.linalg.norm(travel - (travel @ normal) * normal))
    if drift > 0.1 * pixel.min():
        tilt = float(np.degrees(np.arctan2(drift, travel @ normal)))
        raise InputError(
            f"DICOM series {where} was acquired with a gantry tilt of {tilt:.1f} degrees "
            "(its slices are not stacked along their normal), which sparsect does not "
            "correct: resample it onto an untilted axial grid and give the result as "
            "NIfTI."
        )
    return float(travel @ normal)


def _single_slice_spacing(header: Any, where: str) -> float:
    """The z size of a one-slice series: SpacingBetweenSlices, else SliceThickness.

    Raises:
        InputError: if neither is a positive size.
    """
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(header.get(tag, None))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    raise InputError(
        f"DICOM series {where} is one slice without a positive SliceThickness or "
        "SpacingBetweenSlices, so its slice spacing (SliceThickness/ImagePositionPatient) "
        f"is unknown: {SPACING_FIX}."
    )


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return _SYNTAX_NAMES.get(uid, name if name != uid else "an unknown transfer syntax")


def _decodable(uid: str) -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(uid)
    if syntax.is_transfer_syntax and not syntax.is_compressed:
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _transfer_syntax(header: Any) -> str:
    meta = getattr(header, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "") if meta is not None else "")
    if uid:
        return uid
    implicit, little = getattr(header, "original_encoding", (False, True))
    if not little:
        return "1.2.840.10008.1.2.2"
    return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"


def check_decodable(series: Series, where: str) -> None:
    """Refuses a series stored in a transfer syntax that no installed decoder reads."""
    for uid in sorted({_transfer_syntax(ds) for ds in series.headers}):
        if _decodable(uid):
            continue
        package = _DECODER_PACKAGES.get(uid)
        fix = (f"install {package} (pip install pylibjpeg {package}) or decompress the series "
               "(e.g. gdcmconv --raw)" if package else "convert the series to an uncompressed "
               "transfer syntax with a tool that reads it (pydicom has no decoder for it)")
        raise InputError(
            f"DICOM series {where} is stored as {_syntax_name(uid)} ({uid}), which no "
            f"installed decoder reads: {fix}."
        )


def _pixels(path: Path, header: Any) -> np.ndarray:
    """One slice in HU, ``(rows, columns)`` float32."""
    from pydicom.uid import UID

    magic, raw = _sniff(path)
    try:
        dataset = _dcmread(path, force=raw, pixels=True)
        if "TransferSyntaxUID" not in dataset.file_meta:
            dataset.file_meta.TransferSyntaxUID = UID(_transfer_syntax(dataset))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = dataset.pixel_array
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated or undecodable pixel data
        raise _cannot_read(path, error) from None
    if stored.shape != (int(header.Rows), int(header.Columns)):
        raise _cannot_read(path, f"its pixel data has shape {stored.shape}")
    slope, intercept = float(header.RescaleSlope), float(header.RescaleIntercept)
    return (stored.astype(np.float64) * slope + intercept).astype(np.float32)


def read_series(root: Path, choice: str | None = None,
                spacing: tuple[float, float, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The CT volume of a DICOM file or series folder: ``(x, y, z)`` float32 HU (x along
    the columns of a slice, y along its rows, z along the slice normal) and its RAS+
    affine (as ITK reads the same series); ``spacing`` (x, y, z in mm) replaces the
    headers' spacing, as :func:`check_series` describes.

    Raises:
        InputError: as :func:`select_series`, :func:`check_series` and
            :func:`check_decodable`, or for a file whose pixels cannot be decoded.
    """
    series, where = select_series(root, choice)
    geometry = check_series(series, where, spacing)
    check_decodable(series, where)
    slices = [_pixels(series.files[i], series.headers[i]).T for i in geometry.order]
    return np.stack(slices, axis=-1), geometry.affine
