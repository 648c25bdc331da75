"""Task-based metrics: the observer, contrast recovery, structures and the statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from sparsect.data.cohort import Cohort
from sparsect.evaluation import task
from sparsect.stages.ablation import endpoint, paired
from sparsect.stages.study import ABSENT, PRESENT, lesion_scores, structure_scores


def _disc(size: int, radius: float, amplitude: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return amplitude * (np.hypot(x, y) <= radius)


def test_channels_are_orthonormal_and_centred():
    u = task.laguerre_gauss_channels(41, 6.0, 10)
    assert u.shape == (10, 41 * 41)
    np.testing.assert_allclose(u @ u.T, np.eye(10), atol=0.02)
    first = u[0].reshape(41, 41)
    assert np.unravel_index(first.argmax(), first.shape) == (20, 20)


@pytest.mark.parametrize("amplitude", [0.5, 1.0])
def test_cho_detectability_matches_theory_in_white_noise(amplitude):
    """A disc in white noise of SD 1: the ideal observer's d' is ||s||; the Hotelling
    observer on LG channels must reach most of it, and AUC = Phi(d' / sqrt 2)."""
    rng = np.random.default_rng(0)
    size, count = 17, 800
    signal = _disc(size, 2.5, amplitude).reshape(-1)
    channels = task.laguerre_gauss_channels(size, 3.0, 10)
    present = rng.normal(size=(2 * count, size * size)) + signal
    absent = rng.normal(size=(2 * count, size * size))
    template = task.hotelling(present[:count] @ channels.T, absent[:count] @ channels.T)
    score_p = present[count:] @ channels.T @ template
    score_a = absent[count:] @ channels.T @ template
    ideal = np.linalg.norm(signal)
    d = task.d_prime(score_p, score_a)
    assert 0.85 * ideal < d < 1.1 * ideal
    assert task.auc(score_p, score_a) == pytest.approx(norm.cdf(d / np.sqrt(2)), abs=0.03)


def test_auc_is_a_rank_statistic():
    assert task.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert task.auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert task.auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.25


def test_cluster_bootstrap_is_wider_than_treating_rows_as_independent():
    """Rows of one cluster share a cluster effect: resampling clusters must say so."""
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(8), 20)
    values = rng.normal(0, 1, 8)[clusters] + rng.normal(0, 0.1, clusters.size)
    lo, hi = task.cluster_bootstrap(lambda rows: values[rows].mean(), clusters, seed=0)
    lo_rows, hi_rows = task.cluster_bootstrap(lambda rows: values[rows].mean(),
                                              np.arange(clusters.size), seed=0)
    assert hi - lo > 3 * (hi_rows - lo_rows)


def test_holm_adjusts_in_steps_and_stays_monotone():
    out = task.holm({"30": 0.03, "60": 0.02})
    assert out["60"]["p_adjusted"] == pytest.approx(0.04)
    assert out["30"]["p_adjusted"] == pytest.approx(0.04)  # max(0.04, 0.03): monotone
    assert out["60"]["level"] == pytest.approx(0.975) and out["30"]["level"] == 0.95


def test_structures_tell_invented_from_lost_and_ignore_small_regions():
    reference = np.zeros((40, 40))
    body = np.ones((40, 40), bool)
    image = reference.copy()
    image[5, 5:20] = 200.0                 # a streak the reference lacks
    image[30:32, 30:32] = 200.0            # 4 pixels: below the size threshold
    vessel = reference.copy()
    vessel[20:23, 10:25] = 200.0           # a vessel the image blurred away
    kinds = task.structures(image, vessel, body, sigma=20.0)
    assert sorted(kinds) == [("invented", 15), ("lost", 45)]
    assert task.structures(reference, reference, body, 20.0) == []
    assert task.structures(image, reference, np.zeros_like(body), 20.0) == []


def _toy_cohort(rng: np.random.Generator, subjects: int = 4, contrast: float = 60.0) -> Cohort:
    size, slices = 48, 3
    hu = np.full((subjects, slices, size, size), 40.0, np.float32)
    labels = np.full(hu.shape, 15, np.int16)  # liver everywhere
    lesion = np.zeros_like(hu)
    records = []
    for s in range(subjects):
        for row, col in ((14, 14), (33, 33)):
            y, x = np.mgrid[:size, :size]
            lesion[s, 1][np.hypot(y - row, x - col) <= 3.0] = contrast
            records.append({"subject": s, "slice": 1, "row": row, "col": col,
                            "diameter_mm": 18.0, "contrast_hu": contrast,
                            "host": "liver", "lesion_px": 29})
    return Cohort(hu, labels, lesion, records, 3.0, 5.0)


def _scans(cohort: Cohort, rng: np.random.Generator, noise: float, realisations: int = 4,
           blur: float = 0.0) -> np.ndarray:
    from scipy import ndimage

    out = np.empty((2, realisations, *cohort.hu.shape), np.float32)
    for c, volume in ((ABSENT, cohort.hu), (PRESENT, cohort.hu + cohort.lesion_hu)):
        for k in range(realisations):
            image = volume + rng.normal(0, noise, volume.shape)
            if blur:
                image = ndimage.gaussian_filter(image, (0, 0, blur, blur))
            out[c, k] = image
    return out


