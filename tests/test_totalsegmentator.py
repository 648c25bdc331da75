"""TotalSegmentator label tables, and label maps completed from HU where no structure is."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import ROOT
from sparsect.data.split import SPLITS
from sparsect.data.store import load_array, save_array
from sparsect.errors import InputError
from sparsect.priors.classes import (
    BACKGROUND,
    BONE,
    FAT,
    HU_BONE_MIN,
    LUNG,
    NUM_TISSUE_CLASSES,
    SOFT_TISSUE,
)
from sparsect.priors.labels import label_table
from sparsect.priors.masks import FROM_HU, tissue_masks_from_hu, tissue_masks_from_labels_and_hu
from sparsect.priors.organs import NO_LABEL
from sparsect.priors.totalsegmentator import (
    STRUCTURE_TO_TISSUE,
    STRUCTURES_V1,
    STRUCTURES_V2,
    TISSUE_TABLES,
    structure_tissue,
)
from sparsect.stages.masks import masks

REALCT_DIRS = (ROOT.parent / "shared" / "realct", ROOT / "realct")
SCAN, SEG = "abdomen_upper_ct.nii.gz", "abdomen_upper_ct_seg.nii.gz"
CLASSES_JSON = "totalsegmentator_total_v2_classes.json"


def _realct(*names: str):
    for folder in REALCT_DIRS:
        if all((folder / name).exists() for name in names):
            return folder
    pytest.skip(f"{', '.join(names)} not found in {' or '.join(map(str, REALCT_DIRS))}: "
                "the real CT files are not in this checkout")


def test_the_v2_table_is_the_published_one():
    folder = _realct(CLASSES_JSON)
    published = json.loads((folder / CLASSES_JSON).read_text())
    assert len(STRUCTURES_V2) == 117
    assert STRUCTURES_V2 == {int(value): name for value, name in published.items()}


def test_the_v1_table_has_104_structures_in_its_own_order():
    assert sorted(STRUCTURES_V1) == list(range(1, 105))
    assert len(set(STRUCTURES_V1.values())) == 104
    # v1 numbers the structures differently from v2: a v1 map read with the v2 table is wrong.
    assert STRUCTURES_V1[7] == "aorta" and STRUCTURES_V2[7] == "pancreas"
    assert STRUCTURES_V1[18] == "vertebrae_L5" and STRUCTURES_V1[43] == "trachea"
    assert STRUCTURES_V1[57] == "colon" and STRUCTURES_V1[58] == "rib_left_1"
    assert STRUCTURES_V1[93] == "face" and STRUCTURES_V1[104] == "urinary_bladder"
    assert set(STRUCTURES_V1.values()) - set(STRUCTURES_V2.values()) == {
        "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
        "heart_ventricle_right", "pulmonary_artery", "face",
    }


def test_every_structure_has_a_tissue_class():
    valid = set(range(NUM_TISSUE_CLASSES)) | {FROM_HU}
    names = set(STRUCTURES_V1.values()) | set(STRUCTURES_V2.values())
    assert set(STRUCTURE_TO_TISSUE) == names
    assert set(STRUCTURE_TO_TISSUE.values()) <= valid
    tissue = STRUCTURE_TO_TISSUE
    for name in names:
        if name.startswith("lung_"):
            assert tissue[name] == LUNG, name
        if name.startswith(("vertebrae_", "rib_")):
            assert tissue[name] == BONE, name
    assert tissue["trachea"] == LUNG
    for bone in ("sacrum", "sternum", "skull", "femur_left", "hip_right", "clavicula_left"):
        assert tissue[bone] == BONE, bone
    for soft in ("liver", "spleen", "aorta", "heart", "brain", "iliopsoas_left",
                 "costal_cartilages", "heart_myocardium"):
        assert tissue[soft] == SOFT_TISSUE, soft
    for mixed in ("colon", "stomach", "face"):
        assert tissue[mixed] == FROM_HU, mixed
    assert FAT not in tissue.values() and BACKGROUND not in tissue.values()
    with pytest.raises(KeyError, match="'livers' is not a TotalSegmentator structure"):
        structure_tissue("livers")


@pytest.mark.parametrize(("name", "structures"), [
    ("totalsegmentator", STRUCTURES_V2), ("totalsegmentator_v1", STRUCTURES_V1)])
def test_the_tables_cover_every_value_and_defer_label_0_to_hu(name, structures):
    table = label_table(name)
    assert table == TISSUE_TABLES[name] and table is not TISSUE_TABLES[name]  # a copy
    assert set(table) == {0, *structures}
    assert table[0] == FROM_HU
    assert all(table[v] == STRUCTURE_TO_TISSUE[s] for v, s in structures.items())


@pytest.fixture(scope="module")
def real_scan():
    """HU and TotalSegmentator v2 labels of the reference scan, ``(Z, X, Y)``: axial slices."""
    folder = _realct(SCAN, SEG)
    hu = np.asarray(nib.load(folder / SCAN).get_fdata(dtype=np.float32))
    labels = np.asarray(nib.load(folder / SEG).dataobj).astype(np.int64)
    return np.moveaxis(hu, -1, 0), np.moveaxis(labels, -1, 0)


def test_a_real_map_takes_its_table_where_it_covers_and_hu_elsewhere(real_scan):
    hu, labels = real_scan
    table = label_table("totalsegmentator")
    classes = np.stack([tissue_masks_from_labels_and_hu(la, h, table) for la, h in zip(
        labels, hu, strict=True)])
    from_hu = tissue_masks_from_hu(hu)
    expected = np.vectorize(table.get, otypes=[np.int64])(labels)
    covered = expected != FROM_HU
    assert covered.mean() > 0.2 and (labels[~covered] == 0).mean() > 0.9
    assert (classes[covered] == expected[covered]).all()
    assert (classes[~covered] == from_hu[~covered]).all()
    # Measured on this scan: 0.915 overall; lung 0.960, soft tissue 0.992. Bone by HU
    # masks is 0.116 (trabecular bone below +200 HU, 3 mm ribs absorbed as small
    # islands), so bone is checked on the raw HU instead: 40 % of the table's bone
    # voxels are at least +200 HU, and none of its soft tissue.
    a, b = classes[covered], from_hu[covered]
    assert (a == b).mean() > 0.88
    assert (b[a == LUNG] == LUNG).mean() > 0.93
    assert (b[a == SOFT_TISSUE] == SOFT_TISSUE).mean() > 0.97
    raw = hu[covered]
    assert (raw[a == BONE] >= HU_BONE_MIN).mean() > 0.36
    assert (raw[a == SOFT_TISSUE] >= HU_BONE_MIN).mean() < 0.01


def test_the_agreement_script_prints_the_figures():
    folder = _realct(SCAN, SEG)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "label_agreement.py"), "--scan",
         str(folder / SCAN), "--labels", str(folder / SEG), "--table", "totalsegmentator"],
        capture_output=True, text=True, check=True,
    ).stdout
    overall = float(out.split("agreement on covered voxels:")[1].split()[0])
    assert 0.88 < overall <= 1.0
    assert "soft_tissue" in out and "confusion" in out


def _v1_slice():
    """A 32 x 32 torso with v1 labels: where each structure sits and its HU."""
    hu = np.full((32, 32), -1000.0)
    labels = np.zeros((32, 32), np.int64)
    hu[2:30, 2:30] = -100.0  # fat, label 0
    hu[6:26, 6:26] = 40.0  # muscle, label 0
    regions = {  # v1 value: (rows, cols, HU)
        5: (slice(8, 14), slice(8, 14), 60.0),  # liver
        43: (slice(8, 14), slice(18, 24), -950.0),  # trachea (v2 43: vertebrae_T1)
        18: (slice(18, 24), slice(8, 14), 150.0),  # vertebrae_L5, trabecular (v2 18: bowel)
        57: (slice(18, 24), slice(18, 24), -1000.0),  # colon full of gas
    }
    for value, (rows, cols, value_hu) in regions.items():
        labels[rows, cols], hu[rows, cols] = value, value_hu
    return labels, hu


def test_a_v1_map_gets_table_classes_and_hu_classes_where_no_structure_is():
    labels, hu = _v1_slice()
    classes = tissue_masks_from_labels_and_hu(labels, hu, label_table("totalsegmentator_v1"))
    assert classes[10, 10] == SOFT_TISSUE  # liver
    assert classes[10, 20] == LUNG  # trachea
    assert classes[20, 10] == BONE  # a vertebra, though below the bone threshold
    assert classes[20, 20] == LUNG  # colon gas, by HU
    assert classes[3, 3] == FAT and classes[7, 7] == SOFT_TISSUE  # label 0, by HU
    assert classes[0, 0] == BACKGROUND
    v2 = tissue_masks_from_labels_and_hu(labels, hu, label_table("totalsegmentator"))
    assert v2[10, 20] == BONE and v2[20, 10] == SOFT_TISSUE  # the wrong table shows


def test_the_masks_stage_uses_the_v1_table_and_hu(tmp_path):
    labels, hu = _v1_slice()
    for split in SPLITS:
        (tmp_path / "prepared" / split).mkdir(parents=True)
        save_array(tmp_path / "prepared" / split, "hu", np.stack([hu, hu]).astype(np.float32))
        no_map = np.full_like(labels, NO_LABEL)
        save_array(tmp_path / "prepared" / split, "labels", np.stack([labels, no_map]))
    cfg = OmegaConf.create({"masks": {"use_labels": True, "label_table": "totalsegmentator_v1",
                                      "min_component_voxels": 20}})
    masks(cfg, tmp_path / "prepared", tmp_path / "masks")
    out = np.asarray(load_array(tmp_path / "masks" / "train", "masks"))
    assert out[0, 20, 10] == BONE and out[0, 10, 20] == LUNG and out[0, 3, 3] == FAT
    assert (out[1] == tissue_masks_from_hu(hu)).all()  # no label map: HU only
    summary = json.loads((tmp_path / "masks" / "summary.json").read_text())
    assert summary["train"]["from_labels"] == 1


@pytest.mark.parametrize(("name", "value"), [("totalsegmentator", 118),
                                             ("totalsegmentator_v1", 105)])
def test_an_unknown_label_value_fails_with_one_sentence(name, value):
    labels, hu = _v1_slice()
    labels[0, 0] = value
    with pytest.raises(InputError) as error:
        tissue_masks_from_labels_and_hu(labels, hu, label_table(name))
    message = str(error.value)
    assert f"label values [{value}]" in message and "masks.label_table" in message
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message
