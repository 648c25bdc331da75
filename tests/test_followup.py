"""Follow-up imaging: the pairs, their true field, registration, PICCS, the ghost contrast and
``followup@V`` with its controls."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import ROOT
from sparsect.config import load_params
from sparsect.data.cohort import sphere_coverage
from sparsect.data.followup import (
    ARRAYS,
    HOSTS_FOLLOWUP,
    KINDS,
    FollowupSpec,
    build_pairs,
    make_pair,
)
from sparsect.data.phantom import PhantomConfig
from sparsect.errors import InputError
from sparsect.methods.classical import Classical
from sparsect.methods.prior import PriorCase, PriorImage
from sparsect.physics import Geometry, NoiseModel, hu_to_mu, mu_to_hu
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.iterative import piccs, tv
from sparsect.physics.operator import ct_operator
from sparsect.priors.deformable import identity, register_scans, target_error, warp

SMALL = PhantomConfig(shape=(128, 128, 4), spacing_mm=(3.0, 3.0, 5.0), supersample=1,
                      slab_samples=1)
SPEC = FollowupSpec(subjects=2, slices=8, margin_slices=2, roi_px=9, diameter_mm=(8.0, 14.0),
                    lesions={"new": 2, "grown": 1, "shrunk": 1, "resolved": 1, "stable": 1,
                             "lobulated": 2},
                    min_new_lesions=1)
SPACING = (5.0, 6.0, 6.0)
CLIP = (-1024.0, 3071.0)


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(SPEC, SMALL, 64, 6.0, CLIP)


def test_pairs_hold_every_lesion_kind_where_it_belongs(pairs):
    kinds = [x["kind"] for p in pairs for x in p.lesions]
    assert set(kinds) == set(KINDS)
    for pair in pairs:
        assert pair.baseline_hu.shape == pair.followup_hu.shape == (8, 64, 64)
        assert pair.field.shape == (8, 64, 64, 3)
        for x in pair.lesions:
            z, r, c = x["slice"], x["row"], x["col"]
            bz, br, bc = (int(round(v)) for v in x["baseline_zrc"])
            if x["kind"] == "new":  # the follow-up only, in its own map
                assert pair.new_hu[z, r, c] == pytest.approx(x["contrast_hu"], rel=0.1)
                assert x["baseline_diameter_mm"] == 0.0
            if x["kind"] == "lobulated":  # new, in the same map, but not a sphere
                assert 2 <= len(x["lobes"]) <= 4 and x["baseline_diameter_mm"] == 0.0
                near = np.zeros_like(pair.new_hu, bool)
                reach = int(np.ceil(1.6 * x["diameter_mm"] / 2 / 6.0)) + 2
                near[max(0, z - 2):z + 3, max(0, r - reach):r + reach + 1,
                     max(0, c - reach):c + reach + 1] = True
                host = np.isin(pair.followup_labels, HOSTS_FOLLOWUP[x["host"]])
                sphere = sphere_coverage(pair.new_hu.shape, (z, r, c), x["diameter_mm"] / 2,
                                         6.0, 5.0) * host
                # the lobes add volume the central sphere does not hold
                assert abs(pair.new_hu[near].sum()) > 1.05 * abs(x["contrast_hu"] * sphere.sum())
            if x["kind"] == "resolved":  # the baseline only, in its own map
                assert pair.resolved_hu[bz, br, bc] != 0
                assert np.sign(pair.resolved_hu[bz, br, bc]) == np.sign(x["contrast_hu"])
                assert x["diameter_mm"] == 0.0
            if x["kind"] in ("grown", "shrunk"):
                assert x["diameter_mm"] >= SPEC.changed_min_mm
                ratio = x["diameter_mm"] / x["baseline_diameter_mm"]
                assert (ratio > 1) == (x["kind"] == "grown")
                assert 1.3 <= max(ratio, 1 / ratio) <= 1.8
        # new lesions are absent from the baseline, resolved ones from the follow-up
        assert np.all(pair.new_hu[pair.followup_labels == 0] == 0)
        assert np.all(pair.resolved_hu[pair.baseline_labels == 0] == 0)


def test_the_true_field_maps_the_follow_up_onto_the_baseline(pairs):
    for pair in pairs:
        body = pair.followup_labels > 0
        baseline = pair.baseline_hu - pair.resolved_hu
        warped = warp(baseline, pair.field, SPACING, order=1)
        moved = np.abs(pair.followup_hu - warp(baseline, identity(baseline.shape).field,
                                               SPACING))[body].mean()
        true = np.abs(pair.followup_hu - warped)[body].mean()
        # what is left is the redrawn contrast, bowel and lesions, and interpolation
        assert true < 0.6 * moved, (true, moved)
        assert np.abs(pair.field).max() <= SPEC.shift_mm + SPEC.elastic_mm + 10.0
        assert np.abs(pair.field[..., 0]).max() > 0  # it moves along z too (sub-slice)


def test_pairs_are_deterministic_whatever_the_workers(pairs):
    again = build_pairs(SPEC, SMALL, 64, 6.0, CLIP, workers=2)
    for a, b in zip(pairs, again, strict=True):
        for name in ARRAYS:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert a.lesions == b.lesions and a.motion == b.motion
    other = build_pairs(SPEC, SMALL, 64, 6.0, CLIP, seed=SPEC.seed + 1, subjects=[0])[0]
    assert not np.array_equal(other.followup_hu, pairs[0].followup_hu)


def test_the_spec_refuses_impossible_settings():
    with pytest.raises(ValueError, match="lesions must map kinds"):
        FollowupSpec(lesions={"vanished": 1})
    with pytest.raises(ValueError, match="change_factor"):
        FollowupSpec(change_factor=(0.5, 2.0))
    with pytest.raises(ValueError, match="the follow-up needs"):
        make_pair(np.zeros((6, 8, 8)), np.zeros((6, 8, 8), np.int16), SPEC, SPACING, 0, 0)


def test_registration_recovers_most_of_the_true_motion(pairs):
    pair = pairs[0]
    body = pair.followup_labels > 0
    found = register_scans(pair.followup_hu + pair.new_hu, pair.baseline_hu, SPACING,
                           iterations=15, sampling=0.2)
    before = target_error(identity(body.shape).field, pair.field, body)
    after = target_error(found.field, pair.field, body)
    assert after["3d_mean"] < 0.5 * before["3d_mean"], (before, after)
    assert set(found.record) >= {"rigid", "metric_before", "metric_deformable"}
    assert found.record["metric_deformable"] < found.record["metric_before"]
    assert target_error(pair.field, pair.field, body)["3d_p95"] == 0.0


def _phantom_case(views: int = 20, size: int = 32):
    geometry = Geometry("parallel", views=views, image_size=size, pixel_size_mm=6.0)
    acquisition = Acquisition(geometry, NoiseModel(i0=float("inf")), upsample=1, device="cpu")
    yy, xx = np.mgrid[:size, :size] - size / 2
    body = np.where(xx**2 + yy**2 < (0.4 * size) ** 2, 40.0, -1000.0).astype(np.float32)
    lesion = np.where((xx - 3) ** 2 + (yy + 2) ** 2 < 9, 80.0, 0.0).astype(np.float32)
    return acquisition, body, lesion


def test_piccs_uses_the_prior_and_alpha_zero_is_tv():
    acquisition, body, lesion = _phantom_case()
    truth = np.stack([body + lesion])
    sino, fbp = acquisition.simulate(truth, [(0,)])
    op = ct_operator(acquisition.geometry, "cpu")
    args = (op, torch.from_numpy(sino), torch.from_numpy(np.asarray(hu_to_mu(fbp), np.float32)))
    prior = torch.from_numpy(np.asarray(hu_to_mu(truth), np.float32))
    good = mu_to_hu(piccs(*args, prior, record=200, weight=0.02, alpha=0.95)[200].numpy())
    plain = mu_to_hu(tv(*args, record=200, weight=0.02)[200].numpy())
    assert np.abs(good - truth).mean() < 0.7 * np.abs(plain - truth).mean()
    # alpha 0 is TV's problem (other steps, the same minimiser)
    same = mu_to_hu(piccs(*args, prior, record=1500, weight=0.02, alpha=0.0)[1500].numpy())
    long_tv = mu_to_hu(tv(*args, record=1500, weight=0.02)[1500].numpy())
    assert np.abs(same - long_tv).mean() < 2.0
    with pytest.raises(ValueError, match="alpha"):
        piccs(*args, prior, alpha=1.5)


def test_ghost_contrast_is_zero_ignoring_the_prior_and_one_copying_it():
    from sparsect.stages.followup import Pairs, ghost_scores

    acquisition, body, lesion = _phantom_case()
    followup = np.stack([body])  # the lesion resolved: only the baseline holds it
    sino, fbp = acquisition.simulate(followup, [(0,)])
    field = np.zeros((1, *body.shape, 3), np.float32)
    resolved = lesion[None]
    record = {"kind": "resolved", "subject": 0, "slice": 0, "row": 14, "col": 19}
    pairs = Pairs({"resolved_hu": resolved[None], "field": field[None]}, [record], SPACING)
    from sparsect.stages.followup import ghost_footprints

    footprints = ghost_footprints(pairs)
    assert len(footprints) == 1 and footprints[0][1].sum() > 10
    baseline = body[None]
    results = {}
    for prior in (baseline + resolved, baseline):
        case = PriorCase(fbp, sino, acquisition, prior=warp(prior, field, SPACING))
        outputs = {**Classical("fbp").apply(case), **PriorImage("prior").apply(case)}
        for name, output in outputs.items():
            results.setdefault(name, []).append(output.images[None])
    ghosts = {name: ghost_scores(with_, without, footprints)["ghost_contrast"]
              for name, (with_, without) in results.items()}
    assert ghosts["fbp"] == 0.0
    assert ghosts["prior"] == pytest.approx(1.0, abs=1e-6)


def test_prior_methods_refuse_a_case_without_a_prior():
    acquisition, body, _ = _phantom_case()
    sino, fbp = acquisition.simulate(body[None], [(0,)])
    with pytest.raises(InputError, match="earlier scan"):
        PriorImage("piccs").apply(PriorCase(fbp, sino, acquisition))
    with pytest.raises(InputError, match="unknown"):
        PriorImage("copy")
    with pytest.raises(InputError, match="no setting"):
        PriorImage("piccs", {"beta": 1.0})
    with pytest.raises(ValueError, match="prior must match"):
        PriorCase(fbp, sino, acquisition, prior=np.zeros((2, 4, 4), np.float32))


TINY = ["data.image_size=64", "data.pixel_size_mm=6.0", "followup.cohort.subjects=3",
        "followup.cohort.slices=8", "followup.cohort.roi_px=9",
        "followup.cohort.diameter_mm=[8.0,14.0]", "followup.cohort.min_new_lesions=1",
        "followup.subjects=null", "followup.realisations=2", "followup.baseline_views=90",
        "followup.registration.iterations=8", "followup.piccs.weights=[0.01]",
        "followup.piccs.alphas=[0.8]", "followup.piccs.iterations=[50]",
        "data.phantom.shape=[128,128,4]", "data.phantom.spacing_mm=[3.0,3.0,5.0]",
        "physics.workers=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sparsect.stages.followup import followup
    from sparsect.stages.followup_cohort import followup_cohort

    cfg = load_params(ROOT / "params.yaml", TINY)
    folder = tmp_path_factory.mktemp("followup")
    followup_cohort(cfg, folder / "cohort")
    metrics = followup(cfg, folder / "cohort", 30, folder / "out",
                       images_dir=folder / "images")
    return cfg, folder, metrics


@pytest.mark.slow
def test_followup_scores_every_method_and_control(tiny_run):
    _, folder, metrics = tiny_run
    for name in ("fbp", "tv", "piccs", "prior", "piccs (unregistered)", "prior (unregistered)",
                 "piccs (wrong patient)", "prior (wrong patient)", "piccs (true field)",
                 "prior (true field)"):
        assert np.isfinite(metrics[name]["body_psnr"]), name
        assert "ghost_contrast" in metrics[name]["resolved_lesions"], name
    # methods that read no prior leave no ghost; the copied prior does
    assert metrics["fbp"]["resolved_lesions"]["ghost_contrast"] == 0.0
    assert metrics["tv"]["resolved_lesions"]["ghost_contrast"] == 0.0
    assert metrics["prior (true field)"]["resolved_lesions"]["ghost_contrast"] > 0.3
    # the prior alone cannot show a new lesion
    assert metrics["prior"]["new_lesions"]["detectability"]["d_prime"] == 0.0
    assert "new_lesions" in metrics["piccs"] and "new_lesions" not in metrics[
        "piccs (unregistered)"]
    info = metrics["_followup"]
    tre = info["registration"]["test_tre_mm"]
    assert tre["registered"]["3d_mean"] < tre["unregistered"]["3d_mean"]
    assert info["registration"]["fixed"] in ("fbp", "tv")
    assert (folder / "out" / "panels.png").stat().st_size > 1000
    written = json.loads((folder / "out" / "metrics.json").read_text())
    assert written["piccs"]["body_psnr"] == metrics["piccs"]["body_psnr"]
    assert (folder / "images" / "piccs (wrong patient).npy").is_file()


@pytest.mark.slow
def test_the_prior_is_a_scan_of_its_own_not_the_reference(tiny_run):
    from sparsect.stages.followup import acquire, load_pairs

    cfg, folder, _ = tiny_run
    pairs = load_pairs(folder / "cohort", "test")
    scans = acquire(cfg, pairs, 30, 2, "test")
    body = ndimage.binary_erosion(pairs.baseline_labels > 0, np.ones((1, 1, 3, 3), bool),
                                  iterations=2)
    # the baseline handed to methods carries its own acquisition's noise ...
    noise = (scans.baseline - pairs.baseline_hu)[body]
    assert noise.std() > 3.0
    # ... which is not the follow-up reference's texture: compare the fine detail of the two
    prior = warp(scans.baseline[0], pairs.field[0], pairs.spacing)
    reference = pairs.followup_hu[0] + pairs.new_hu[0]
    inside = ndimage.binary_erosion(pairs.followup_labels[0] > 0, np.ones((1, 3, 3), bool),
                                    iterations=2)

    def detail(x):
        return (x - ndimage.gaussian_filter(x, (0, 1, 1)))[inside]

    assert np.corrcoef(detail(prior), detail(reference))[0, 1] < 0.9
    assert np.abs(detail(prior)).std() != pytest.approx(np.abs(detail(reference)).std(),
                                                        rel=0.02)
    # and the baseline without its resolved lesions differs from it by those lesions only
    difference = scans.baseline - scans.baseline_without
    far = ndimage.binary_dilation(pairs.resolved_hu != 0, np.ones((1, 1, 3, 3), bool),
                                  iterations=6) == 0
    assert np.abs(difference[far]).max() < 3.0
    assert np.abs(difference[pairs.resolved_hu != 0]).max() > 5.0


def test_followup_refuses_a_missing_cohort_and_too_few_realisations(tmp_path):
    from sparsect.stages.followup import followup

    cfg = load_params(ROOT / "params.yaml")
    with pytest.raises(InputError, match="holds no follow-up cohort"):
        followup(cfg, tmp_path / "nothing", 30, tmp_path / "out")
    bad = load_params(ROOT / "params.yaml", ["followup.realisations=1"])
    with pytest.raises(InputError, match="realisations"):
        followup(bad, tmp_path / "nothing", 30, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_report_has_a_follow_up_section(tiny_run):
    from sparsect.evaluation.followup_report import followup_markdown

    _, _, metrics = tiny_run
    text = "\n".join(followup_markdown({"30": metrics}))
    assert "## Follow-up with an earlier full-dose scan" in text
    assert "| piccs (wrong patient) |" in text and "followup/30/panels.png" in text
    assert followup_markdown({}) == []


def test_spec_is_read_from_the_config():
    from sparsect.stages.followup_cohort import followup_spec, validation_subjects

    cfg = load_params(ROOT / "params.yaml")
    spec = followup_spec(cfg)
    assert spec.subjects >= 20 and spec.seed != int(cfg.data.phantom.seed)
    assert spec.seed not in (int(cfg.study.cohort.seed),)
    assert replace(spec, subjects=1).subjects == 1
    val = validation_subjects(cfg)
    assert val and all(0 <= s < int(cfg.data.phantom.subjects) for s in val)
    with pytest.raises(InputError, match="followup.cohort is invalid"):
        followup_spec(load_params(ROOT / "params.yaml", ["followup.cohort.roi_px=4"]))


def test_real_pairs_keep_the_scan_in_the_follow_up_and_a_smoothed_copy_as_baseline():
    from sparsect.data.io import find_scans
    from sparsect.stages.followup import real_pair

    cfg = load_params(ROOT / "params.yaml")
    entries = {e.subject: e for e in find_scans(ROOT / "realct")}
    name, pairs, info = real_pair(cfg, entries["abdomen_upper_ct"])
    assert name == "abdomen_upper_ct" and info["organ_map"] and pairs.subjects == 1
    assert set(info["hosts"]) <= {"liver", "lung"} and info["lesions"].get("new", 0) >= 1
    body = ndimage.binary_erosion(pairs.followup_labels[0] > 0, np.ones((1, 3, 3), bool),
                                  iterations=2)
    # the baseline is smoothed: its fine detail is a fraction of the follow-up's
    def detail(x):
        return (x - ndimage.gaussian_filter(x, (0, 2, 2)))[body].std()

    assert detail(pairs.baseline_hu[0] - pairs.resolved_hu[0]) < 0.7 * detail(
        pairs.followup_hu[0])
    _, dicom, dicom_info = real_pair(cfg, entries["abdomen_dicom"])
    assert not dicom_info["organ_map"] and dicom.subjects == 1
    assert "abdomen_ct" in list(cfg.followup.real.exclude)


def test_organ_labels_from_a_map_and_from_hu():
    from sparsect.priors.organ_map import organ_labels, structure_organ
    from sparsect.priors.organs import ORGAN_LABELS as L

    hu = np.full((1, 40, 40), -1000.0, np.float32)
    hu[0, 5:35, 5:35] = -100.0  # fat
    hu[0, 10:30, 10:30] = 50.0  # soft tissue
    hu[0, 12:18, 12:28] = -850.0  # a large gas region: lung
    hu[0, 25:27, 20:22] = -900.0  # a small one: bowel gas
    by_hu = organ_labels(hu)
    assert by_hu[0, 0, 0] == L["background"] and by_hu[0, 7, 7] == L["fat"]
    assert by_hu[0, 20, 12] == L["muscle"] and by_hu[0, 14, 20] == L["lung"]
    assert by_hu[0, 25, 20] == L["bowel_gas"]
    ts = np.zeros(hu.shape, np.int64)
    ts[0, 20:24, 10:30] = 5
    mapped = organ_labels(hu, ts, {5: "liver"})
    assert mapped[0, 22, 15] == L["liver"] and structure_organ("vertebrae_L1") == L["spine"]


@pytest.fixture(scope="module")
def prior_scan_files(tmp_path_factory, pairs):
    from helpers import save_module, write_nifti
    from sparsect.data.io import volume_from_slices

    folder = tmp_path_factory.mktemp("prior_scan")
    pair = pairs[0]
    spacing = (6.0, 6.0, 5.0)
    files = {"followup": write_nifti(folder / "followup.nii.gz", volume_from_slices(
                 pair.followup_hu + pair.new_hu), spacing),
             "baseline": write_nifti(folder / "baseline.nii.gz",
                                     volume_from_slices(pair.baseline_hu), spacing),
             "short": write_nifti(folder / "short.nii.gz",
                                  volume_from_slices(pair.baseline_hu[2:6]), spacing),
             "mr": write_nifti(folder / "mr.nii.gz", volume_from_slices(
                 np.clip(pair.baseline_hu + 1000.0, 0, None) * 0.8), spacing),
             "model": save_module(folder / "model.ckpt", "predicted", 1, True)}
    return folder, files


def test_reconstruct_with_a_prior_scan_runs_piccs_and_records_the_registration(
        prior_scan_files):
    from sparsect.cli import main

    folder, files = prior_scan_files
    out = folder / "piccs.nii.gz"
    args = ["reconstruct", str(files["followup"]), "-o", str(out), "--model",
            str(files["model"]), "--method", "piccs", "--prior-scan", str(files["baseline"]),
            "--option", "weight=0.01", "--option", "alpha=0.8", "--option", "iterations=30",
            "--params", str(ROOT / "params.yaml")]
    assert main(args) == 0
    image = nib_load(out)
    assert image.shape[:2] == (32, 32) and np.isfinite(image).all()
    sidecar = json.loads((folder / "piccs.prior.json").read_text())
    assert sidecar["method"] == "piccs" and sidecar["settings"]["alpha"] == 0.8
    assert sidecar["registration"]["overlap"] > 0.5 and "rigid" in sidecar["registration"]
    # the prior changes the result: the same data with FBP differ
    fbp = folder / "fbp.nii.gz"
    assert main(["reconstruct", str(files["followup"]), "-o", str(fbp), "--model",
                 str(files["model"]), "--method", "fbp", "--option", "filter=ram-lak",
                 "--params", str(ROOT / "params.yaml")]) == 0
    assert np.abs(nib_load(fbp) - image).mean() > 1.0


@pytest.mark.parametrize("case, message", [
    ("model", "cannot read one"),
    ("no prior", "add --prior-scan"),
    ("mr", "does not look like CT"),
    ("short", "covers only"),
    ("missing", "does not exist"),
])
def test_reconstruct_refuses_a_prior_scan_it_cannot_use(prior_scan_files, case, message,
                                                        capsys):
    from sparsect.cli import main

    folder, files = prior_scan_files
    out = folder / f"refused_{case.replace(' ', '_')}.nii.gz"
    args = ["reconstruct", str(files["followup"]), "-o", str(out), "--model",
            str(files["model"]), "--params", str(ROOT / "params.yaml"),
            "--option", "iterations=5"]
    if case == "model":
        args = args[:-2] + ["--prior-scan", str(files["baseline"])]
    elif case == "no prior":
        args += ["--method", "piccs"]
    else:
        prior = folder / "nothing.nii.gz" if case == "missing" else files[case]
        args += ["--method", "piccs", "--prior-scan", str(prior)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not out.exists() and not (folder / f"{out.name[:-7]}.prior.json").exists()


def nib_load(path):
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, np.float32)
