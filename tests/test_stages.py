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


GRID = ["tuning.max_slices=null", "tuning.grid.fbp.filter=[ram-lak,hann]",
        "tuning.grid.sirt.iterations=[5,20]", "tuning.grid.tv.weight=[0.003,0.1]",
        "tuning.grid.tv.iterations=[10,30]"]


def test_baselines_are_tuned_on_validation_and_run_on_test_with_the_choice(tiny):
    from sparsect.physics import Geometry, mu_to_hu
    from sparsect.physics.reconstruct import reconstruct_stack

    cfg, root = tiny
    cfg = load_params(ROOT / "params.yaml", [*TINY, *GRID, "baselines.tv.weight=0.1"])
    simulate(cfg, root / "prepared", root / "sim_tune", views=12, workers=2)
    baselines(cfg, root / "sim_tune", root / "tuned", root / "prepared", workers=1)
    settings = json.loads((root / "tuned" / "settings.json").read_text())
    tuning = settings["tuning"]
    assert tuning["split"] == "val" and tuning["slices"] == 3
    expected = {"fbp": 2, "sirt": 2 + 1, "tv": 4 + 1}  # the untuned sirt, tv are added
    for method, result in tuning["methods"].items():
        assert len(result["trials"]) == expected[method]
        best = max(result["trials"], key=lambda trial: trial["psnr"])
        assert settings["methods"][method] == result["chosen"] == best["options"]
        assert result["psnr"] == best["psnr"] >= result["default_psnr"]
    assert settings["defaults"]["tv"] == {"iterations": 100, "weight": 0.1}
    # the test images are the chosen settings' reconstructions of the test sinograms
    geometry = Geometry.from_dict(settings["geometry"])
    sinograms = np.asarray(load_array(root / "sim_tune" / "test", "sinogram"))
    for method, options in settings["methods"].items():
        expected_hu = mu_to_hu(reconstruct_stack(method, geometry, sinograms, device="cpu",
                                                 **options))
        np.testing.assert_allclose(load_array(root / "tuned", method), expected_hu, atol=1e-2)
    # the choice never looks at the test split: other test data, same choice
    np.save(root / "sim_tune" / "test" / "sinogram.npy", sinograms[::-1] * 0.5)
    baselines(cfg, root / "sim_tune", root / "tuned_again", root / "prepared", workers=1)
    again = json.loads((root / "tuned_again" / "settings.json").read_text())
    assert again["tuning"] == tuning


def test_a_bad_baseline_override_is_named():
    with pytest.raises(InputError, match=r"'tuning\.grid\.tv\.weight' holds a list"):
        load_params(ROOT / "params.yaml", ["tuning.grid.tv.weight=0.03"])


@pytest.mark.parametrize(("patch", "message"), [
    ({"tuning": {"grid": {"tv": {"weight": []}}}},
     r"tuning\.grid\.tv\.weight must be a non-empty list of values"),
    ({"tuning": {"grid": {"sart": {"iterations": [1, 2]}}}},
     r"tuning\.grid\.sart tunes a method that baselines does not run"),
    ({"tuning": {"grid": {"tv": {"step": [1.0]}}}},
     r"tuning\.grid\.tv: Unknown option\(s\) \['step'\] for method 'tv'"),
    ({"baselines": {"tv": {"step": 1.0}}},
     r"baselines\.tv: Unknown option\(s\) \['step'\] for method 'tv'"),
    ({"baselines": {"art": {}}}, r"baselines\.art: Unknown reconstruction method 'art'"),
])
def test_a_bad_baseline_setting_is_named(patch, message):
    # settings the override syntax cannot express (a params.yaml edited by hand)
    from omegaconf import OmegaConf

    from sparsect.stages.baselines import baseline_settings

    cfg = OmegaConf.merge(load_params(ROOT / "params.yaml"), patch)
    with pytest.raises(InputError, match=message):
        baseline_settings(cfg)


def test_phantom_settings_reach_the_generator_and_unknown_ones_are_named():
    from omegaconf import OmegaConf

    from sparsect.stages.make_data import phantom_config

    cfg = load_params(ROOT / "params.yaml", ["data.phantom.table_probability=0.25"])
    config = phantom_config(cfg.data.phantom)
    assert config.table_probability == 0.25
    assert config.shape == tuple(cfg.data.phantom.shape)  # lists become the tuples it wants
    with pytest.raises(InputError, match=r"data\.phantom\.arms is not a phantom setting"):
        phantom_config(OmegaConf.create({"subjects": 2, "seed": 0, "arms": 1}))
