import numpy as np
import pytest

from helpers import write_dicom_series, write_nifti, write_sitk
from sparsect.data.io import (
    axial_slices,
    find_scans,
    load_subject,
    standardise,
    volume_from_slices,
)
from sparsect.errors import InputError


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd", "mha", "dicom"])
def test_every_format_reads_to_the_same_hu(tmp_path, block_volume, fmt):
    if fmt == "dicom":
        write_dicom_series(tmp_path / "scan01", block_volume)
    elif fmt == "nii.gz":
        write_nifti(tmp_path / "scan01.nii.gz", block_volume)
    else:
        write_sitk(tmp_path / f"scan01.{fmt}", block_volume)
    (entry,) = find_scans(tmp_path)
    assert entry.subject == "scan01"
    subject = load_subject(entry)
    data = subject["ct"].data[0].numpy()
    assert data.shape == block_volume.shape
    assert sorted(np.unique(data).tolist()) == [-1000, 40, 1000]
    assert np.allclose(subject["ct"].spacing, (2.0, 2.0, 4.0))


def test_label_map_is_paired_and_resampled_nearest(tmp_path, block_volume):
    write_nifti(tmp_path / "s1.nii.gz", block_volume)
    labels = (block_volume > 0).astype(np.uint8) * 7
    write_nifti(tmp_path / "s1_seg.nii.gz", labels, dtype=np.uint8)
    (entry,) = find_scans(tmp_path)
    assert entry.labels is not None and entry.labels.name == "s1_seg.nii.gz"
    subject = standardise(load_subject(entry), image_size=32, pixel_size_mm=3.0,
                          hu_clip=(-1024.0, 3071.0))
    assert subject["ct"].spatial_shape == (32, 32, 6)
    assert np.allclose(subject["ct"].spacing[:2], (3.0, 3.0))
    assert set(np.unique(subject["labels"].data.numpy())) == {0, 7}
    # padding is air, not water
    assert subject["ct"].data.min() == -1000


def test_display_slices_round_trip(block_volume):
    slices = axial_slices(block_volume)
    assert slices.shape == (6, 32, 40)
    assert np.array_equal(volume_from_slices(slices), block_volume)


def test_empty_and_missing_folders_are_explained(tmp_path):
    with pytest.raises(InputError, match="holds no CT scan"):
        find_scans(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_scans(tmp_path / "nope")


def test_corrupt_and_mismatched_inputs_are_explained(tmp_path, block_volume):
    path = write_nifti(tmp_path / "bad.nii.gz", block_volume)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="Cannot read scan '.*bad.nii.gz'"):
        load_subject(find_scans(tmp_path)[0])
    path.unlink()
    write_nifti(tmp_path / "s.nii.gz", block_volume)
    write_nifti(tmp_path / "s_seg.nii.gz", np.zeros((10, 10, 6)), dtype=np.uint8)
    with pytest.raises(InputError, match="Label map .* has shape"):
        load_subject(find_scans(tmp_path)[0])


def test_non_finite_voxels_are_refused(tmp_path, block_volume):
    volume = block_volume.copy()
    volume[0, 0, 0] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", volume, dtype=np.float32)
    with pytest.raises(InputError, match="NaN or infinite"):
        load_subject(find_scans(tmp_path)[0])


def test_every_layout_in_one_data_folder(tmp_path, block_volume):
    import h5py

    from sparsect.data.datasets import hu_to_lodopab

    write_nifti(tmp_path / "a.nii.gz", block_volume)
    write_dicom_series(tmp_path / "b" / "study" / "series", block_volume, suffix="")
    (tmp_path / "c" / "segmentations").mkdir(parents=True)
    write_nifti(tmp_path / "c" / "ct.nii.gz", block_volume)
    write_nifti(tmp_path / "c" / "segmentations" / "liver.nii.gz",
                (block_volume > 0).astype(np.uint8), dtype=np.uint8)
    with h5py.File(tmp_path / "ground_truth_validation_003.hdf5", "w") as file:
        file["data"] = hu_to_lodopab(np.transpose(block_volume, (2, 0, 1)))
    (tmp_path / "notes.txt").write_text("not a scan")
    entries = find_scans(tmp_path)
    assert [e.subject for e in entries] == ["a", "b", "c", "ground_truth_validation_003"]
    assert [e.labels is not None for e in entries] == [False, False, True, False]
    for entry in entries:
        subject = load_subject(entry)
        assert subject["ct"].spatial_shape == block_volume.shape, entry
        assert np.isclose(np.median(subject["ct"].data.numpy()), -1000, atol=1), entry


def test_a_label_map_beside_a_subject_folder_that_has_one_is_refused(tmp_path, block_volume):
    (tmp_path / "c").mkdir()
    write_nifti(tmp_path / "c" / "ct.nii.gz", block_volume)
    write_nifti(tmp_path / "c" / "seg.nii.gz", np.zeros(block_volume.shape), dtype=np.uint8)
    write_nifti(tmp_path / "c_seg.nii.gz", np.zeros(block_volume.shape), dtype=np.uint8)
    with pytest.raises(InputError, match=r"are two label maps of subject 'c'"):
        find_scans(tmp_path)


@pytest.mark.parametrize(("spacing", "slices"), [(1.0, 1), (1.5, 2), (0.75, 3)])
def test_downsampling_averages_over_the_output_pixel(spacing, slices):
    """White noise of 20 HU resampled to 3 mm pixels has about the standard deviation of
    its average over each pixel's area, 20 / (3 / spacing), also for volumes of fewer
    slices than a 3D filter needs; sampling alone would keep most of the 20 HU."""
    import torch
    import torchio as tio

    from sparsect.data.io import standardise

    size = int(round(3.0 * 128 / spacing))
    noise = np.random.default_rng(0).normal(0.0, 20.0, (1, size, size, slices))
    image = tio.ScalarImage(tensor=torch.from_numpy((50.0 + noise).astype(np.float32)),
                            affine=np.diag([spacing, spacing, 3.0, 1.0]))
    out = standardise(tio.Subject(ct=image), 128, 3.0, (-1024.0, 3071.0))["ct"].data
    assert tuple(out.shape) == (1, 128, 128, slices)
    area_average = 20.0 / (3.0 / spacing)
    assert area_average * 0.95 < float(out[0, 8:-8, 8:-8].std()) < area_average * 1.3
