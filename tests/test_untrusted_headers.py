"""Scan headers that give no usable voxel spacing or orientation.

Each is refused in one sentence that names the file, the header field and the fix (an
explicit ``--spacing``), rather than read with a guess; given that spacing, each loads
with it. Small NIfTI, NRRD, MetaImage files and DICOM series are written with one field
broken, read through :func:`load_subject` and through ``sparsect reconstruct``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from helpers import write_dicom_series, write_nifti, write_sitk
from sparsect.cli import main
from sparsect.data.io import ScanEntry, load_subject, spacing_override
from sparsect.errors import InputError
from test_bad_input import PARAMS, checkpoint

SPACING = (0.5, 0.75, 3.0)
"""An explicit spacing unlike the files' (2, 2, 4) mm, different along each axis."""


@pytest.fixture
def volume() -> np.ndarray:
    """(x, y, z) = (40, 32, 6) HU, unlike itself flipped along any axis: a water block, an
    off-centre bone rod and an insert whose value changes from slice to slice."""
    hu = np.full((40, 32, 6), -1000.0)
    hu[8:32, 6:26, :] = 40.0
    hu[10:14, 8:11, :] = 1000.0
    hu[20:24, 14:18, :] = 100.0 * np.arange(6)
    return hu


def hu(subject) -> np.ndarray:
    return subject["ct"].data[0].numpy()


def read(path: Path, spacing=None, labels: Path | None = None):
    return load_subject(ScanEntry(path.name, path, labels), spacing=spacing)


def refusal(path: Path, labels: Path | None = None) -> str:
    with pytest.raises(InputError) as caught:
        read(path, labels=labels)
    return str(caught.value)


def assert_one_sentence(message: str, path: Path, field: str) -> None:
    assert f"'{path}'" in message, message
    assert re.search(field, message), message
    assert "\n" not in message and message.endswith("."), message
    assert not re.search(r"[.?!] +[A-Z]", message), f"more than one sentence: {message}"


# --- NIfTI ---------------------------------------------------------------------------------

def qform_nifti(path: Path, volume: np.ndarray, pixdim=(2.0, 2.0, 4.0),
                affine: np.ndarray | None = None, qform_code: int = 1) -> Path:
    """A NIfTI file whose grid is its qform alone (sform_code 0; ``affine``, by default
    2 x 2 x 4 mm), with ``pixdim[1:4]`` stored as given."""
    image = nib.Nifti1Image(volume.astype(np.int16), None)
    image.header.set_qform(np.diag([2.0, 2.0, 4.0, 1.0]) if affine is None else affine,
                           code=qform_code)
    image.header.set_sform(None, code=0)
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, path)
    return path


def sform_nifti(path: Path, volume: np.ndarray, matrix) -> Path:
    """A NIfTI file whose grid is the sform ``matrix`` (3 x 3 voxel axes, origin 0)."""
    affine = np.eye(4)
    affine[:3, :3] = matrix
    image = nib.Nifti1Image(volume.astype(np.int16), None)
    image.header.set_sform(affine, code=2)
    nib.save(image, path)
    return path


