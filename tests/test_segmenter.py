"""The downstream organ segmenter: organ classes, Dice/HD95 and its training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sparsect.errors import InputError
from sparsect.evaluation.segmentation import hd95_mm, mean_organ_dice, organ_scores
from sparsect.models.segmenter import fit, load_segmenter, save_segmenter, segment
from sparsect.priors.organs import (
    DOWNSTREAM_ORGANS,
    NO_LABEL,
    ORGAN_LABELS,
    segmenter_class_names,
    segmenter_classes,
)

LUNG, LIVER = 2, 3  # segmenter classes of the first two organs


def _cubes(side: int, offset: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) volumes (slices, rows, cols) with a cube of the lung class each, the
    predicted one shifted by ``offset`` voxels along ``axis``."""
    true = np.zeros((24, 24, 24), dtype=np.uint8)
    true[4:4 + side, 4:4 + side, 4:4 + side] = LUNG
    return np.roll(true, offset, axis=axis), true


# ---------------------------------------------------------------- organ classes


def test_every_phantom_label_has_a_segmenter_class():
    labels = np.array(sorted(ORGAN_LABELS.values()), dtype=np.int16)
    classes = segmenter_classes(labels)
    names = segmenter_class_names()
    assert classes.dtype == np.int8
    assert set(classes.tolist()) == set(range(len(names)))
    by_name = dict(zip(ORGAN_LABELS, classes.tolist(), strict=True))
    assert by_name["background"] == by_name["table"] == 0
    assert by_name["muscle"] == by_name["fat"] == by_name["lesion"] == by_name["spinal_canal"] == 1
    for index, (organ, members) in enumerate(DOWNSTREAM_ORGANS.items(), start=2):
        assert names[index] == organ
        assert segmenter_classes(np.array(members)).tolist() == [index] * len(members)


def test_no_label_is_kept_and_a_foreign_label_is_refused():
    labels = np.array([[NO_LABEL, 15], [NO_LABEL, 0]], dtype=np.int16)
    assert segmenter_classes(labels).tolist() == [[NO_LABEL, 3], [NO_LABEL, 0]]
    with pytest.raises(ValueError, match="117"):
        segmenter_classes(np.array([117]))


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("offset", [1, 3])
def test_offset_cubes_have_the_analytic_dice_and_hd95(axis, offset):
    spacing = (0.7, 1.3, 5.0)  # (row, col, slice) mm; the volume is (slice, row, col)
    per_axis = (spacing[2], spacing[0], spacing[1])
    pred, true = _cubes(10, offset, axis)
    scores = organ_scores(pred, true, ["s"] * len(true), spacing)
    assert scores["lung"]["dice"]["s"] == pytest.approx((10 - offset) / 10)
    assert scores["lung"]["hd95_mm"]["s"] == pytest.approx(offset * per_axis[axis])
    assert scores["lung"]["one_sided"] == 0


def test_hd95_ignores_a_few_far_voxels_and_is_symmetric():
    pred, true = _cubes(10, 0, 0)
    pred[20, 20, 20] = LUNG  # one stray voxel far from the cube
    sampling = (2.0, 1.0, 1.0)
    assert hd95_mm(pred == LUNG, true == LUNG, sampling) == 0.0
    shifted, _ = _cubes(10, 2, 1)
    assert hd95_mm(shifted == LUNG, true == LUNG, sampling) == \
        hd95_mm(true == LUNG, shifted == LUNG, sampling) == 2.0


def test_absent_organs_give_nan_or_zero_and_are_counted():
    pred, true = _cubes(6, 0, 0)
    pred[pred == LUNG] = LIVER  # lung missed entirely, liver hallucinated
    scores = organ_scores(pred, true, ["s"] * len(true), (1.0, 1.0, 1.0))
    for organ in ("lung", "liver"):
        assert scores[organ]["dice"]["s"] == 0.0
        assert math.isnan(scores[organ]["hd95_mm"]["s"])
        assert scores[organ]["one_sided"] == 1
    assert math.isnan(scores["spleen"]["dice"]["s"])
    assert math.isnan(scores["spleen"]["hd95_mm"]["s"])
    assert scores["spleen"]["one_sided"] == 0
    assert mean_organ_dice(scores) == {"s": 0.0}


def test_subjects_are_scored_apart_and_unlabelled_ones_left_out():
    pred, true = _cubes(10, 2, 0)
    pred, true = np.concatenate([pred, pred, pred]), np.concatenate([true, true, true])
    true = true.astype(np.int8)
    true[48:] = NO_LABEL
    subjects = ["a"] * 24 + ["b"] * 24 + ["c"] * 24
    spacing = {"a": (1.0, 1.0, 1.0), "b": (1.0, 1.0, 3.0), "c": (1.0, 1.0, 1.0)}
    scores = organ_scores(pred, true, subjects, spacing, organs=["lung"])
    assert list(scores) == ["lung"]
    assert scores["lung"]["hd95_mm"] == {"a": 2.0, "b": 6.0}
    assert mean_organ_dice(scores) == pytest.approx({"a": 0.8, "b": 0.8})
    with pytest.raises(ValueError, match="contiguous"):
        organ_scores(pred, true, ["a"] * 24 + ["b"] * 24 + ["a"] * 24, spacing)


# ---------------------------------------------------------------- model


