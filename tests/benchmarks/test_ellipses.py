"""dival's ellipses benchmark: phantoms, simulation, FBP, metrics, selection, config.

Each name is taken from the module that defines it: ``S`` the settings, ``D`` the data
and physics, ``R`` the report, ``E`` the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsect.benchmarks import ellipses as E
from sparsect.benchmarks import ellipses_data as D
from sparsect.benchmarks import ellipses_report as R
from sparsect.benchmarks import ellipses_settings as S
from sparsect.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


def tiny(**overrides) -> dict:
    """A small valid ``ellipses`` section (classical methods only unless overridden)."""
    section = {
        "samples": {"train": 0, "validation": 4, "test": 3},
        "methods": ["fbp", "tv"],
        "fbp": {"filter": ["hann", "ram-lak"], "frequency_scaling": [0.5, 1.0]},
        "tv": {"weight": [0.5, 4.0], "iterations": [5, 10], "nonnegative": False},
    }
    section.update(overrides)
    return {"ellipses": section}


# --------------------------------------------------------------------------- phantoms


def test_phantoms_are_deterministic_per_sample_and_in_unit_range():
    first = D.phantoms(1, 3)
    assert first.dtype == np.float32 and first.shape == (3, 128, 128)
    np.testing.assert_array_equal(first, D.phantoms(1, 3))
    # image i depends on (seed, i) only, not on how many are made
    np.testing.assert_array_equal(first[:2], D.phantoms(1, 2))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first, D.phantoms(2, 3))
    for image in first:
        assert image.min() == 0.0 and image.max() == 1.0
        assert (image == 0).any()  # the background stays 0, as in dival >= 0.4
    generated = D.phantoms(7, 3, sampler="generator")
    np.testing.assert_array_equal(generated[2], D.phantoms(7, 3, sampler="generator")[2])
    assert generated.min() == 0.0 and generated.max() == 1.0


def test_first_test_images_are_divals():
    """dival's first two test images (EllipsesDataset(fixed_seeds=True), odl's
    ellipsoid_phantom), summarised when they were made with odl 1.0.0."""
    images = D.phantoms(S.DIVAL_PHANTOM_SEEDS["test"], 2)
    assert float(images[0].sum(dtype=np.float64)) == pytest.approx(2806.3219062387943, abs=1e-9)
    assert int((images[0] != 0).sum()) == 8749
    assert float(images[1].sum(dtype=np.float64)) == pytest.approx(4059.9303244501352, abs=1e-9)
    assert int((images[1] != 0).sum()) == 10116


def test_ellipse_draws_follow_divals_distribution():
    rng = np.random.RandomState(0)
    draws = np.stack([D.draw_ellipses(rng) for _ in range(400)])  # (400, 70, 6)
    assert draws.shape[1:] == (D.MAX_ELLIPSES, 6)
    value, axis_1, axis_2, x, y, rotation = np.moveaxis(draws, -1, 0)
    kept = value != 0
    counts = kept.sum(axis=1)
    # min(Poisson(40), 70) kept candidates, the kept ones first
    assert abs(counts.mean() - 40) < 1.0 and counts.max() <= 70
    assert all(not kept[i, c:].any() for i, c in enumerate(counts))
    assert value[kept].min() >= -0.4 and value[kept].max() < 1.0
    assert abs(value[kept].mean() - 0.3) < 0.02  # U(-0.4, 1)
    for axis in (axis_1, axis_2):
        assert axis.min() > 0 and abs(axis.mean() - 0.2) < 0.01  # 0.2 * Exp(1)
    for centre in (x, y):
        assert centre.min() >= -0.9 and centre.max() < 0.9
    assert rotation.min() >= 0 and rotation.max() < 2 * math.pi


def test_rasterise_uses_odls_pixel_convention():
    # odl's ellipsoid_phantom docstring example: two concentric circles on a 5 x 5 grid
    circles = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.6, 0.6, 0.0, 0.0, 0.0]])
    expected = [[0, 0, 1, 0, 0], [0, 1, 2, 1, 0], [1, 2, 2, 2, 1], [0, 1, 2, 1, 0], [0, 0, 1, 0, 0]]
    np.testing.assert_array_equal(D.rasterise(circles, 5), np.array(expected, np.float32))
    # a quarter turn swaps the axes: axis 0 is x
    bar = np.array([[1.0, 0.8, 0.2, 0.1, -0.3, 0.0]])
    turned = bar.copy()
    turned[0, 3:] = [-0.3, 0.1, math.pi / 2]
    np.testing.assert_array_equal(D.rasterise(turned, 64), D.rasterise(bar, 64).T)


# --------------------------------------------------------------------------- physics


def test_detector_and_geometry_are_odls():
    # odl 1.0.0: parallel_beam_geometry(uniform_discr([-64, -64], [64, 64], (128, 128)),
    # num_angles=30) has 183 bins of 0.9891767 mm
    bins, pitch = D.detector(128)
    assert bins == 183 and pitch == pytest.approx(0.9891767, abs=1e-7)
    s = S.settings(tiny())
    reco, sim = D.reco_geometry(s), D.sim_geometry(s)
    assert reco.sinogram_shape == sim.sinogram_shape == (30, 183)
    assert sim.image_size * sim.pixel_size_mm == pytest.approx(128.0)


def test_noise_is_five_percent_of_the_mean_absolute_observation():
    s = S.settings(tiny(noise=0.05))
    split = D.make_split("test", s)
    clean = D.project(D.upscale(split.images, s.sim_size), D.sim_geometry(s))
    for noisy, y in zip(split.sinograms, clean, strict=True):
        ratio = float(np.std(noisy - y)) / float(np.mean(np.abs(y)))
        assert ratio == pytest.approx(0.05, rel=0.04)  # 5490 draws: ~1 % error
    # relative: scaling the data scales the noise
    scaled = D.add_noise(10 * clean, 0.05, seed=3)
    assert float(np.std(scaled[0] - 10 * clean[0])) == pytest.approx(
        10 * float(np.std(split.sinograms[0] - clean[0])), rel=1e-4
    )


def test_upscaled_line_integrals_match_the_reconstruction_grid():
    """The 400 x 400 simulation and the 128 x 128 operator see the same line integrals
    (up to discretisation), in mm: no normalisation by the operator norm."""
    s = S.settings(tiny())
    images = D.phantoms(1, 2)
    fine = D.project(D.upscale(images, s.sim_size), D.sim_geometry(s))
    coarse = D.project(images, D.reco_geometry(s))
    assert float(np.abs(fine - coarse).mean() / np.abs(coarse).mean()) < 0.02


def test_fbp_is_astras_with_ram_lak_and_keeps_grey_levels():
    from sparsect.physics import Projector

    s = S.settings(tiny(noise=0.05))
    geometry = D.reco_geometry(s)
    sinograms = D.make_split("test", s, count=2).sinograms
    ours = D.fbp(sinograms, geometry, "ram-lak", 1.0)
    with Projector(geometry, device="cpu") as projector:
        theirs = np.stack([projector.fbp(y) for y in sinograms])
    assert float(np.abs(ours - theirs).max() / np.abs(theirs).max()) < 1e-4
    # a uniform disc of 1 reconstructs to 1 inside (Hann lowers only the edges)
    u = np.arange(128) - 63.5
    disc = ((u[:, None] ** 2 + u[None, :] ** 2) <= 30**2).astype(np.float32)[None]
    recon = D.fbp(D.project(disc, geometry), geometry, "hann", 0.7)
    assert float(recon[0, 49:79, 49:79].mean()) == pytest.approx(1.0, abs=0.01)


def test_fbp_windows_are_odls():
    f = np.linspace(0, 1, 11)
    np.testing.assert_allclose(D.window("hann", f, 1.0), np.cos(np.pi * f / 2) ** 2)
    cut = D.window("hann", f, 0.5)
    assert cut[f > 0.5].sum() == 0 and cut[0] == 1.0
    assert D.window("hann", np.array([0.25]), 0.5)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        D.window("gauss", f, 1.0)


# --------------------------------------------------------------------------- metrics


def test_psnr_uses_each_ground_truths_own_data_range():
    truth = np.array([[[0.0, 1.0], [0.5, 0.5]]])
    recon = np.full((1, 2, 2), 0.5)
    # MSE 0.125, range 1: -10 log10(0.125)
    assert D.psnr(recon, truth)[0] == pytest.approx(10 * math.log10(8))
    # a second image with range 4 and the same relative error has the same PSNR
    both = D.psnr(np.concatenate([recon, 4 * recon]), np.concatenate([truth, 4 * truth]))
    assert both[1] == pytest.approx(both[0])
    # an offset truth (range still 1) keeps the range, not the peak value
    assert D.psnr(recon + 3, truth + 3)[0] == pytest.approx(both[0])


def test_summary_holds_mean_and_bootstrap_interval():
    values = np.arange(100.0)
    result = R.summary(values, resamples=500)
    assert result["mean"] == 49.5 and result["n"] == 100
    assert result["ci95"][0] < 49.5 < result["ci95"][1]


# --------------------------------------------------------------------------- selection


def test_fbp_and_tv_are_chosen_on_validation_only():
    """A noiseless test split prefers other settings than the noisy validation split; the
    choice must still be the validation one."""
    s = S.settings(tiny(noise=0.05))
    validation = D.make_split("validation", s)
    noisy_test = D.make_split("test", s)
    clean_test = D.make_split("test", replace(s, noise=0.0))
    geometry = D.reco_geometry(s)
    # the test is able to fail: on the clean test split another FBP setting wins
    assert (
        E.choose_fbp(clean_test, geometry, s.fbp_grid)["chosen"]
        != E.choose_fbp(validation, geometry, s.fbp_grid)["chosen"]
    )
    quiet = lambda message: None  # noqa: E731
    a = E.classical(s, validation, noisy_test, log=quiet)
    b = E.classical(s, validation, clean_test, log=quiet)
    for method in ("fbp", "tv"):
        assert a[method]["settings"] == b[method]["settings"]
        assert a[method]["tuning"] == b[method]["tuning"]
    assert a["fbp"]["psnr"]["mean"] != b["fbp"]["psnr"]["mean"]
    assert a["fbp"]["settings"] == E.choose_fbp(validation, geometry, s.fbp_grid)["chosen"]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"samples": {"train": 0, "validation": 4, "test": 0}}, "samples"),
        ({"samples": {"train": 0, "validation": 4}}, "samples"),
        ({"noise": -0.1}, "noise"),
        ({"sampler": "odl"}, "sampler"),
        ({"fbp": {"filter": ["gauss"], "frequency_scaling": [1.0]}}, "fbp.filter"),
        ({"fbp": {"filter": ["hann"], "frequency_scaling": [1.5]}}, "fbp.frequency_scaling"),
        ({"tv": {"weight": [], "iterations": [10]}}, "tv.weight"),
        ({"tv": {"weight": [1.0], "iterations": [0]}}, "tv.iterations"),
        ({"methods": ["fbp", "dip"]}, "methods"),
        ({"views": "thirty"}, "views"),
        ({"colour": "blue"}, "colour"),
        ({"methods": ["unet"]}, "samples.train"),
        (
            {
                "methods": ["unet"],
                "samples": {"train": 4, "validation": 2, "test": 2},
                "unet": {
                    "epochs": 0,
                    "batch_size": 2,
                    "lr": 1e-3,
                    "net": {"_target_": "sparsect.models.unet.UNet"},
                },
            },
            "unet.epochs",
        ),
        (
            {
                "methods": ["lpd"],
                "samples": {"train": 4, "validation": 2, "test": 2},
                "lpd": {
                    "epochs": 1,
                    "batch_size": 2,
                    "lr": 1e-3,
                    "train_samples": 9,
                    "net": {"_target_": "sparsect.models.lpd.LearnedPrimalDual"},
                },
            },
            "lpd.train_samples",
        ),
    ],
)
def test_bad_config_names_the_key(change, key):
    with pytest.raises(InputError, match=rf"ellipses\.{key}\b"):
        S.settings(tiny(**change))


def test_omegaconf_sections_are_read_like_plain_ones():
    from omegaconf import OmegaConf

    assert S.settings(OmegaConf.create(tiny())) == S.settings(tiny())


def test_missing_section_is_an_input_error():
    with pytest.raises(InputError, match="experiment=ellipses"):
        S.settings({"seed": 0})


def test_experiment_config_is_valid():
    from sparsect.config import compose

    s = S.settings(compose(ROOT / "conf", ["experiment=ellipses"]))
    assert s.methods == ("fbp", "tv", "unet", "lpd")
    assert s.phantom_seeds == S.DIVAL_PHANTOM_SEEDS and s.noise_seeds == S.DIVAL_NOISE_SEEDS
    assert s.samples["test"] >= 100 and s.views == 30 and s.sim_size == 400
    assert s.lpd.net["_target_"] == "sparsect.models.lpd.LearnedPrimalDual"


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_run_benchmark_end_to_end(tmp_path):
    lpd = {"_target_": "sparsect.models.lpd.LearnedPrimalDual", "channels": 8, "iterations": 2}
    cfg = tiny(
        samples={"train": 6, "validation": 3, "test": 3},
        methods=["fbp", "tv", "unet", "lpd"],
        unet={
            "epochs": 1,
            "batch_size": 3,
            "lr": 1e-3,
            "net": {"_target_": "sparsect.models.unet.UNet", "channels": 4, "depth": 3},
        },
        lpd={"epochs": 1, "batch_size": 3, "lr": 1e-3, "train_samples": 3, "net": lpd},
        bootstrap_resamples=50,
    )
    torch.manual_seed(0)
    out = E.run_benchmark(cfg, tmp_path / "ellipses", log=lambda message: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "lpd.ckpt",
        "metrics.json",
        "report.md",
        "unet.ckpt",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["methods"]) == ["fbp", "lpd", "tv", "unet"]  # JSON keys sorted
    for key, result in metrics["methods"].items():
        assert math.isfinite(result["psnr"]["mean"]) and math.isfinite(result["ssim"]["mean"])
        lo, hi = result["psnr"]["ci95"]
        assert lo <= result["psnr"]["mean"] <= hi
        assert result["published_psnr"] == S.PUBLISHED_PSNR[key]
        assert result["difference_db"] == pytest.approx(
            result["psnr"]["mean"] - S.PUBLISHED_PSNR[key]
        )
        assert result["settings"] and result["chosen_by"]
    assert metrics["methods"]["lpd"]["training"]["samples"] == 3
    assert metrics["methods"]["unet"]["training"]["samples"] == 6
    assert metrics["timing"]["total_seconds"] > 0
    report = (out / "report.md").read_text()
    for name in ("FBP", "TV", "FBP+U-Net", "Learned Primal-Dual", "24.18", "32.27"):
        assert name in report