NIFTI_CASES: dict[str, tuple[Callable[[Path, np.ndarray], Path], str]] = {
    "zero pixdim": (lambda p, v: qform_nifti(p, v, pixdim=(0.0, 2.0, 4.0)),
                    r"has pixdim\[1\] = 0 under its qform"),
    "NaN pixdim": (lambda p, v: qform_nifti(p, v, pixdim=(2.0, np.nan, 4.0)),
                   r"has pixdim\[2\] = nan under its qform"),
    "negative pixdim": (lambda p, v: qform_nifti(p, v, pixdim=(2.0, 2.0, -4.0)),
                        r"has pixdim\[3\] = -4 under its qform"),
    "infinite pixdim": (lambda p, v: qform_nifti(p, v, pixdim=(np.inf, 2.0, 4.0)),
                        r"has pixdim\[1\] = inf under its qform"),
    "no sform or qform": (lambda p, v: qform_nifti(p, v, qform_code=0),
                          r"has sform_code and qform_code 0"),
    "singular affine": (lambda p, v: sform_nifti(p, v, np.diag([2.0, 2.0, 0.0])),
                        r"has a singular sform affine"),
    "parallel axes": (lambda p, v: sform_nifti(p, v, [[2, 2, 0], [0, 0, 0], [0, 0, 4]]),
                      r"has a singular sform affine"),
    "sheared affine": (lambda p, v: sform_nifti(p, v, [[2, 0.5, 0], [0, 2, 0], [0, 0, 4]]),
                       r"has a sheared sform affine srow_x/srow_y/srow_z \(two voxel axes "
                       r"meet at 75\.96 degrees"),
    "NaN affine": (lambda p, v: sform_nifti(p, v, np.diag([2.0, np.nan, 4.0])),
                   r"has non-finite values in its sform affine"),
}


@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_an_untrusted_nifti_header_is_refused_naming_the_field(tmp_path, volume, case):
    write, field = NIFTI_CASES[case]
    path = write(tmp_path / "scan.nii.gz", volume)
    message = refusal(path)
    assert_one_sentence(message, path, field)
    assert message.startswith(f"Scan '{path}' ")
    assert "cannot be trusted: fix the header, or give the voxel spacing explicitly with " \
           "`sparsect reconstruct --spacing X Y Z` (mm)." in message


@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_an_explicit_spacing_reads_an_untrusted_nifti_with_that_spacing(tmp_path, volume,
                                                                        case):
    path = NIFTI_CASES[case][0](tmp_path / "scan.nii.gz", volume)
    subject = read(path, SPACING)
    assert np.allclose(subject["ct"].spacing, SPACING)
    assert np.array_equal(hu(subject), volume)  # identity qform, else taken as RAS+


def test_an_explicit_spacing_keeps_a_usable_orientation_and_origin(tmp_path, volume):
    flipped = np.diag([-2.0, 2.0, 4.0, 1.0])
    flipped[:3, 3] = [10.0, -20.0, 30.0]
    nib.save(nib.Nifti1Image(volume.astype(np.int16), flipped), tmp_path / "las.nii.gz")
    as_read = read(tmp_path / "las.nii.gz")
    respaced = read(tmp_path / "las.nii.gz", SPACING)
    assert np.array_equal(hu(as_read), volume[::-1])
    assert np.array_equal(hu(respaced), volume[::-1])
    assert np.allclose(respaced["ct"].spacing, SPACING)
    assert np.allclose(respaced["ct"].affine[:3, 3], as_read["ct"].affine[:3, 3]
                       - np.array([SPACING[0] - 2.0, 0, 0]) * (volume.shape[0] - 1))
    # the orientation of a qform whose pixdim is unusable is its quaternion's
    qform_nifti(tmp_path / "q.nii.gz", volume, pixdim=(0.0, 2.0, 4.0), affine=flipped)
    assert np.array_equal(hu(read(tmp_path / "q.nii.gz", SPACING)), volume[::-1])


def test_usable_headers_read_as_before(tmp_path, volume):
    qform_nifti(tmp_path / "qform.nii.gz", volume)
    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0],
                         [0, 0, 1]])
    sform_nifti(tmp_path / "oblique.nii.gz", volume, rotation @ np.diag([2.0, 2.0, 4.0]))
    for name in ("qform.nii.gz", "oblique.nii.gz"):
        subject = read(tmp_path / name)
        assert np.allclose(subject["ct"].spacing, (2.0, 2.0, 4.0)), name
        assert np.array_equal(hu(subject), volume), name


