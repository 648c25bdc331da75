"""The ``external`` stage: every method scored on real scans with the test split's
simulation (real ASTRA, TorchIO, trained Lightning checkpoints; no mocks).

The real scans are the repository's ``realct/`` on a coarse grid (32 x 32 pixels of
12 mm), so that simulation, two tiny networks and two slices of each baseline take
seconds. Training makes them ``slow``.
"""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest

from helpers import ROOT, TINY_TRAINING, build_tiny_inputs
from sparsect.data.io import axial_slices, find_scans, load_subject, standardise
from sparsect.errors import InputError
from sparsect.evaluation.report import write_report
from sparsect.evaluation.statistics import reference_noise_sd
from sparsect.physics import Projector, Simulator, mu_to_hu
from sparsect.priors.masks import body_mask
from sparsect.settings import geometry_from_cfg, noise_from_cfg
from sparsect.stages.baselines import baselines
from sparsect.stages.external import external
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train

VIEWS = 12
MODELS = ("unet", "sg_unet")
SETTINGS = [*TINY_TRAINING, "trainer.max_epochs=2", "external.max_slices=2",
            "baselines.sirt.iterations=10", "baselines.tv.iterations=10",
            "tuning.grid.sirt.iterations=[5,10]", "tuning.grid.tv.iterations=[10]",
            "tuning.grid.tv.weight=[0.01,0.1]"]
