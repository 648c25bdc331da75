"""The method layer's rules: what a case hands each method, and what is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import GEOMETRY, ROOT, save_module, sinograms
from sparsect.config import load_params
from sparsect.errors import InputError
from sparsect.methods.case import Case
from sparsect.methods.classical import Classical
from sparsect.methods.learned import Learned
from sparsect.methods.loading import load_methods, write_images
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import predict
from sparsect.physics import mu_to_hu
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.reconstruct import reconstruct_stack


@pytest.fixture(scope="module")
def case() -> Case:
    """Three slices on the acquisition of the helpers' tiny models, with full-dose classes."""
    measured = sinograms(3)
    acquisition = Acquisition.from_record(
        GEOMETRY.to_dict(), {"i0": 1e5},
        {"upsample": 2, "filter": "ram-lak", "hu_clip": [-1024.0, 3071.0]}, device="cpu")
    return Case(acquisition.fbp(measured), measured, acquisition,
                full_dose_classes=np.full((3, 32, 32), 3, np.uint8))


def test_the_case_fbp_is_fbp_without_settings_and_a_tuned_fbp_is_recomputed(case):
    assert np.array_equal(Classical("fbp").apply(case)["fbp"].images, case.fbp)
    hann = Classical("fbp", {"filter": "hann"}).apply(case)["fbp"].images
    expected = mu_to_hu(reconstruct_stack("fbp", GEOMETRY, case.sinograms, device="cpu",
                                          filter="hann"))
    assert np.array_equal(hann, expected) and not np.array_equal(hann, case.fbp)


def test_a_classical_method_reads_the_picked_sinograms_with_its_settings(case):
    picked = Case(case.fbp, case.sinograms, case.acquisition, slices=np.array([2, 0]))
    tv = Classical("tv", {"weight": 0.03, "iterations": 5}).apply(picked)["tv"].images
    expected = mu_to_hu(reconstruct_stack("tv", GEOMETRY, case.sinograms[[2, 0]],
                                          device="cpu", weight=0.03, iterations=5))
    assert np.array_equal(tv, expected)
    with pytest.raises(InputError, match="reconstructs the sinogram: give the sinograms"):
        Classical("sirt", {"iterations": 5}).apply(Case(case.fbp, None, case.acquisition))
    with pytest.raises(InputError, match="Method 'art' is unknown"):
        Classical("art")
    with pytest.raises(InputError, match=r"Unknown option\(s\) \['weight'\]"):
        Classical("sirt", {"weight": 1.0})


def test_only_an_oracle_is_handed_the_full_dose_classes(tmp_path, case):
    deployable = load_module(save_module(tmp_path / "sg.ckpt", "predicted", 1, True))
    # the case holds full-dose classes; predict refuses them to any other model, so the
    # layer must not pass them on
    images = Learned("sg_unet", deployable).reconstruct(case)
    assert np.array_equal(images, predict(deployable, case.fbp).images)
    oracle = load_module(save_module(tmp_path / "o.ckpt", "oracle", 1, False))
    method = Learned("sg_oracle", oracle)
    assert method.reads_full_dose and method.label == {"prior": "oracle", "upper_bound": True}
    assert np.array_equal(method.reconstruct(case),
                          predict(oracle, case.fbp, full_dose_classes=case.full_dose_classes)
                          .images)
    with pytest.raises(InputError, match="Oracle models read full-dose masks"):
        method.reconstruct(Case(case.fbp, case.sinograms, case.acquisition))


def test_the_dc_form_needs_a_recorded_step(tmp_path, case):
    plain = load_module(save_module(tmp_path / "m.ckpt", "predicted", 1, True))
    with pytest.raises(InputError, match="records no data-consistency step"):
        Learned("unet", plain, data_consistency=True)
    assert list(Learned("unet", plain).apply(case)) == ["unet"]


def test_baselines_of_another_view_count_are_refused(tmp_path):
    cfg = load_params(ROOT / "params.yaml")
    (tmp_path / "settings.json").write_text(json.dumps({
        "methods": {"tv": {"weight": 0.03, "iterations": 10}},
        "geometry": GEOMETRY.with_views(30).to_dict()}))
    with pytest.raises(InputError, match="holds the baselines of 30 views, not 60"):
        load_methods(cfg, 60, baselines_dir=tmp_path)
    methods = load_methods(cfg, 30, baselines_dir=tmp_path, classical=["sirt", "tv"])
    assert [(m.name, m.options) for m in methods] == [
        ("fbp", None), ("tv", {"weight": 0.03, "iterations": 10})]


def test_write_images_replaces_the_folder(tmp_path):
    write_images(tmp_path / "images", {"fbp": np.zeros((2, 4, 4)), "unet+dc": np.ones((2, 4, 4))})
    write_images(tmp_path / "images", {"tv": np.ones((1, 4, 4))})
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["tv.npy"]
    assert np.load(tmp_path / "images" / "tv.npy").dtype == np.float32