def test_a_label_map_without_usable_header_is_refused_and_takes_the_scans_grid(tmp_path,
                                                                             volume):
    scan = write_nifti(tmp_path / "s.nii.gz", volume)
    labels = qform_nifti(tmp_path / "s_seg.nii.gz", (volume > 0) * 3,
                         pixdim=(2.0, 0.0, 4.0))
    message = refusal(scan, labels)
    assert_one_sentence(message, labels, r"has pixdim\[2\] = 0 under its qform")
    assert message.startswith(f"Label map '{labels}' ")
    assert message.endswith(": save it with the header of its scan.")
    subject = read(scan, SPACING, labels)
    assert np.array_equal(subject["labels"].affine, subject["ct"].affine)
    assert np.array_equal(subject["labels"].data[0].numpy(), (volume > 0) * 3)


# --- NRRD and MetaImage ------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "fields", "named"),
                         [("nrrd", (b"space directions", b"space origin", b"space:"),
                           "space directions"),
                          ("mha", (b"ElementSpacing",), "ElementSpacing")])
def test_a_header_without_spacing_is_refused_where_itk_would_take_1_mm(tmp_path, volume,
                                                                       suffix, fields, named):
    as_written = hu(read(write_sitk(tmp_path / f"good.{suffix}", volume)))
    path = write_sitk(tmp_path / f"scan.{suffix}", volume)
    head, end, rest = path.read_bytes().partition(b"\n\n" if suffix == "nrrd"
                                                  else b"ElementDataFile")
    kept = [line for line in head.split(b"\n") if not line.startswith(fields)]
    path.write_bytes(b"\n".join(kept) + end + rest)
    assert_one_sentence(refusal(path), path, f"declares no {named} in its header")
    subject = read(path, SPACING)
    assert np.allclose(subject["ct"].spacing, SPACING)
    assert np.array_equal(hu(subject), as_written)  # in the orientation ITK reads


# --- DICOM ---------------------------------------------------------------------------------

def edit_series(folder: Path, edit: Callable[[pydicom.Dataset, int], None]) -> Path:
    """Applies ``edit(dataset, slice index)`` to every file of a series; the files are then
    renamed in reverse, so that file order is not slice order."""
    files = sorted(folder.iterdir())
    for index, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        edit(dataset, index)
        dataset.save_as(path)
    for index, path in enumerate(files):
        path.rename(folder / f"im_{len(files) - index:03d}.dcm")
    return folder


def drop(tag: str, only_first: bool = False) -> Callable[[pydicom.Dataset, int], None]:
    def edit(dataset: pydicom.Dataset, index: int) -> None:
        if index == 0 or not only_first:
            del dataset[tag]
    return edit


def put(tag: str, value) -> Callable[[pydicom.Dataset, int], None]:
    def edit(dataset: pydicom.Dataset, index: int) -> None:
        setattr(dataset, tag, value)
    return edit


def skewed(degrees: float) -> list[float]:
    angle = np.radians(degrees)
    return [1.0, 0.0, 0.0, float(np.sin(angle)), float(np.cos(angle)), 0.0]


DICOM_CASES: dict[str, tuple[dict, Callable | None, str]] = {
    "missing PixelSpacing": ({}, drop("PixelSpacing"), r"has no PixelSpacing tag"),
    "zero PixelSpacing": ({}, put("PixelSpacing", [0.0, 0.0]), r"has PixelSpacing 0\\0 mm"),
    "NaN PixelSpacing": ({}, put("PixelSpacing", [np.nan, 2.0]),
                         r"has PixelSpacing nan\\2 mm"),
    "negative PixelSpacing": ({}, put("PixelSpacing", [2.0, -2.0]),
                              r"has PixelSpacing 2\\-2 mm"),
    "non-orthogonal orientation": ({"orientation": skewed(5.0)}, None,
                                   r"ImageOrientationPatient whose row and column "
                                   r"directions are 85\.00 degrees apart"),
    "zero orientation": ({"orientation": (1, 0, 0, 0, 0, 0), "step": (0, 0, 4.0)}, None,
                         r"ImageOrientationPatient with a direction that is not of unit "
                         r"length"),
    "NaN orientation": ({}, put("ImageOrientationPatient", [1, 0, 0, 0, np.nan, 0]),
                        r"ImageOrientationPatient that is not finite"),
    "missing orientation": ({}, drop("ImageOrientationPatient", only_first=True),
                            r"lacks ImageOrientationPatient"),
    "duplicate slice positions": ({"step": (0, 0, 0)}, None,
                                  r"has all its 6 slices at one ImagePositionPatient, so its "
                                  r"slice spacing \(SliceThickness/ImagePositionPatient\)"),
    "NaN slice position": ({}, put("ImagePositionPatient", [0.0, 0.0, np.nan]),
                           r"ImagePositionPatient that is not finite"),
    "missing slice positions": ({}, drop("ImagePositionPatient"), r"lacks ImagePositionPatient"),
}


