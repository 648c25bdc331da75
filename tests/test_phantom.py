"""Anatomical torso phantoms: determinism, HU plausibility, label/HU agreement, NIfTI I/O."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sparsect.data.phantom import (
    ORGAN_LABELS,
    ORGAN_TO_TISSUE,
    PhantomConfig,
    generate_subject,
    phantom_affine,
    write_dataset,
)
from sparsect.errors import InputError
from sparsect.priors import organs
from sparsect.priors.classes import (
    BACKGROUND,
    BONE,
    FAT,
    HU_BONE_MIN,
    HU_FAT_MAX,
    HU_LUNG_MAX,
    LUNG,
    NUM_TISSUE_CLASSES,
    SOFT_TISSUE,
)
from sparsect.priors.masks import tissue_masks_from_labels

# Same 384 mm field of view as the default grid, at a quarter of the voxels.
SMALL = PhantomConfig(shape=(128, 128, 8), spacing_mm=(3.0, 3.0, 5.0))
SEED = 7
SUBJECTS = (0, 1, 2)


@pytest.fixture(scope="module")
def small() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {s: generate_subject(s, SEED, SMALL) for s in SUBJECTS}


@pytest.fixture(scope="module")
def default_subject() -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    hu, labels = generate_subject(0, SEED)
    return hu, labels, time.perf_counter() - start


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("phantoms")
    return root, write_dataset(root / "data", 2, SEED, SMALL)


def threshold_classes(hu: np.ndarray) -> np.ndarray:
    """Tissue classes from the HU thresholds alone (no morphology)."""
    classes = np.full(hu.shape, SOFT_TISSUE, dtype=np.uint8)
    classes[hu < HU_FAT_MAX] = FAT
    classes[hu < HU_LUNG_MAX] = LUNG
    classes[hu >= HU_BONE_MIN] = BONE
    return classes


def organ_tissue(labels: np.ndarray) -> np.ndarray:
    """Tissue classes of an organ label map, the way the ``masks`` stage derives them."""
    return tissue_masks_from_labels(labels, ORGAN_TO_TISSUE)


def median_hu(hu: np.ndarray, labels: np.ndarray, *organs: str) -> float:
    mask = np.isin(labels, [ORGAN_LABELS[o] for o in organs])
    assert mask.any(), f"no {organs} voxels"
    return float(np.median(hu[mask]))


# --------------------------------------------------------------------------- label tables


def test_organ_table_covers_every_label_with_a_tissue_class():
    assert ORGAN_LABELS["background"] == 0
    assert len(set(ORGAN_LABELS.values())) == len(ORGAN_LABELS)
    assert set(ORGAN_TO_TISSUE) == set(ORGAN_LABELS.values())
    assert set(ORGAN_TO_TISSUE.values()) <= set(range(NUM_TISSUE_CLASSES))
    expected = {
        "background": BACKGROUND, "lung": LUNG, "fat": FAT, "muscle": SOFT_TISSUE,
        "lung_vessel": SOFT_TISSUE, "lesion": SOFT_TISSUE, "liver": SOFT_TISSUE,
        "spine": BONE, "rib": BONE, "sternum": BONE, "disc": SOFT_TISSUE,
    }  # fmt: skip
    for organ, tissue in expected.items():
        assert ORGAN_TO_TISSUE[ORGAN_LABELS[organ]] == tissue, organ


def test_the_phantom_tables_are_those_of_the_priors():
    assert ORGAN_LABELS is organs.ORGAN_LABELS
    assert ORGAN_TO_TISSUE is organs.ORGAN_TO_TISSUE
    assert organs.NO_LABEL == -1 and organs.NO_LABEL not in ORGAN_TO_TISSUE


def test_organ_table_maps_label_maps_to_tissue_classes():
    labels = np.array([[ORGAN_LABELS["lung"], ORGAN_LABELS["rib"]], [0, ORGAN_LABELS["fat"]]])
    tissue = organ_tissue(labels.astype(np.uint8))
    assert tissue.dtype == np.uint8 and tissue.shape == labels.shape
    assert tissue.tolist() == [[LUNG, BONE], [BACKGROUND, FAT]]
    everything = np.array(sorted(ORGAN_TO_TISSUE), dtype=np.uint8)
    assert organ_tissue(everything).tolist() == [ORGAN_TO_TISSUE[v] for v in everything]


def test_organ_table_rejects_unknown_labels_and_the_no_label_value():
    with pytest.raises(InputError, match=r"\[200\]"):
        organ_tissue(np.array([0, 200]))
    with pytest.raises(InputError, match=r"\[-1\]"):
        organ_tissue(np.array([organs.NO_LABEL, 3], dtype=np.int16))


# --------------------------------------------------------------------------- generation


def test_same_subject_and_seed_is_reproducible(small):
    hu, labels = generate_subject(1, SEED, SMALL)
    assert np.array_equal(hu, small[1][0])
    assert np.array_equal(labels, small[1][1])


def test_subjects_and_seeds_give_different_phantoms(small):
    assert not np.array_equal(small[0][0], small[1][0])
    assert not np.array_equal(small[0][1], small[1][1])
    other_seed, _ = generate_subject(0, SEED + 1, SMALL)
    assert not np.array_equal(other_seed, small[0][0])


def test_arrays_have_the_documented_shape_and_dtype(small):
    hu, labels = small[0]
    assert hu.shape == labels.shape == SMALL.shape
    assert hu.dtype == np.float32 and labels.dtype == np.uint8
    assert np.isfinite(hu).all()
    assert hu.min() >= -1000.0 and hu.max() <= 3071.0
    assert set(np.unique(labels).tolist()) <= set(ORGAN_LABELS.values())


@pytest.mark.parametrize("subject", SUBJECTS)
def test_organ_hu_is_plausible(small, subject):
    hu, labels = small[subject]
    assert -900 <= median_hu(hu, labels, "lung") <= -750
    assert -150 <= median_hu(hu, labels, "fat") <= -60
    assert 30 <= median_hu(hu, labels, "muscle") <= 70
    assert 40 <= median_hu(hu, labels, "liver") <= 80
    assert median_hu(hu, labels, "spine") > 200
    assert median_hu(hu, labels, "rib") > 200


def test_air_outside_the_body_is_exactly_minus_1000(small):
    for hu, labels in small.values():
        # Beyond the scanner blur (a couple of voxels) the outside is pure air.
        near_body = ndimage.binary_dilation(labels > 0, np.ones((7, 7, 1), dtype=bool))
        assert (hu[~near_body] == -1000.0).all()
        assert (labels[0] == 0).all() and (labels[-1] == 0).all()
        assert (labels[:, 0] == 0).all() and (labels[:, -1] == 0).all()


def test_body_stays_inside_the_reconstruction_circle(small):
    nx, ny, _ = SMALL.shape
    x = (np.arange(nx) - (nx - 1) / 2) * SMALL.spacing_mm[0]
    y = (np.arange(ny) - (ny - 1) / 2) * SMALL.spacing_mm[1]
    radius = np.hypot(x[:, None], y[None, :])
    fov_radius = nx * SMALL.spacing_mm[0] / 2
    for _, labels in small.values():
        assert radius[(labels > 0).any(axis=2)].max() < fov_radius - 5.0


@pytest.mark.parametrize("subject", SUBJECTS)
def test_labels_agree_with_hu_thresholds_inside_the_body(small, subject):
    hu, labels = small[subject]
    body = labels > 0
    from_labels = organ_tissue(labels)[body]
    from_hu = threshold_classes(hu)[body]
    assert (from_labels == from_hu).mean() > 0.9
    # Each class on its own: lung is air-dense, bone is above +200 HU, mostly.
    for tissue, minimum in ((LUNG, 0.95), (FAT, 0.9), (BONE, 0.85)):
        assert (from_hu[from_labels == tissue] == tissue).mean() > minimum, tissue


def test_lungs_give_way_to_the_abdomen_towards_the_feet(small):
    lung = (ORGAN_LABELS["lung"], ORGAN_LABELS["lung_vessel"])
    for _, labels in small.values():
        body_area = (labels > 0).sum(axis=(0, 1))
        lung_fraction = np.isin(labels, lung).sum(axis=(0, 1)) / body_area
        liver_fraction = (labels == ORGAN_LABELS["liver"]).sum(axis=(0, 1)) / body_area
        # z is superior: slice 0 is the lowest (abdominal) one.
        assert lung_fraction[-1] > lung_fraction[0] + 0.1
        assert liver_fraction[0] > liver_fraction[-1]


def test_body_size_varies_between_subjects(small):
    widths, depths = [], []
    for _, labels in small.values():
        body = labels[:, :, SMALL.shape[2] // 2] > 0
        widths.append(np.ptp(np.flatnonzero(body.any(axis=1))) * SMALL.spacing_mm[0])
        depths.append(np.ptp(np.flatnonzero(body.any(axis=0))) * SMALL.spacing_mm[1])
    assert all(260 <= w <= 360 for w in widths), widths
    assert all(180 <= d <= 280 for d in depths), depths
    assert np.ptp(widths) > 6.0, widths


def test_default_grid_is_fast_and_complete(default_subject):
    hu, labels, seconds = default_subject
    assert hu.shape == labels.shape == (256, 256, 24)
    # A few seconds on a 2-core machine; the bound leaves room for a loaded CI runner.
    assert seconds < 20.0, seconds
    for organ in ("lung", "lung_vessel", "heart", "aorta", "liver", "spine", "rib", "fat"):
        assert (labels == ORGAN_LABELS[organ]).sum() > 100, organ
    body = labels > 0
    agreement = (organ_tissue(labels)[body] == threshold_classes(hu)[body]).mean()
    assert agreement > 0.9
    assert -900 <= median_hu(hu, labels, "lung") <= -750
    assert 40 <= median_hu(hu, labels, "liver") <= 80


def test_a_small_field_of_view_shrinks_the_anatomy_to_fit():
    config = PhantomConfig(shape=(64, 64, 2), spacing_mm=(4.0, 4.0, 5.0))  # 256 mm FOV
    _, labels = generate_subject(0, SEED, config)
    x = (np.arange(64) - 31.5) * 4.0
    radius = np.hypot(x[:, None], x[None, :])
    assert radius[(labels > 0).any(axis=2)].max() < 128.0 - 5.0


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="shape"):
        PhantomConfig(shape=(0, 10, 10))
    with pytest.raises(ValueError, match="spacing"):
        PhantomConfig(spacing_mm=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        generate_subject(-1, SEED, SMALL)
    with pytest.raises(ValueError, match="too small"):
        generate_subject(0, SEED, PhantomConfig(shape=(8, 8, 2), spacing_mm=(1.0, 1.0, 5.0)))


# --------------------------------------------------------------------------- NIfTI


def test_write_dataset_is_byte_for_byte_reproducible(dataset, tmp_path):
    root, scans = dataset
    first = root / "data"
    assert scans == [first / "subject_000.nii.gz", first / "subject_001.nii.gz"]
    names = sorted(p.name for p in first.iterdir())
    assert names == [
        "subject_000.nii.gz",
        "subject_000_seg.nii.gz",
        "subject_001.nii.gz",
        "subject_001_seg.nii.gz",
    ]
    second = tmp_path / "again"
    write_dataset(second, 2, SEED, SMALL)
    assert sorted(p.name for p in second.iterdir()) == names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # The staging folder is gone: only the output folders remain next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    assert sorted(p.name for p in root.iterdir()) == ["data"]


def test_rewriting_replaces_files_and_keeps_other_files(dataset, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / "subject_000.nii.gz").write_bytes(b"stale")
    write_dataset(out, 1, SEED, SMALL)
    assert (out / "notes.txt").read_text() == "kept"
    assert (out / "subject_000.nii.gz").read_bytes() == (
        dataset[0] / "data" / "subject_000.nii.gz"
    ).read_bytes()


def test_nifti_round_trip_through_nibabel(dataset, small):
    _, scans = dataset
    hu, labels = small[0]
    image = nib.load(scans[0])
    assert image.shape == SMALL.shape
    assert image.get_data_dtype() == np.int16
    assert np.allclose(np.linalg.norm(image.affine[:3, :3], axis=0), SMALL.spacing_mm)
    assert np.allclose(image.affine, phantom_affine(SMALL))
    centre = image.affine @ np.array([*(np.array(SMALL.shape) - 1) / 2, 1.0])
    assert np.allclose(centre[:3], 0.0)  # the volume is centred on the world origin
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    stored = np.asarray(image.dataobj)
    assert stored.dtype == np.int16
    assert np.array_equal(stored, np.rint(hu).astype(np.int16))

    seg = nib.load(scans[0].with_name("subject_000_seg.nii.gz"))
    assert seg.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(seg.dataobj), labels)
    assert np.allclose(seg.affine, image.affine)


def test_nifti_round_trip_through_torchio(dataset, small):
    tio = pytest.importorskip("torchio")
    _, scans = dataset
    hu, labels = small[1]
    image = tio.ScalarImage(scans[1])
    assert tuple(image.data.shape) == (1, *SMALL.shape)
    assert np.allclose(image.spacing, SMALL.spacing_mm)
    assert image.orientation == ("R", "A", "S")
    assert np.array_equal(image.data[0].numpy(), np.rint(hu).astype(np.int16))
    seg = tio.LabelMap(scans[1].with_name("subject_001_seg.nii.gz"))
    assert np.array_equal(seg.data[0].numpy(), labels)