def test_lesion_scores_recover_contrast_and_rank_a_blurring_method_lower():
    rng = np.random.default_rng(2)
    cohort = _toy_cohort(rng)
    channels = task.laguerre_gauss_channels(17, 5.0, 10)
    sharp = lesion_scores(_scans(cohort, rng, 10.0), cohort, channels, 17)
    blurred = lesion_scores(_scans(cohort, rng, 10.0, blur=2.5), cohort, channels, 17)
    assert sharp["lesion_contrast_recovery"]["abs_cr_minus_1"] < 0.1
    assert blurred["lesion_contrast_recovery"]["cr"] < 0.8
    assert blurred["lesion_contrast_recovery"]["abs_cr_minus_1"] > \
        sharp["lesion_contrast_recovery"]["abs_cr_minus_1"]
    assert sharp["lesion_cnr"]["mean"] > 3
    low, high = sharp["lesion_contrast_recovery"]["ci95"]
    assert low <= sharp["lesion_contrast_recovery"]["abs_cr_minus_1"] <= high
    noisy = lesion_scores(_scans(cohort, rng, 60.0), cohort, channels, 17)
    assert noisy["detectability"]["d_prime"] < sharp["detectability"]["d_prime"]
    assert 0.5 < noisy["detectability"]["auc"] <= sharp["detectability"]["auc"]


def test_structure_scores_count_per_slice_with_subject_intervals():
    rng = np.random.default_rng(3)
    cohort = _toy_cohort(rng, subjects=3)
    clean = np.broadcast_to(cohort.hu, (2, 1, *cohort.hu.shape)).copy()
    none = structure_scores(clean, cohort, sigma=10.0)
    assert none["hallucinated"]["count"] == 0 and none["lost"]["count"] == 0
    streaky = clean.copy()
    streaky[ABSENT, 0, :, :, 10, 5:30] += 300.0  # one streak in every slice
    out = structure_scores(streaky, cohort, sigma=10.0)
    assert out["hallucinated"]["per_slice"] == 1.0
    assert out["hallucinated"]["mean_area_mm2"] == pytest.approx(25 * 9.0)


def _per_seed(gain: float, rng: np.random.Generator, seeds: int = 3, subjects: int = 10):
    out = {}
    for seed in range(seeds):
        base = {str(k): 0.8 + 0.01 * rng.normal() for k in range(subjects)}
        out[str(seed)] = {
            name: {"downstream_dice": {"by_subject": {k: v + shift + 0.003 * rng.normal()
                                                      for k, v in base.items()}},
                   "psnr_by_subject": {k: 35.0 + 10 * shift for k in base}}
            for name, shift in (("unet", 0.0), ("sg_unet", gain))}
    return out


def test_endpoint_finds_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(4)
    results = {"30": _per_seed(0.02, rng), "60": _per_seed(0.0, rng)}
    out = endpoint(results, "sg_unet", "unet")
    thirty, sixty = out["by_views"]["30"]["downstream_dice"], out["by_views"]["60"][
        "downstream_dice"]
    assert thirty["excludes_zero"] and thirty["mean"] == pytest.approx(0.02, abs=0.003)
    assert not sixty["excludes_zero"]
    assert {thirty["level"], sixty["level"]} == {0.975, 0.95}
    assert not out["favours_predicted"]
    assert out["mean_psnr_gain_db"] == pytest.approx(0.1, abs=1e-9)
    both = endpoint({"30": _per_seed(0.02, rng), "60": _per_seed(0.03, rng)}, "sg_unet", "unet")
    assert both["favours_predicted"]


def test_paired_uses_every_subject_and_seed():
    rng = np.random.default_rng(5)
    out = paired(_per_seed(0.01, rng, seeds=3, subjects=7), "sg_unet", "unet")
    assert out["downstream_dice"]["subjects"] == 7 and out["downstream_dice"]["seeds"] == 3
    assert set(out["downstream_dice"]["per_seed"]) == {"0", "1", "2"}


def test_the_observer_sees_hypo_and_hyperdense_lesions_alike():
    """Half the lesions darker than their organ, half brighter: one template per host on
    sign-aligned patches detects both (a single pooled template would cancel them)."""
    rng = np.random.default_rng(6)
    cohort = _toy_cohort(rng, subjects=6)
    for i, lesion in enumerate(cohort.lesions):
        if i % 2:
            s, z = lesion["subject"], lesion["slice"]
            y, x = np.mgrid[:48, :48]
            disc = np.hypot(y - lesion["row"], x - lesion["col"]) <= 3.0
            cohort.lesion_hu[s, z][disc] *= -1
            lesion["contrast_hu"] *= -1
    channels = task.laguerre_gauss_channels(17, 5.0, 10)
    out = lesion_scores(_scans(cohort, rng, 20.0, realisations=6), cohort, channels, 17)
    assert out["detectability"]["d_prime"] > 2.0
    assert out["detectability"]["auc"] > 0.9
    assert out["detectability"]["by_host"]["liver"]["lesions"] == len(cohort.lesions)
    assert out["lesion_contrast_recovery"]["abs_cr_minus_1"] < 0.1