def write_case(folder: Path, volume: np.ndarray, case: str) -> Path:
    options, edit, _ = DICOM_CASES[case]
    write_dicom_series(folder, volume, **options)
    return edit_series(folder, edit or (lambda dataset, index: None))


@pytest.mark.parametrize("case", list(DICOM_CASES))
def test_an_untrusted_dicom_series_is_refused_naming_the_tag(tmp_path, volume, case):
    folder = write_case(tmp_path / "series", volume, case)
    message = refusal(folder)
    assert_one_sentence(message, folder, DICOM_CASES[case][2])
    assert message.startswith(f"DICOM series '{folder}' ")
    assert message.endswith(": export the series with its geometry tags, or give the voxel "
                            "spacing explicitly with `sparsect reconstruct --spacing X Y Z` "
                            "(mm).")


@pytest.mark.parametrize("case", list(DICOM_CASES))
def test_an_explicit_spacing_reads_an_untrusted_series_with_that_spacing(tmp_path, volume,
                                                                         case):
    folder = write_case(tmp_path / "series", volume, case)
    subject = read(folder, SPACING)
    assert np.allclose(subject["ct"].spacing, SPACING)
    # as a series of standard axial slices reads: slices in position order, else in
    # InstanceNumber order (not the reversed file order)
    good = hu(read(write_dicom_series(tmp_path / "good", volume)))
    assert np.array_equal(good, volume[::-1, ::-1])
    assert np.array_equal(hu(subject), good)


def test_a_single_slice_needs_its_slice_thickness(tmp_path, volume):
    folder = edit_series(write_dicom_series(tmp_path / "slice", volume[:, :, :1]),
                         drop("SliceThickness"))
    assert_one_sentence(refusal(folder), folder,
                        r"is one slice without a positive SliceThickness or "
                        r"SpacingBetweenSlices, so its slice spacing")
    subject = read(folder, SPACING)
    assert np.allclose(subject["ct"].spacing, SPACING)
    kept = read(write_dicom_series(tmp_path / "kept", volume[:, :, :1]))
    assert np.allclose(kept["ct"].spacing, (2.0, 2.0, 4.0))
    assert np.array_equal(hu(subject), hu(kept))


def test_an_explicit_spacing_does_not_excuse_duplicated_slices(tmp_path, volume):
    folder = write_dicom_series(tmp_path / "series", volume)
    (folder / "slice_002_copy.dcm").write_bytes((folder / "slice_002.dcm").read_bytes())
    with pytest.raises(InputError, match="has duplicated slices"):
        read(folder, SPACING)


def test_an_explicit_spacing_replaces_a_usable_series_spacing(tmp_path, volume):
    folder = write_dicom_series(tmp_path / "series", volume)
    as_read, respaced = read(folder), read(folder, SPACING)
    assert np.allclose(as_read["ct"].spacing, (2.0, 2.0, 4.0))
    assert np.allclose(respaced["ct"].spacing, SPACING)
    assert np.array_equal(hu(respaced), hu(as_read))


# --- the override itself -------------------------------------------------------------------

