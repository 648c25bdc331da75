"""Stage functions on a tiny built-in data set (real TorchIO, ASTRA, no mocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ROOT, build_tiny_inputs
from sparsect.config import load_params
from sparsect.data.store import load_array
from sparsect.errors import InputError
from sparsect.priors.masks import tissue_masks_from_hu
from sparsect.stages.baselines import baselines
from sparsect.stages.prepare import prepare
from sparsect.stages.simulate import merge_shards, simulate

TINY = ["data.image_size=48", "data.pixel_size_mm=8.0", "noise.i0=1e5"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    cfg = build_tiny_inputs(root, TINY, subjects=5, slices=3, seed=7)
    return cfg, root


def test_prepare_splits_by_subject_and_standardises(tiny):
    cfg, root = tiny
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    seen = {}
    for split in ("train", "val", "test"):
        hu = load_array(root / "prepared" / split, "hu")
        index = json.loads((root / "prepared" / split / "index.json").read_text())
        assert hu.shape[1:] == (48, 48) and hu.dtype == np.float32
        assert len(index) == len(hu) == 3 * len(manifest["splits"][split])
        for subject, _ in index:
            assert seen.setdefault(subject, split) == split  # never in two splits
        assert hu.min() >= -1024 and hu.max() <= 3071
    assert len(seen) == 5


def test_masks_from_labels_agree_with_hu_thresholds(tiny):
    cfg, root = tiny
    hu = np.asarray(load_array(root / "prepared" / "train", "hu"))
    from_labels = np.asarray(load_array(root / "masks" / "train", "masks"))
    summary = json.loads((root / "masks" / "summary.json").read_text())
    assert summary["train"]["from_labels"] == len(hu)  # label maps take precedence
    assert (tissue_masks_from_hu(hu) == from_labels).mean() > 0.85


def test_simulate_is_deterministic_and_independent_of_workers(tiny):
    cfg, root = tiny
    simulate(cfg, root / "prepared", root / "sim_a", views=20, workers=1)
    simulate(cfg, root / "prepared", root / "sim_b", views=20, workers=2)
    for name in ("sinogram", "fbp"):
        a = load_array(root / "sim_a" / "test", name)
        b = load_array(root / "sim_b" / "test", name)
        assert np.array_equal(a, b), name
    sinogram = load_array(root / "sim_a" / "train", "sinogram")
    assert sinogram.shape[1] == 20
    geometry = json.loads((root / "sim_a" / "geometry.json").read_text())
    assert geometry["geometry"]["views"] == 20 and geometry["noise"]["i0"] == 1e5


def test_simulated_fbp_improves_with_views(tiny):
    cfg, root = tiny
    reference = np.asarray(load_array(root / "prepared" / "test", "hu"))
    errors = {}
    for views in (10, 60):
        simulate(cfg, root / "prepared", root / f"sim_{views}", views=views, workers=1)
        fbp = np.asarray(load_array(root / f"sim_{views}" / "test", "fbp"))
        errors[views] = np.sqrt(np.mean((fbp - reference) ** 2))
    assert errors[60] < 0.8 * errors[10]


def test_prepare_on_an_empty_folder_is_explained_and_writes_nothing(tmp_path):
    cfg = load_params(ROOT / "params.yaml")
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="holds no CT scan"):
        prepare(cfg, tmp_path / "data", tmp_path / "prepared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_shards_merge_into_the_unsharded_output(tiny):
    cfg, root = tiny
    simulate(cfg, root / "prepared", root / "sim_full", views=16, workers=1)
    shards = [simulate(cfg, root / "prepared", root / f"sim_shard{k}", views=16, workers=1,
                       shard=f"{k}/2") for k in (1, 2)]
    merge_shards(shards, root / "sim_merged")
    for split in ("train", "val", "test"):
        for name in ("sinogram", "fbp", "threshold_masks"):
            assert np.array_equal(load_array(root / "sim_full" / split, name),
                                  load_array(root / "sim_merged" / split, name)), (split, name)
    with pytest.raises(InputError, match="do not cover every"):
        merge_shards(shards[:1], root / "sim_partial")
    with pytest.raises(InputError, match="k/N"):
        simulate(cfg, root / "prepared", root / "sim_bad", views=16, shard="3/2")


def test_iterative_baselines_beat_fbp_at_sparse_views(tiny):
    cfg, root = tiny
    cfg = load_params(ROOT / "params.yaml", [*TINY, "baselines.sirt.iterations=50",
                                              "baselines.tv.iterations=100"])
    simulate(cfg, root / "prepared", root / "sim_bl", views=12, workers=2)
    baselines(cfg, root / "sim_bl", root / "baselines", workers=2)
    reference = np.asarray(load_array(root / "prepared" / "test", "hu"))
    rmse = {name: float(np.sqrt(np.mean((np.asarray(image) - reference) ** 2)))
            for name, image in [("fbp", load_array(root / "sim_bl" / "test", "fbp")),
                                ("sirt", load_array(root / "baselines", "sirt")),
                                ("tv", load_array(root / "baselines", "tv"))]}
    assert rmse["tv"] < rmse["fbp"], rmse
    assert rmse["sirt"] < rmse["fbp"], rmse


def test_phantom_settings_reach_the_generator_and_unknown_ones_are_named():
    from omegaconf import OmegaConf

    from sparsect.stages.make_data import phantom_config

    cfg = load_params(ROOT / "params.yaml", ["data.phantom.table_probability=0.25"])
    config = phantom_config(cfg.data.phantom)
    assert config.table_probability == 0.25
    assert config.shape == tuple(cfg.data.phantom.shape)  # lists become the tuples it wants
    with pytest.raises(InputError, match=r"data\.phantom\.arms is not a phantom setting"):
        phantom_config(OmegaConf.create({"subjects": 2, "seed": 0, "arms": 1}))
