"""Guards against leakage: splits, model selection and oracle inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import ROOT, TINY_TRAINING, build_tiny_inputs
from sparsect.config import load_params
from sparsect.data.datamodule import SplitPaths, load_split
from sparsect.data.store import load_array
from sparsect.models.predict import prior_classes
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train

TINY = [*TINY_TRAINING, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("leakage")
    cfg = build_tiny_inputs(root, TINY, subjects=4, slices=3, seed=11)
    simulate(cfg, root / "prepared", root / "sim", views=12, workers=1)
    return cfg, root


def test_no_subject_in_two_splits(tiny):
    _, root = tiny
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    owners: dict[str, str] = {}
    for split, subjects in manifest["splits"].items():
        index = json.loads((root / "prepared" / split / "index.json").read_text())
        assert {subject for subject, _ in index} == set(subjects)
        for subject in subjects:
            assert owners.setdefault(subject, split) == split


def test_oracle_masks_reach_only_the_oracle(tiny):
    _, root = tiny
    true_masks = np.asarray(load_array(root / "masks" / "test", "masks"))
    fbp = np.asarray(load_array(root / "sim" / "test", "fbp"))
    assert prior_classes("predicted", fbp, None) is None
    assert prior_classes("none", fbp, None) is None
    for prior in ("none", "predicted", "threshold"):  # offering them to a deployable model fails
        with pytest.raises(ValueError, match="only the oracle"):
            prior_classes(prior, fbp, true_masks)
    # the threshold prior at test time is the one simulate computed for training
    threshold = prior_classes("threshold", fbp, None)
    assert np.array_equal(threshold, load_array(root / "sim" / "test", "threshold_masks"))
    assert np.array_equal(prior_classes("oracle", fbp, true_masks), true_masks)
    # in training, too: masks are a target for every prior, an input only for the oracle
    paths = SplitPaths(root / "prepared" / "train", root / "sim" / "train",
                       root / "masks" / "train")
    assert load_split(paths, "predicted")["prior_classes"] is None
    assert load_split(paths, "none")["prior_classes"] is None
    oracle = load_split(paths, "oracle")
    assert np.array_equal(oracle["prior_classes"], oracle["masks"])


@pytest.mark.slow
def test_training_and_checkpoint_choice_never_read_the_test_split(tiny, tmp_path, monkeypatch):
    cfg, root = tiny
    blind = tmp_path / "blind"
    for stage in ("prepared", "sim", "masks"):
        shutil.copytree(root / stage, blind / stage, ignore=shutil.ignore_patterns("test"))
    assert not (blind / "prepared" / "test").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    train(load_params(ROOT / "params.yaml", TINY), blind / "prepared", blind / "sim",
          blind / "masks", blind / "models", 12)
    summary = json.loads((blind / "models" / "summary.json").read_text())
    assert set(summary) == {"unet", "sg_unet"}
    assert all(np.isfinite(info["best_val_psnr"]) for info in summary.values())
