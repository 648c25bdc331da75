"""Anatomical torso phantoms: determinism, HU plausibility, label/HU agreement, NIfTI I/O."""

from __future__ import annotations

import dataclasses
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

# Same 384 mm field of view as the default grid, at a quarter of the voxels. Its slab is
# 40 mm thick: the dome stays inside it, so that every subject shows lung and abdomen.
SMALL = PhantomConfig(
    shape=(128, 128, 8),
    spacing_mm=(3.0, 3.0, 5.0),
    dome_level_mm=(5.0, 25.0),
    pelvic_probability=0.0,
)
# Without the reconstruction noise, where a test compares HU of two phantoms.
QUIET = dataclasses.replace(SMALL, image_noise_hu=0.0)
# Labels outside the trunk: the table is not the patient, arms may leave the field of view.
NOT_TRUNK = [ORGAN_LABELS[name] for name in ("background", "table", "arm", "arm_bone", "arm_fat")]
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


def trunk(labels: np.ndarray) -> np.ndarray:
    """The patient's trunk: labelled voxels other than table and arms."""
    return ~np.isin(labels, NOT_TRUNK)


def patient(labels: np.ndarray) -> np.ndarray:
    """The patient, arms included: labelled voxels other than the table."""
    return (labels > 0) & (labels != ORGAN_LABELS["table"])


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
        "table": BACKGROUND, "arm": SOFT_TISSUE, "arm_bone": BONE, "arm_fat": FAT,
        "colon": SOFT_TISSUE, "bladder": SOFT_TISSUE, "pelvis_bone": BONE, "femur": BONE,
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
    assert 40 <= median_hu(hu, labels, "liver") <= 130  # up to the portal-venous phase
    assert median_hu(hu, labels, "spine") > 200
    assert median_hu(hu, labels, "rib") > 200


def test_air_outside_the_body_is_exactly_minus_1000(small):
    for hu, labels in small.values():
        # Beyond the scanner blur (a couple of voxels) the outside is pure air.
        near_body = ndimage.binary_dilation(labels > 0, np.ones((7, 7, 1), dtype=bool))
        assert (hu[~near_body] == -1000.0).all()
        # The trunk stays clear of the grid's edges (table and arms may be cut by them).
        body = trunk(labels)
        assert not body[0].any() and not body[-1].any()
        assert not body[:, 0].any() and not body[:, -1].any()


def test_body_stays_inside_the_reconstruction_circle(small):
    nx, ny, _ = SMALL.shape
    x = (np.arange(nx) - (nx - 1) / 2) * SMALL.spacing_mm[0]
    y = (np.arange(ny) - (ny - 1) / 2) * SMALL.spacing_mm[1]
    radius = np.hypot(x[:, None], y[None, :])
    fov_radius = nx * SMALL.spacing_mm[0] / 2
    for _, labels in small.values():
        assert radius[trunk(labels).any(axis=2)].max() < fov_radius - 5.0


@pytest.mark.parametrize("subject", SUBJECTS)
def test_labels_agree_with_hu_thresholds_inside_the_body(small, subject):
    hu, labels = small[subject]
    body = patient(labels)
    from_labels = organ_tissue(labels)[body]
    from_hu = threshold_classes(hu)[body]
    assert (from_labels == from_hu).mean() > 0.9
    # Each class on its own: lung is air-dense, bone is above +200 HU, mostly.
    for tissue, minimum in ((LUNG, 0.95), (FAT, 0.9), (BONE, 0.85)):
        assert (from_hu[from_labels == tissue] == tissue).mean() > minimum, tissue


def test_lungs_give_way_to_the_abdomen_towards_the_feet(small):
    lung = (ORGAN_LABELS["lung"], ORGAN_LABELS["lung_vessel"])
    for _, labels in small.values():
        body_area = trunk(labels).sum(axis=(0, 1))
        lung_fraction = np.isin(labels, lung).sum(axis=(0, 1)) / body_area
        liver_fraction = (labels == ORGAN_LABELS["liver"]).sum(axis=(0, 1)) / body_area
        # z is superior: slice 0 is the lowest (abdominal) one.
        assert lung_fraction[-1] > lung_fraction[0] + 0.1
        assert liver_fraction[0] > liver_fraction[-1]