METRICS = ("psnr_body", "psnr", "ssim_body", "ssim", "rmse_hu_body", "rmse_hu", "residual")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Two tiny models trained on phantoms, baselines tuned on their validation split,
    then ``external`` on ``realct/``."""
    root = tmp_path_factory.mktemp("external")
    cfg = build_tiny_inputs(root, SETTINGS, subjects=4, slices=3, seed=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        simulate(cfg, root / "prepared", root / "sim", views=VIEWS, workers=1)
        train(cfg, root / "prepared", root / "sim", root / "masks", root / "models", VIEWS,
              MODELS)
    baselines(cfg, root / "sim", root / "baselines", root / "prepared", workers=1)
    external(cfg, ROOT / "realct", root / "models", root / "baselines", root / "external",
             VIEWS, workers=1)
    metrics = json.loads((root / "external" / "metrics.json").read_text())
    return cfg, root, metrics


@pytest.mark.slow
def test_every_scan_is_scored_with_every_method(scored):
    _, root, metrics = scored
    scans = [entry.subject for entry in find_scans(ROOT / "realct")]
    assert sorted(name for name in metrics if not name.startswith("_")) == sorted(scans)
    for scan in scans:
        assert {m for m in metrics[scan] if not m.startswith("_")} == {
            "fbp", "sirt", "tv", *MODELS, *(f"{m}+dc" for m in MODELS)}
        for method in ("fbp", "sirt", "tv", *MODELS):
            values = metrics[scan][method]
            assert all(np.isfinite(values[key]) for key in METRICS), (scan, method)
        assert metrics[scan]["_reference"]["slices"] == 2
        assert (root / "external" / scan / "panel.png").stat().st_size > 0
    assert metrics["_settings"]["views"] == VIEWS
    # the classical methods ran with the settings chosen on the phantoms' validation split
    chosen = json.loads((root / "baselines" / "settings.json").read_text())["methods"]
    assert metrics["_settings"]["baselines"] == chosen


@pytest.mark.slow
def test_regions_are_scored_only_where_a_label_map_exists(scored):
    _, _, metrics = scored
    for scan, result in metrics.items():
        if scan.startswith("_"):
            continue
        labelled = result["_reference"]["label_map"]
        assert labelled == (scan == "abdomen_upper_ct")
        assert ("regions" in result["fbp"]) == labelled
        if labelled:
            assert "soft_tissue" in result["fbp"]["regions"]
            assert set(result["fbp"]["regions"]) <= {"lung", "soft_tissue", "bone"}


@pytest.mark.slow
def test_the_measurements_are_the_references_own(scored):
    """The sinograms were simulated from the reference (on a finer grid, with noise): its
    residual is the floor that every reconstruction sits above."""
    _, _, metrics = scored
    for scan, result in metrics.items():
        if scan.startswith("_"):
            continue
        floor = result["_reference"]["residual"]
        assert 0 < floor < 0.05, scan
        for method in ("fbp", "sirt", "tv", *MODELS):
            assert result[method]["residual"] > floor, (scan, method)


@pytest.mark.slow
def test_body_psnr_is_the_psnr_inside_the_body_of_the_reference(scored):
    """Recomputes FBP's body PSNR of one scan from its own simulation, independently,
    with the filter the baselines stage chose."""
    cfg, root, metrics = scored
    chosen = json.loads((root / "baselines" / "settings.json").read_text())["methods"]
    entry = next(e for e in find_scans(ROOT / "realct") if e.subject == "abdomen_dicom")
    subject = standardise(load_subject(entry), int(cfg.data.image_size),
                          float(cfg.data.pixel_size_mm), tuple(cfg.data.hu_clip))
    hu = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    picks = [0, len(hu) - 1]
    with Simulator(geometry_from_cfg(cfg, VIEWS), noise_from_cfg(cfg),
                   upsample=int(cfg.physics.upsample), filter=str(cfg.physics.filter),
                   device="cpu") as simulator:
        psnrs = []
        projector = Projector(geometry_from_cfg(cfg, VIEWS), "cpu")
        for z in picks:
            # the seed rule, written out: (seed, views, crc32 of the scan's name, slice)
            seed = np.random.SeedSequence([int(cfg.seed), VIEWS,
                                           zlib.crc32(entry.subject.encode()), z])
            sinogram, _ = simulator(hu[z], int(seed.generate_state(1)[0]))
            fbp = mu_to_hu(projector.fbp(sinogram, filter=chosen["fbp"]["filter"]))
            body = body_mask(hu[z])
            error = np.clip(fbp, lo, hi) - np.clip(hu[z], lo, hi)
            psnrs.append(10 * np.log10((hi - lo) ** 2 / np.mean(error[body] ** 2)))
    assert metrics["abdomen_dicom"]["fbp"]["psnr_body"] == pytest.approx(np.mean(psnrs),
                                                                          abs=1e-3)


def test_reference_noise_measures_the_noise_of_soft_tissue():
    rng = np.random.default_rng(1)
    hu = np.full((2, 64, 64), -1000.0)
    hu[:, 8:56, 8:56] = 50.0
    body = hu > -500
    assert reference_noise_sd(hu, body) == pytest.approx(0.0, abs=1e-6)
    noisy = hu + np.where(body, rng.normal(0.0, 15.0, hu.shape), 0.0)
    assert reference_noise_sd(noisy, body) == pytest.approx(15.0, rel=0.1)
    assert np.isnan(reference_noise_sd(np.where(body, 700.0, hu), body))  # no soft tissue


@pytest.mark.slow
def test_the_report_carries_the_real_scans(scored, tmp_path):
    _, root, metrics = scored
    evaluation = tmp_path / "views" / str(VIEWS)
    evaluation.mkdir(parents=True)
    test_split = {m: {"psnr": 30.0 + i, "ssim": 0.9, "rmse_hu": 20.0, "residual": 0.01}
                  for i, m in enumerate(("fbp", "sirt", "tv", *MODELS))}
    test_split["_settings"] = {"slices": 4, "subjects": ["a"], "hu_window": [-1000.0, 2000.0],
                               "data_range_hu": 3000.0}
    (evaluation / "metrics.json").write_text(json.dumps(test_split))
    out = write_report({VIEWS: evaluation}, tmp_path / "out", MODELS,
                       external_dirs={VIEWS: root / "external"})
    merged = json.loads((out / "metrics.json").read_text())
    assert merged["external"][str(VIEWS)] == metrics
    assert set(json.loads((out / "summary.json").read_text())) == {str(VIEWS)}
    text = (out / "report.md").read_text()
    section = text[text.index("## Real scans"):]
    noise = metrics["abdomen_ct"]["_reference"]["noise_sd_hu"]
    assert f"| reference noise (HU) | {noise:.1f}" in section
    sg = metrics["abdomen_ct"]["sg_unet"]
    assert f"{sg['psnr_body']:.2f} / {sg['psnr']:.2f}" in section


@pytest.mark.slow
def test_a_folder_without_scans_is_refused_and_nothing_is_written(scored, tmp_path):
    cfg, root, _ = scored
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no CT scan"):
        external(cfg, tmp_path / "empty", root / "models", root / "baselines",
                 tmp_path / "out", VIEWS)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_corrupt_scan_is_named_and_nothing_is_written(scored, tmp_path):
    cfg, root, _ = scored
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(ROOT / "realct" / "abdomen_ct.nii.gz", scans)
    (scans / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="broken.nii.gz"):
        external(cfg, scans, root / "models", root / "baselines", tmp_path / "out", VIEWS)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_baselines_of_another_view_count_are_refused(scored, tmp_path):
    cfg, root, _ = scored
    with pytest.raises(InputError, match=r"baselines of 12 views, not 24: pass --baselines"):
        external(cfg, ROOT / "realct", root / "models", root / "baselines", tmp_path / "out",
                 24)
    assert not (tmp_path / "out").exists()