def test_the_override_must_be_three_positive_sizes(tmp_path, volume):
    path = write_nifti(tmp_path / "scan.nii.gz", volume)
    for spacing in [(0.0, 1.0, 1.0), (1.0, np.nan, 1.0), (1.0, 1.0), (1.0, 1.0, -2.0)]:
        with pytest.raises(InputError, match="is not three positive sizes in mm"):
            read(path, spacing)


def test_the_override_applies_to_the_scans_under_the_input_only(tmp_path, volume):
    (tmp_path / "inputs").mkdir()
    inside = qform_nifti(tmp_path / "inputs" / "a.nii.gz", volume, pixdim=(0.0, 2.0, 4.0))
    outside = qform_nifti(tmp_path / "b.nii.gz", volume, pixdim=(0.0, 2.0, 4.0))
    with spacing_override(SPACING, tmp_path / "inputs"):
        assert np.allclose(read(inside)["ct"].spacing, SPACING)
        with pytest.raises(InputError, match=r"pixdim\[1\]"):
            read(outside)
    with pytest.raises(InputError, match=r"pixdim\[1\]"):
        read(inside)
    with spacing_override(None, tmp_path / "inputs"), pytest.raises(InputError):
        read(inside)


# --- through the command line --------------------------------------------------------------

def bad_nifti(root: Path, volume: np.ndarray) -> tuple[Path, str, Path]:
    """A NIfTI file with pixdim[2] = 0, the field, and the same scan with its header."""
    return (qform_nifti(root / "scan.nii.gz", volume, pixdim=(2.0, 0.0, 4.0)), r"pixdim\[2\]",
            write_nifti(root / "good.nii.gz", volume))


def bad_series(root: Path, volume: np.ndarray) -> tuple[Path, str, Path]:
    """A series of sheared orientation, the tag, and the series of standard orientation."""
    folder = write_dicom_series(root / "series", volume)
    return (edit_series(folder, put("ImageOrientationPatient", skewed(10.0))),
            "ImageOrientationPatient", write_dicom_series(root / "good", volume))


@pytest.mark.parametrize("write", [bad_nifti, bad_series], ids=["NIfTI", "DICOM"])
def test_reconstruct_refuses_an_untrusted_header_and_reads_it_with_spacing(
        tmp_path, volume, monkeypatch, capsys, write):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    item, field, good = write(tmp_path, volume)
    model = str(checkpoint(tmp_path / "m.ckpt"))
    out = tmp_path / "out" / "recon.nii.gz"
    argv = ["reconstruct", str(item), "-o", str(out), "--model", model, *PARAMS]
    before = set(tmp_path.rglob("*"))

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (message,) = [line for line in err.splitlines() if line.startswith("sparsect ")]
    assert message.startswith("sparsect reconstruct: ")
    assert_one_sentence(message, item, field)
    assert "--spacing X Y Z" in message
    assert not (tmp_path / "out").exists()
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "registry.db"}

    assert main([*argv, "--spacing", "2", "2", "4", "--save-reference"]) == 0, \
        capsys.readouterr().err
    expected = tmp_path / "expected.nii.gz"
    assert main(["reconstruct", str(good), "-o", str(expected), "--model", model, *PARAMS,
                 "--save-reference"]) == 0
    written = nib.load(out.with_name("recon_reference.nii.gz"))
    assert np.allclose(written.header.get_zooms(), (12.0, 12.0, 4.0))
    assert np.array_equal(written.get_fdata(),
                          nib.load(tmp_path / "expected_reference.nii.gz").get_fdata())


def test_reconstruct_refuses_a_spacing_that_is_no_size(tmp_path, volume, monkeypatch,
                                                       capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    item, _, _ = bad_nifti(tmp_path, volume)
    out = tmp_path / "out" / "recon.nii.gz"
    assert main(["reconstruct", str(item), "-o", str(out), "--model",
                 str(checkpoint(tmp_path / "m.ckpt")), *PARAMS,
                 "--spacing", "0", "2", "4"]) == 2
    assert "Voxel spacing [0.0, 2.0, 4.0] is not three positive sizes in mm" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
