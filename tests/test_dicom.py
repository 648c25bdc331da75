"""DICOM as archives ship it, and the data set layouts of ``find_scans``.

Small files written in each layout: DICOM series without suffix or as ``.IMA``, nested
patient/study/series folders, several series per folder, localizers, compressed
transfer syntaxes, tilted and sagittal series, LIDC-IDRI and Mayo-like archives,
TotalSegmentator subject folders and LoDoPaB-CT HDF5 files; and the real DICOM series
in ``realct/``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torchio as tio
from pydicom.uid import JPEG2000Lossless, RLELossless

from helpers import ROOT, write_dicom_series, write_nifti
from sparsect.cli import main
from sparsect.data import datasets, dicom
from sparsect.data.io import ScanEntry, find_scans, load_subject
from sparsect.errors import InputError
from sparsect.priors.totalsegmentator import STRUCTURES_V2
from test_bad_input import PARAMS, checkpoint

REAL_DICOM = ROOT / "realct" / "abdomen_dicom"
VALUE = {name: value for value, name in STRUCTURES_V2.items()}


def hu(subject: tio.Subject) -> np.ndarray:
    return subject["ct"].data[0].numpy()


def read(path: Path, series: str | None = None) -> tio.Subject:
    return load_subject(ScanEntry(path.name, path, None, series=series))


# --- files recognised by content, in any folder layout ----------------------------------

@pytest.mark.parametrize("options", [{"suffix": ""}, {"suffix": ".IMA"},
                                     {"suffix": "", "preamble": False},
                                     {"suffix": "", "prefix": "CT.1.3.12.2.1107.5.1.4."}],
                         ids=["no suffix", ".IMA", "no preamble", "archive names"])
def test_a_series_is_recognised_by_content_whatever_its_names(tmp_path, block_volume, options):
    write_dicom_series(tmp_path / "scan01", block_volume, **options)
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "scan01" and entry.series is None
    subject = load_subject(entry)
    assert np.array_equal(hu(subject), block_volume)
    assert np.allclose(subject["ct"].spacing, (2.0, 2.0, 4.0))


def test_a_nested_archive_is_one_scan_named_after_its_top_folder(tmp_path, block_volume):
    write_dicom_series(tmp_path / "patient7" / "01-01-2000-CT" / "3000566-NA", block_volume,
                       suffix="")
    (tmp_path / "patient7" / "01-01-2000-CT" / "069.xml").write_text("<LidcReadMessage/>")
    (tmp_path / "patient7" / "README").write_text("not DICOM")
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "patient7"
    assert np.array_equal(hu(load_subject(entry)), block_volume)


def test_dicomdir_and_non_image_objects_are_skipped(tmp_path, block_volume):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = write_dicom_series(tmp_path / "p1" / "series", block_volume, suffix="")
    for name, sop_class in [("DICOMDIR", dicom.DICOMDIR_SOP_CLASS),
                            ("report", "1.2.840.10008.5.1.4.1.1.88.11")]:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.Modality = sop_class, "SR"
        ds.save_as(folder.parent / name, enforce_file_format=True)
    (entry,) = find_scans(tmp_path)
    assert np.array_equal(hu(load_subject(entry)), block_volume)


# --- several series -----------------------------------------------------------------------

def two_series(folder: Path, volume: np.ndarray, numbers=(2, 3), nested=False) -> list[str]:
    uids = ["1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.2002"]
    for i, (uid, number) in enumerate(zip(uids, numbers, strict=True)):
        write_dicom_series(folder / f"s{i}" if nested else folder, volume + 100 * i, suffix="",
                           prefix=f"IM{i}_", series_uid=uid, series_number=number,
                           description=f"Body {i}")
    return uids


@pytest.mark.parametrize("nested", [False, True], ids=["one folder", "a folder per series"])
def test_prepare_gives_one_scan_per_series(tmp_path, block_volume, nested):
    two_series(tmp_path / "patient", block_volume, nested=nested)
    entries = find_scans(tmp_path)
    assert [e.subject for e in entries] == ["patient_2", "patient_3"]
    for i, entry in enumerate(entries):
        assert np.array_equal(hu(load_subject(entry)), block_volume + 100 * i)
    assert [e.subject for e in find_scans(tmp_path)] == ["patient_2", "patient_3"]  # stable


def test_series_without_distinct_numbers_are_named_by_their_uid(tmp_path, block_volume):
    two_series(tmp_path / "patient", block_volume, numbers=(4, 4))
    assert [e.subject for e in find_scans(tmp_path)] == ["patient_84981001", "patient_84982002"]


def test_anonymised_series_without_uids_are_told_apart_by_folder(tmp_path, block_volume):
    for i, name in enumerate(["arterial", "venous"]):
        write_dicom_series(tmp_path / "p" / name, block_volume + i, suffix="", series_uid="")
    entries = find_scans(tmp_path)
    assert [e.subject for e in entries] == ["p_arterial", "p_venous"]
    assert [hu(load_subject(e))[0, 0, 0] for e in entries] == [-1000, -999]
    assert hu(read(tmp_path / "p", series="venous"))[0, 0, 0] == -999


def test_reconstruct_refuses_several_series_and_takes_the_one_chosen(tmp_path, block_volume,
                                                                     capsys):
    uids = two_series(tmp_path / "patient", block_volume)
    model = str(checkpoint(tmp_path / "m.ckpt"))
    out = tmp_path / "out" / "recon.nii.gz"
    argv = ["reconstruct", str(tmp_path / "patient"), "-o", str(out), "--model", model, *PARAMS]
    assert main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert "holds 2 series (#2 'Body 0' (6 slices, UID 1.2.826.0.1.3680043.8.498.1001); " \
           "#3 'Body 1' (6 slices, UID 1.2.826.0.1.3680043.8.498.2002))" in message
    assert "--series" in message and not out.exists()
    references = {}
    for choice in ("2", "3", uids[1]):
        assert main([*argv, "--series", choice, "--save-reference"]) == 0
        references[choice] = nib.load(out.with_name("recon_reference.nii.gz")).get_fdata()
        assert references[choice].shape == (32, 32, 6)
    assert np.array_equal(references["3"], references[uids[1]])
    assert (references["3"] - references["2"]).max() == 100  # series 3 is series 2 + 100 HU
    assert main([*argv, "--series", "9"]) == 2
    assert "holds no series '9'" in capsys.readouterr().err


def test_localizers_are_skipped_with_one_note_per_series(tmp_path, block_volume, capsys):
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_dicom_series(tmp_path / "p" / "scout", block_volume[:, :, :1], suffix="",
                       prefix="LOC", series_uid=uid, series_number=1,
                       image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    write_dicom_series(tmp_path / "p" / "ct", block_volume, suffix="", series_number=2,
                       image_type=["ORIGINAL", "PRIMARY", "AXIAL"])
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "p"
    assert np.array_equal(hu(load_subject(entry)), block_volume)
    notes = [line for line in capsys.readouterr().err.splitlines() if "localizer" in line]
    assert len(notes) == 1 and notes[0].startswith("note: skipped the localizer series #1"), notes
    # localizer images inside a series: dropped from it, the series read without them
    write_dicom_series(tmp_path / "q", block_volume[:, :, :2], suffix="", prefix="LOC",
                       series_uid=uid, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                       origin=(0, 0, 100))
    write_dicom_series(tmp_path / "q", block_volume, suffix="", series_uid=uid)
    assert np.array_equal(hu(read(tmp_path / "q")), block_volume)
    assert "2 localizer images of series" in capsys.readouterr().err


def test_lidc_layout_keeps_the_ct_series_and_notes_the_x_rays(tmp_path, block_volume, capsys):
    patient = tmp_path / "LIDC-IDRI-0001"
    write_dicom_series(patient / "study1" / "3000566-NA-03192", block_volume, prefix="1-",
                       suffix=".dcm")
    (patient / "study1" / "3000566-NA-03192" / "069.xml").write_text("<LidcReadMessage/>")
    write_dicom_series(patient / "study2" / "3000923-NA-62357", block_volume[:, :, :1],
                       modality="CR", prefix="1-", suffix=".dcm")
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "LIDC-IDRI-0001"
    assert np.array_equal(hu(load_subject(entry)), block_volume)
    assert "note: skipped the CR series" in capsys.readouterr().err


def test_mayo_layout_gives_one_scan_per_dose(tmp_path, block_volume):
    for number, dose in [(1, "full_1mm"), (2, "quarter_1mm")]:
        write_dicom_series(tmp_path / "L067" / dose, block_volume, suffix=".IMA",
                           prefix="L067_FD_1_1.CT.0001.", series_number=number)
    entries = find_scans(tmp_path)
    assert [e.subject for e in entries] == ["L067_1", "L067_2"]
    assert all(np.array_equal(hu(load_subject(e)), block_volume) for e in entries)


# --- compressed transfer syntaxes -----------------------------------------------------------

@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=lambda s: s.name)
def test_compressed_series_decode_to_the_same_hu(tmp_path, block_volume, syntax):
    write_dicom_series(tmp_path / "scan", block_volume, transfer_syntax=syntax, suffix="")
    import pydicom

    first = sorted((tmp_path / "scan").iterdir())[0]
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(hu(read(tmp_path / "scan")), block_volume)


def test_an_undecodable_syntax_is_refused_naming_it(tmp_path, block_volume, monkeypatch):
    write_dicom_series(tmp_path / "jxl", block_volume, transfer_syntax="1.2.840.10008.1.2.4.110")
    with pytest.raises(InputError, match=r"jxl' is stored as JPEG XL Lossless "
                                         r"\(1\.2\.840\.10008\.1\.2\.4\.110\)"):
        read(tmp_path / "jxl")
    write_dicom_series(tmp_path / "j2k", block_volume, transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(dicom, "_decodable", lambda uid: uid != JPEG2000Lossless)
    with pytest.raises(InputError, match=r"JPEG 2000 Image Compression \(Lossless Only\).*"
                                         r"install pylibjpeg-openjpeg"):
        read(tmp_path / "j2k")


# --- geometry -------------------------------------------------------------------------------

ORIENTATIONS = {
    "axial": {},
    "feet first": {"step": (0, 0, -4.0), "origin": (10.0, -20.0, 30.0)},
    "prone": {"orientation": (-1, 0, 0, 0, -1, 0)},
    "rotated in plane": {"orientation": (np.cos(0.3), np.sin(0.3), 0, -np.sin(0.3),
                                         np.cos(0.3), 0), "origin": (5.0, 6.0, 7.0)},
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_the_affine_and_voxels_are_those_itk_reads(tmp_path, name):
    volume = np.random.default_rng(0).integers(-1000, 2000, (7, 5, 4)).astype(float)
    folder = write_dicom_series(tmp_path / "s", volume, spacing=(0.7, 0.9, 2.5),
                                **ORIENTATIONS[name])
    itk = tio.ScalarImage(folder)
    itk.load()
    ours, affine = dicom.read_series(folder)
    assert np.allclose(affine, itk.affine, atol=1e-4)
    assert np.array_equal(ours, itk.data[0].numpy())
    canonical = tio.ToCanonical()(itk)
    subject = read(folder)
    assert np.allclose(subject["ct"].affine, canonical.affine, atol=1e-4)
    assert np.array_equal(hu(subject), canonical.data[0].numpy())


def test_tilted_and_sagittal_series_are_refused(tmp_path, block_volume):
    tilt = np.radians(15)
    write_dicom_series(tmp_path / "tilted", block_volume,
                       orientation=(1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)), step=(0, 0, 4.0))
    with pytest.raises(InputError, match=r"gantry tilt of 15\.0 degrees.*resample it"):
        read(tmp_path / "tilted")
    write_dicom_series(tmp_path / "sagittal", block_volume, orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(InputError, match=r"holds sagittal slices.*reformat the series"):
        read(tmp_path / "sagittal")
    write_dicom_series(tmp_path / "coronal", block_volume, orientation=(1, 0, 0, 0, 0, -1))
    with pytest.raises(InputError, match=r"holds coronal slices"):
        read(tmp_path / "coronal")
    # an oblique series stacked along its own normal has a correct affine: read as is
    write_dicom_series(tmp_path / "oblique", block_volume,
                       orientation=(1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)))
    assert np.array_equal(dicom.read_series(tmp_path / "oblique")[0], block_volume)


def test_the_real_series_reads_as_20_slices_of_512_at_098_mm():
    if not REAL_DICOM.is_dir():
        pytest.skip(f"{REAL_DICOM} is missing: copy /work/shared/realct into realct/")
    subject = read(REAL_DICOM)
    assert subject["ct"].spatial_shape == (512, 512, 20)
    assert np.allclose(subject["ct"].spacing, (0.9765625, 0.9765625, 2.0))
    data = hu(subject)
    assert data.min() == -1024 and 1000 < data.max() < 3071
    itk = tio.ToCanonical()(tio.ScalarImage(REAL_DICOM))  # its JPEG 2000, decoded by ITK too
    assert np.allclose(subject["ct"].affine, itk.affine, atol=1e-4)
    assert np.array_equal(data, itk.data[0].numpy())


# --- TotalSegmentator -----------------------------------------------------------------------

def totalsegmentator_subject(folder: Path, volume: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    write_nifti(folder / "ct.nii.gz", volume)
    masks = folder / "segmentations"
    masks.mkdir()
    body = np.zeros(volume.shape, np.uint8)
    body[8:32, 6:26, :] = 1
    write_nifti(masks / "liver.nii.gz", body, dtype=np.uint8)
    rod = np.zeros(volume.shape, np.uint8)
    rod[18:22, 14:18, :] = 1
    write_nifti(masks / "vertebrae_L1.nii.gz", rod, dtype=np.uint8)
    write_nifti(masks / "spleen.nii.gz", np.zeros(volume.shape, np.uint8), dtype=np.uint8)
    return folder


def test_a_totalsegmentator_folder_of_masks_is_combined_into_v2_labels(tmp_path, block_volume):
    totalsegmentator_subject(tmp_path / "s0011", block_volume)
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "s0011" and entry.labels == tmp_path / "s0011" / "segmentations"
    subject = load_subject(entry)
    labels = subject["labels"].data[0].numpy()
    assert np.array_equal(hu(subject), block_volume)
    # vertebrae_L1 (31) lies inside liver (5): the larger label value wins
    assert labels[20, 15, 0] == VALUE["vertebrae_L1"] == 31
    assert labels[10, 10, 0] == VALUE["liver"] and labels[0, 0, 0] == 0
    assert set(np.unique(labels)) == {0, 5, 31}


@pytest.mark.parametrize("name", ["seg.nii.gz", "segmentations.nii.gz"])
def test_a_totalsegmentator_multi_label_map_is_used_as_is(tmp_path, block_volume, name):
    folder = totalsegmentator_subject(tmp_path / "s0012", block_volume)
    labels = (block_volume > 0).astype(np.uint8) * VALUE["kidney_left"]
    write_nifti(folder / name, labels, dtype=np.uint8)
    (entry,) = find_scans(tmp_path)
    assert entry.labels == folder / name
    assert set(np.unique(load_subject(entry)["labels"].data.numpy())) == {0, 3}


def test_a_mask_of_an_unknown_structure_is_refused(tmp_path, block_volume):
    folder = totalsegmentator_subject(tmp_path / "s1", block_volume)
    write_nifti(folder / "segmentations" / "livr.nii.gz", np.zeros((40, 32, 6)), dtype=np.uint8)
    with pytest.raises(InputError, match=r"livr\.nii\.gz' names structure 'livr', which is not "
                                         r"a TotalSegmentator v2"):
        load_subject(find_scans(tmp_path)[0])


# --- LoDoPaB-CT -----------------------------------------------------------------------------

def test_lodopab_values_convert_to_hu_and_back():
    assert datasets.LODOPAB_MU_MAX == pytest.approx(81.35858)
    values = np.array([0.0, 1.0, 20 / datasets.LODOPAB_MU_MAX, 0.3])
    expected = [-1000 * 20 / 19.98, 3071.0, 0.0]
    assert np.allclose(datasets.lodopab_to_hu(values)[:3], expected, atol=1e-3)
    hu_values = np.array([-1000.0, -500.0, 0.0, 40.0, 1000.0, 3071.0])
    assert np.allclose(datasets.lodopab_to_hu(datasets.hu_to_lodopab(hu_values)), hu_values,
                       atol=1e-3)


def test_a_lodopab_file_is_a_stack_of_slices_in_hu(tmp_path, block_volume):
    slices = np.transpose(block_volume, (2, 0, 1))  # (z, x, y) as LoDoPaB stores them
    with h5py.File(tmp_path / "ground_truth_test_000.hdf5", "w") as file:
        file["data"] = datasets.hu_to_lodopab(slices)
    (tmp_path / "observation_test_000.hdf5").write_bytes(b"sinograms, not scans")
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "ground_truth_test_000"
    subject = load_subject(entry)
    assert np.allclose(hu(subject), block_volume[::-1, ::-1], atol=0.01)  # RAS+: x, y flipped
    pixel = datasets.LODOPAB_DOMAIN_MM / block_volume.shape[0]
    assert np.allclose(subject["ct"].spacing, (pixel, pixel, datasets.LODOPAB_SLICE_MM))
    # the axial display convention shows the stored slice as dival plots it (x.T)
    from sparsect.data.io import axial_slices

    assert np.allclose(axial_slices(hu(subject))[2], slices[2].T, atol=0.01)