def synthetic_slices(count: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """HU slices and phantom labels: a soft-tissue body on air holding a lung (-850 HU),
    a liver (+60 HU) and a vertebra (+400 HU) at random places, and a table below."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    hu = np.full((count, size, size), -1000.0, dtype=np.float32)
    labels = np.zeros((count, size, size), dtype=np.int16)
    for i in range(count):
        body = ((rows - 15) / 12.0) ** 2 + ((cols - 16) / 14.0) ** 2 < 1
        hu[i][body], labels[i][body] = 20.0, ORGAN_LABELS["muscle"]
        hu[i][29:31, 2:30], labels[i][29:31, 2:30] = -300.0, ORGAN_LABELS["table"]
        r, c = rng.integers(9, 13), rng.integers(7, 11)
        lung = (rows - r) ** 2 + (cols - c) ** 2 < 12
        hu[i][lung], labels[i][lung] = -850.0, ORGAN_LABELS["lung"]
        r, c = rng.integers(10, 15), rng.integers(18, 23)
        hu[i][r:r + 6, c:c + 5], labels[i][r:r + 6, c:c + 5] = 60.0, ORGAN_LABELS["liver"]
        hu[i][21:24, 14:18], labels[i][21:24, 14:18] = 400.0, ORGAN_LABELS["spine"]
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    return hu, labels


def _organ_dice(pred: np.ndarray, true: np.ndarray) -> float:
    scores = organ_scores(pred, true, ["s"] * len(true), (1.0, 1.0, 1.0))
    return mean_organ_dice(scores)["s"]


def test_fit_learns_the_organs_and_segment_reloads_it(tmp_path):
    torch.set_num_threads(1)
    train_hu, train_labels = synthetic_slices(16, seed=0)
    val_hu, val_labels = synthetic_slices(8, seed=1)
    train_classes, val_classes = segmenter_classes(train_labels), segmenter_classes(val_labels)
    module, summary = fit(train_hu, train_classes, val_hu, val_classes, tmp_path / "work",
                          epochs=20, batch_size=2, lr=1e-2, channels=8, depth=3, crop=None,
                          seed=0)
    losses = [row["train_loss"] for row in summary["history"]]
    assert len(losses) == summary["epochs"] == 20
    assert losses[-1] < 0.7 * losses[0]
    classes = segment(module, val_hu)
    assert classes.shape == val_hu.shape and classes.dtype == np.uint8
    # beats the trivial segmentation that calls every pixel of the body "body"
    trivial = np.where(val_classes == 0, 0, 1).astype(np.uint8)
    assert _organ_dice(classes, val_classes) > _organ_dice(trivial, val_classes) + 0.3
    checkpoint = tmp_path / "segmenter.ckpt"
    checkpoint.write_bytes(save_segmenter(module))
    assert np.array_equal(segment(checkpoint, val_hu, batch_size=3), classes)
    assert np.array_equal(segment(str(checkpoint), val_hu[:, :30, :28])[:, :4, :4],
                          segment(module, val_hu[:, :30, :28])[:, :4, :4])
    assert save_segmenter(load_segmenter(checkpoint)) == checkpoint.read_bytes()


def test_segment_refuses_a_missing_or_corrupt_checkpoint(tmp_path):
    images = np.zeros((1, 16, 16), dtype=np.float32)
    fix = "run `sparsect segmenter`"
    with pytest.raises(InputError, match=rf"'.*absent\.ckpt' does not exist: {fix}"):
        segment(tmp_path / "absent.ckpt", images)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=rf"'.*corrupt\.ckpt' cannot be loaded .*: {fix}"):
        segment(corrupt, images)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, other)
    with pytest.raises(InputError, match="is not a segmenter checkpoint"):
        segment(other, images)


@pytest.mark.slow
def test_segmenter_command_writes_a_checkpoint_and_summary(tmp_path):
    from omegaconf import OmegaConf

    from sparsect.cli import main

    prepared = tmp_path / "prepared"
    manifest = {"pixel_size_mm": 12.0, "image_size": 32, "subjects": {}}
    for split, subjects, seed in (("train", 4, 0), ("val", 2, 1)):
        folder = prepared / split
        folder.mkdir(parents=True)
        hu, labels = synthetic_slices(4 * subjects, seed=seed)
        if split == "train":
            labels[-4:] = NO_LABEL  # a scan without a label map: left out
        np.save(folder / "hu.npy", hu)
        np.save(folder / "labels.npy", labels)
        index = [[f"{split}_{i // 4}", i % 4] for i in range(len(hu))]
        (folder / "index.json").write_text(json.dumps(index))
        for subject, _ in index:
            manifest["subjects"][subject] = {"z_spacing_mm": 5.0, "split": split}
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    params = tmp_path / "params.yaml"
    params.write_text(OmegaConf.to_yaml({"segmenter": {
        "epochs": 25, "batch_size": 2, "lr": 0.01, "channels": 8, "depth": 3, "crop": 16,
        "seed": 0, "accelerator": "cpu"}}))
    out = tmp_path / "segmenter"
    assert main(["segmenter", "--prepared", str(prepared), "--out", str(out),
                 "--params", str(params)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["segmenter.ckpt", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_slices"] == 12 and summary["val_slices"] == 8
    assert summary["epochs"] == 25 and set(summary["val_dice"]) == set(DOWNSTREAM_ORGANS)
    assert summary["val_dice"]["lung"] > 0.5
    assert summary["val_dice"]["spleen"] is None  # in no validation slice
    val_hu = np.load(prepared / "val" / "hu.npy")
    assert segment(out / "segmenter.ckpt", val_hu).shape == val_hu.shape
