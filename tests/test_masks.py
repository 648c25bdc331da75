import numpy as np
import pytest

from sparsect.errors import InputError
from sparsect.priors.classes import BACKGROUND, BONE, FAT, LUNG, SOFT_TISSUE
from sparsect.priors.masks import (
    FROM_HU,
    one_hot,
    tissue_masks_from_hu,
    tissue_masks_from_labels,
    tissue_masks_from_labels_and_hu,
)
from sparsect.priors.organs import ORGAN_LABELS, ORGAN_TO_TISSUE


def _ellipse(shape, centre, radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1


@pytest.fixture
def torso():
    """A known 2D torso: fat ring, muscle, two lungs, a spine; and its true classes."""
    shape = (96, 96)
    hu = np.full(shape, -1000.0)
    truth = np.full(shape, BACKGROUND, np.uint8)
    body = _ellipse(shape, (48, 48), (36, 44))
    hu[body], truth[body] = -100.0, FAT
    inner = _ellipse(shape, (48, 48), (31, 39))
    hu[inner], truth[inner] = 50.0, SOFT_TISSUE
    for cx in (30, 66):
        lung = _ellipse(shape, (44, cx), (16, 11))
        hu[lung], truth[lung] = -850.0, LUNG
    spine = _ellipse(shape, (70, 48), (6, 6))
    hu[spine], truth[spine] = 700.0, BONE
    rng = np.random.default_rng(0)
    return hu + rng.normal(0, 15, shape), truth


def test_hu_masks_recover_a_known_phantom(torso):
    hu, truth = torso
    classes = tissue_masks_from_hu(hu)
    assert (classes == truth).mean() > 0.98
    for tissue in (LUNG, FAT, SOFT_TISSUE, BONE):
        overlap = ((classes == tissue) & (truth == tissue)).sum()
        dice = 2 * overlap / ((classes == tissue).sum() + (truth == tissue).sum())
        assert dice > 0.9, tissue


def test_air_inside_the_body_is_lung_and_outside_is_background(torso):
    hu, _ = torso
    classes = tissue_masks_from_hu(hu)
    assert classes[44, 30] == LUNG
    assert classes[2, 2] == BACKGROUND


def test_small_islands_are_absorbed(torso):
    hu, truth = torso
    hu = hu.copy()
    hu[60:62, 40:42] = 1200.0  # a 4-pixel "bone" speck in muscle: noise, not anatomy
    classes = tissue_masks_from_hu(hu, min_component_pixels=20)
    assert classes[60, 40] == SOFT_TISSUE


def test_label_maps_take_a_table_and_reject_unknown_values():
    labels = np.array([[0, 3], [7, 3]])
    table = {0: BACKGROUND, 3: LUNG, 7: BONE}
    assert tissue_masks_from_labels(labels, table).tolist() == [[0, 1], [4, 1]]
    with pytest.raises(InputError, match=r"label values \[9\] .*: add them to masks\.label_table"):
        tissue_masks_from_labels(np.array([[9]]), table)


def test_a_table_that_defers_to_hu_needs_the_scan():
    table = {0: FROM_HU, 3: LUNG}
    with pytest.raises(ValueError, match="tissue_masks_from_labels_and_hu"):
        tissue_masks_from_labels(np.array([[0, 3]]), table)


def test_labels_and_hu_take_the_table_where_it_covers_and_hu_elsewhere(torso):
    hu, truth = torso
    labels = np.zeros(hu.shape, int)
    labels[70, 48] = 7  # a covered voxel the table calls lung, whatever its HU
    labels[truth == LUNG] = 3
    classes = tissue_masks_from_labels_and_hu(labels, hu, {0: FROM_HU, 3: LUNG, 7: LUNG})
    uncovered = labels == 0
    assert (classes[uncovered] == tissue_masks_from_hu(hu)[uncovered]).all()
    assert (classes[truth == LUNG] == LUNG).all() and classes[70, 48] == LUNG


def test_labels_and_hu_equal_the_labels_for_a_table_that_covers_everything(torso):
    hu, truth = torso
    table = {tissue: tissue for tissue in range(5)}
    assert (tissue_masks_from_labels_and_hu(truth, hu, table) == truth).all()
    assert (tissue_masks_from_labels_and_hu(truth, hu, table)
            == tissue_masks_from_labels(truth, table)).all()


def test_the_phantom_label_table_is_the_built_in_organ_table():
    from sparsect.priors.labels import label_table

    table = label_table("phantom")
    assert table == ORGAN_TO_TISSUE and table is not ORGAN_TO_TISSUE  # a copy
    assert set(table) == set(ORGAN_LABELS.values())
    assert table[ORGAN_LABELS["bowel_gas"]] == LUNG  # classes follow HU: gas is air-dense


def test_user_label_tables_take_class_names_or_hu():
    from sparsect.priors.labels import label_table

    assert label_table({0: "hu", "5": "bone"}) == {0: FROM_HU, 5: BONE}
    with pytest.raises(InputError, match=r"maps 5 to 'cartilage'.*use one of .*, hu\.$"):
        label_table({5: "cartilage"})
    with pytest.raises(InputError, match=r"'totalseg' is unknown: use 'phantom', "
                                         r"'totalsegmentator', 'totalsegmentator_v1' or"):
        label_table("totalseg")


def test_one_hot_shape():
    probs = one_hot(np.array([[[0, 4]]]))
    assert probs.shape == (1, 5, 1, 2)
    assert probs[0, 4, 0, 1] == 1 and probs.sum() == 2