def test_body_size_varies_between_subjects(small):
    widths, depths, areas = [], [], []
    for _, labels in small.values():
        body = trunk(labels[:, :, SMALL.shape[2] // 2])
        widths.append(np.ptp(np.flatnonzero(body.any(axis=1))) * SMALL.spacing_mm[0])
        depths.append(np.ptp(np.flatnonzero(body.any(axis=0))) * SMALL.spacing_mm[1])
        areas.append(body.sum())
    # Bodies wider than the field of view allows are scaled down to fit it.
    assert all(230 <= w <= 370 for w in widths), widths
    assert all(160 <= d <= 330 for d in depths), depths
    assert max(areas) > 1.1 * min(areas), (widths, depths)


def test_default_grid_is_fast_and_complete(default_subject):
    hu, labels, seconds = default_subject
    assert hu.shape == labels.shape == (256, 256, 24)
    # A few seconds on a 2-core machine; the bound leaves room for a loaded CI runner.
    assert seconds < 20.0, seconds
    for organ in ("lung", "lung_vessel", "heart", "aorta", "liver", "spine", "rib", "fat"):
        assert (labels == ORGAN_LABELS[organ]).sum() > 100, organ
    body = patient(labels)
    agreement = (organ_tissue(labels)[body] == threshold_classes(hu)[body]).mean()
    assert agreement > 0.9
    assert -900 <= median_hu(hu, labels, "lung") <= -750
    assert 40 <= median_hu(hu, labels, "liver") <= 130


def test_a_small_field_of_view_shrinks_the_anatomy_to_fit():
    config = PhantomConfig(shape=(64, 64, 2), spacing_mm=(4.0, 4.0, 5.0))  # 256 mm FOV
    _, labels = generate_subject(0, SEED, config)
    x = (np.arange(64) - 31.5) * 4.0
    radius = np.hypot(x[:, None], x[None, :])
    assert radius[trunk(labels).any(axis=2)].max() < 128.0 - 5.0


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="shape"):
        PhantomConfig(shape=(0, 10, 10))
    with pytest.raises(ValueError, match="spacing"):
        PhantomConfig(spacing_mm=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        generate_subject(-1, SEED, SMALL)
    with pytest.raises(ValueError, match="image_noise_hu"):
        PhantomConfig(image_noise_hu=-1.0)
    with pytest.raises(ValueError, match="contrast_phases"):
        PhantomConfig(contrast_phases=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="table_probability"):
        PhantomConfig(table_probability=1.5)
    with pytest.raises(ValueError, match="pelvic_probability"):
        PhantomConfig(pelvic_probability=-0.1)
    with pytest.raises(ValueError, match="pelvic_dome_level_mm"):
        PhantomConfig(pelvic_dome_level_mm=(300.0, 250.0))
    with pytest.raises(ValueError, match="too small"):
        generate_subject(0, SEED, PhantomConfig(shape=(8, 8, 2), spacing_mm=(1.0, 1.0, 5.0)))


# --------------------------------------------------------------------------- scan realism


def test_image_noise_is_band_limited_and_stays_on_the_patient_and_table():
    clean_hu, clean_labels = generate_subject(0, SEED, QUIET)
    hu, labels = generate_subject(0, SEED, SMALL)
    assert np.array_equal(labels, clean_labels)  # the noise has a stream of its own
    noise = hu - clean_hu
    assert (noise[labels == 0] == 0).all()  # air (and the air gap) stays as it was
    # Well inside soft tissue (no clipping at -1000): the noise has the configured level,
    # 21 HU at 1.5 x 1.5 x 5 mm, i.e. half that at 3 x 3 x 5 mm, within the subject spread.
    soft = ndimage.binary_erosion(organ_tissue(labels) == SOFT_TISSUE, np.ones((3, 3, 1), bool))
    sd = float(noise[soft].std())
    assert 0.75 * 10.5 < sd < 1.25 * 10.5, sd
    assert abs(float(noise[soft].mean())) < 1.0
    # No slow drifts: neighbouring slices are independent, and 5 x 5 voxel means are quiet.
    both = soft[:, :, 1:] & soft[:, :, :-1]
    assert abs(np.corrcoef(noise[:, :, :-1][both], noise[:, :, 1:][both])[0, 1]) < 0.1
    local_mean = ndimage.uniform_filter(noise, (5, 5, 1))
    assert float(local_mean[soft].std()) < 0.3 * sd


def test_contrast_phases_enhance_blood_and_organs():
    abdomen = dataclasses.replace(QUIET, dome_level_mm=(45.0, 50.0))  # kidneys in the slab
    phases = {
        name: generate_subject(1, SEED, dataclasses.replace(abdomen, contrast_phases=p))
        for name, p in (("native", (1, 0, 0)), ("venous", (0, 1, 0)), ("arterial", (0, 0, 1)))
    }
    labels = phases["native"][1]
    assert all(np.array_equal(lab, labels) for _, lab in phases.values())  # same anatomy

    def gain(phase: str, organ: str) -> float:
        return median_hu(phases[phase][0], labels, organ) - median_hu(
            phases["native"][0], labels, organ
        )

    assert 230 <= gain("arterial", "aorta") <= 360
    assert 100 <= gain("venous", "aorta") <= 190
    assert gain("venous", "vena_cava") > 100 > gain("arterial", "vena_cava")
    assert 30 <= gain("venous", "liver") <= 80  # parenchyma and its (brighter) veins
    assert 50 <= gain("venous", "spleen") <= 100
    assert 80 <= gain("venous", "kidney") <= 170
    # Arterial (corticomedullary) phase: the cortex outshines the medulla.
    kidney = labels == ORGAN_LABELS["kidney"]
    spread = {p: np.percentile(phases[p][0][kidney], 90) - np.percentile(phases[p][0][kidney], 10)
              for p in ("native", "arterial")}  # fmt: skip
    assert spread["arterial"] > spread["native"] + 50


def test_contrast_phases_are_drawn_with_their_probabilities():
    from sparsect.data.phantom.anatomy import _Anatomy

    counts = {"non_contrast": 0, "portal_venous": 0, "arterial": 0}
    for subject in range(300):
        stream = np.random.SeedSequence([SEED, subject]).spawn(1)[0]
        counts[_Anatomy(np.random.default_rng(stream), SMALL).phase] += 1
    for phase, expected in zip(counts, SMALL.contrast_phases, strict=True):
        assert abs(counts[phase] / 300 - expected) < 0.08, counts


def test_the_table_lies_below_the_back_with_a_shell_round_a_foam_core():
    config = dataclasses.replace(QUIET, table_probability=1.0)
    for subject in SUBJECTS:
        hu, labels = generate_subject(subject, SEED, config)
        table = labels == ORGAN_LABELS["table"]
        assert table.sum() > 100, subject
        # y runs anterior: every table voxel lies at or below the lowest voxel of the patient.
        table_top = np.flatnonzero(table.any(axis=(0, 2))).max()
        back = np.flatnonzero(patient(labels).any(axis=(0, 2))).min()
        assert table_top <= back, (table_top, back)
        # 400-480 mm wide: it spans (most of) the 384 mm field of view.
        columns = np.flatnonzero(table.any(axis=(1, 2)))
        assert np.ptp(columns) * SMALL.spacing_mm[0] > 330
        # A dense carbon shell and a light foam core (and mattress), never soft tissue.
        assert hu[table].max() > 80 and hu[table].min() < -650
        assert hu[table].max() < 320
    without = dataclasses.replace(QUIET, table_probability=0.0)
    assert not (generate_subject(0, SEED, without)[1] == ORGAN_LABELS["table"]).any()


def test_arms_down_lie_beside_the_trunk_with_bones():
    # A 480 mm field of view holds the arms beside any body.
    wide = PhantomConfig(shape=(96, 96, 6), spacing_mm=(5.0, 5.0, 10.0), image_noise_hu=0.0,
                         arms_down_probability=1.0, table_probability=0.0)  # fmt: skip
    hu, labels = generate_subject(2, SEED, wide)
    arm = np.isin(labels, [ORGAN_LABELS[n] for n in ("arm", "arm_bone", "arm_fat")])
    body = trunk(labels) & (labels > 0)
    assert (labels == ORGAN_LABELS["arm_bone"]).any()
    assert median_hu(hu, labels, "arm_bone") > 200
    assert 30 <= median_hu(hu, labels, "arm") <= 80
    centre = (wide.shape[0] - 1) / 2
    for side in (1, -1):
        mine = arm & ((np.arange(wide.shape[0])[:, None, None] - centre) * side > 0)
        assert mine.sum() > 50, side
        # Outside the trunk: no trunk voxel lies further out on the same row.
        x = np.arange(wide.shape[0])[:, None, None] * side
        arm_inner = np.where(mine, x, np.iinfo(int).max).min(axis=0)
        trunk_outer = np.where(body, x, np.iinfo(int).min).max(axis=0)
        rows = mine.any(axis=0) & body.any(axis=0)
        assert (arm_inner[rows] > trunk_outer[rows]).all(), side
    raised = dataclasses.replace(wide, arms_down_probability=0.0)
    assert not np.isin(generate_subject(2, SEED, raised)[1], [ORGAN_LABELS["arm"]]).any()


# --------------------------------------------------------------------------- lower abdomen

# Slabs 150 .. 190 mm below the dome (below the ribs, above the pelvis): kidneys, colon,
# small bowel, psoas.
ABDOMEN = dataclasses.replace(QUIET, dome_level_mm=(170.0, 170.0))
PELVIS = dataclasses.replace(QUIET, pelvic_probability=1.0, pelvic_dome_level_mm=(290.0, 300.0))


def _anatomy(subject: int, config: PhantomConfig):
    from sparsect.data.phantom.anatomy import _Anatomy

    streams = np.random.SeedSequence([SEED, subject]).spawn(7)
    return _Anatomy(np.random.default_rng(streams[0]), config, np.random.default_rng(streams[5]))


def _painted(subject: int, config: PhantomConfig):
    """Supersampled labels and materials of a subject, with its colon's gas bubbles."""
    from sparsect.data.phantom.bubbles import _add_colon_bubbles
    from sparsect.data.phantom.grid import _make_grid
    from sparsect.data.phantom.painting import _paint_volume

    an = _anatomy(subject, config)
    grid = _make_grid(an, config)
    labels_ss, material_ss = _paint_volume(an, grid)
    streams = np.random.SeedSequence([SEED, subject]).spawn(7)
    _add_colon_bubbles(np.random.default_rng(streams[6]), grid, labels_ss, material_ss, an)
    return an, labels_ss, material_ss


def test_colon_holds_mottled_faeces_with_small_gas_bubbles():
    from sparsect.data.phantom.materials import _M

    an, labels_ss, material_ss = _painted(0, ABDOMEN)
    assert 0.0 <= an.material_hu[_M["faeces"]] <= 60.0
    colon = labels_ss == ORGAN_LABELS["colon"]
    faeces = material_ss == _M["faeces"]
    assert faeces.sum() > 1000 and (faeces <= colon).all()
    # Gas bubbles inside the faeces: many separate small ones, not one pocket.
    bubbles = (material_ss == _M["gas"]) & ndimage.binary_dilation(faeces, iterations=2)
    components, count = ndimage.label(bubbles)
    assert count > 30, count
    sizes = np.bincount(components.ravel())[1:]
    # 5 mm across at most: 7 x 7 supersampled pixels (0.75 mm) in 3 sub-slices, with margin.
    assert np.median(sizes) < 150, np.median(sizes)
    # The colon wall (gut wall) surrounds the content.
    assert (material_ss[colon] == _M["gut_wall"]).mean() > 0.05


def test_colon_frame_and_small_bowel_loops_are_drawn_in_their_ranges():
    counts, contents = [], set()
    for subject in range(40):
        an = _anatomy(subject, PhantomConfig())
        counts.append(len(an.loops))
        for loop in an.loops:
            contents.add(loop.content)
            factor = 0.6 if loop.content == "collapsed" else 1.0
            assert all(factor * 8.0 - 1e-6 <= s <= factor * 15.0 + 1e-6 for s in loop.organ.semi)
        ascending, transverse, descending, sigmoid, rectum = an.colon
        assert ascending.points[:, 0].min() > 0 > descending.points[:, 0].max()  # right, left
        assert transverse.points[:, 1].max() > ascending.points[:, 1].max()  # anterior
        assert rectum.points[:, 2].max() < ascending.points[:, 2].max()
        for tube in an.colon:
            assert all(14.0 <= r <= 35.0 for r in tube.radius)
        assert 2.0 <= an.colon_wall <= 3.0
    assert 10 <= min(counts) and max(counts) <= 25
    assert contents == {"fluid", "contrast", "level", "gas", "collapsed"}


def test_gas_floats_above_a_horizontal_fluid_level():
    from types import SimpleNamespace

    from sparsect.data.phantom.lower_abdomen import _Tube
    from sparsect.data.phantom.painting import _tube_cut

    u, v = np.meshgrid(np.linspace(-40, 40, 161), np.linspace(-40, 40, 161), indexing="ij")
    fields = SimpleNamespace(u=u.astype(np.float32), v=v.astype(np.float32))
    tube = _Tube(np.array([[0.0, 0.0, -50.0], [0.0, 0.0, 50.0]]), (25.0, 25.0), True, "level", 0.3)
    outer, lumen, level = _tube_cut(tube, None, fields, 0.0, 2.5)
    gas, fluid = lumen & level, lumen & ~level
    assert gas.any() and fluid.any() and (lumen <= outer).all()
    assert v[gas].min() > v[fluid].max()  # one horizontal level, gas anterior (up)
    assert 0.2 < gas.sum() / lumen.sum() < 0.4


def test_abdominal_slabs_show_psoas_beside_the_lumbar_spine_and_no_ribs_low_down():
    for subject in SUBJECTS:
        hu, labels = generate_subject(subject, SEED, ABDOMEN)
        low = labels[:, :, 0]
        assert not (low == ORGAN_LABELS["rib"]).any(), subject
        assert not np.isin(low, [ORGAN_LABELS["lung"], ORGAN_LABELS["heart"]]).any(), subject
        spine = np.argwhere(low == ORGAN_LABELS["spine"])
        assert spine.size, subject
        cx, cy = spine.mean(axis=0)
        x = (np.arange(low.shape[0])[:, None] - cx) * ABDOMEN.spacing_mm[0]
        y = (np.arange(low.shape[1])[None, :] - cy) * ABDOMEN.spacing_mm[1]
        # Psoas: muscle either side of the vertebral body, in front of the transverse processes.
        beside = (np.abs(x) > 15) & (np.abs(x) < 75) & (y > -5) & (y < 45)
        for side in (1, -1):
            muscle = (low == ORGAN_LABELS["muscle"]) & beside & (x * side > 0)
            assert muscle.sum() * 9.0 > 200.0, (subject, side)  # mm^2
        assert (labels == ORGAN_LABELS["colon"]).any(), subject
        assert (labels == ORGAN_LABELS["bowel"]).any(), subject


def test_pelvic_slabs_show_iliac_bone_sacrum_bladder_and_femoral_heads():
    for subject in SUBJECTS:
        hu, labels = generate_subject(subject, SEED, PELVIS)
        low = labels[:, :, :3]
        assert (low == ORGAN_LABELS["pelvis_bone"]).sum() > 100, subject
        assert (low == ORGAN_LABELS["bladder"]).sum() > 50, subject
        assert not np.isin(labels, [ORGAN_LABELS["lung"], ORGAN_LABELS["liver"]]).any()
        assert median_hu(hu, labels, "pelvis_bone") > 200
        assert -5 <= median_hu(hu, labels, "bladder") <= 40  # urine in a thin wall
    # Further down (this small slab is 40 mm thick), the femoral heads in their acetabula.
    hips = dataclasses.replace(PELVIS, pelvic_dome_level_mm=(375.0, 375.0))
    hu, labels = generate_subject(0, SEED, hips)
    assert (labels == ORGAN_LABELS["femur"]).sum() > 20
    assert median_hu(hu, labels, "femur") > 200
    counts = sum(_anatomy(s, PhantomConfig()).pelvic for s in range(200))
    assert abs(counts / 200 - PhantomConfig().pelvic_probability) < 0.07


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
