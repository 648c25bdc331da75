"""Guards against leakage: splits, model selection and oracle inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAINING, build_tiny_inputs
from sparsect.config import load_params
from sparsect.data.datamodule import SplitPaths, load_split
from sparsect.data.store import load_array
from sparsect.stages.evaluate import prior_input
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train

ROOT = Path(__file__).resolve().parents[1]
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
    assert prior_input("predicted", root / "sim", true_masks) is None
    assert prior_input("none", root / "sim", true_masks) is None
    threshold = prior_input("threshold", root / "sim", true_masks)
    assert threshold is not true_masks
    assert np.array_equal(threshold, load_array(root / "sim" / "test", "threshold_masks"))
    assert prior_input("oracle", root / "sim", true_masks) is true_masks
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
