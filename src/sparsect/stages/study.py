"""The task study at one view count: the cohort (:mod:`sparsect.data.cohort`) simulated,
reconstructed by every method and scored by what a reader needs of an image.

- **Lesions** (:mod:`sparsect.evaluation.task`): contrast recovery, CNR and a
  channelized Hotelling observer's ``d'`` and AUC on lesion-present / lesion-absent
  pairs of the same anatomy, each simulated with independent noise, ``realisations``
  times; the observer's template comes from the first half of the realisations and is
  applied to the second.
- **Downstream segmentation**: the frozen organ segmenter (stage ``segmenter``, trained
  on full-dose images only) segments each method's lesion-absent volumes; Dice and HD95
  per organ against the true labels. Its score on the references themselves is the
  ceiling, reported as ``reference``.
- **Invented and lost structure** on the lesion-absent volumes, thresholded at three
  standard deviations of a full-view full-dose FBP's noise (measured here, in uniform
  soft tissue of the cohort).

Every interval resamples cohort subjects. The cohort is never trained on or tuned on:
the models come from ``train`` and the classical methods' settings from ``baselines``,
both chosen on the validation split.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from sparsect.data.cohort import HOSTS, Cohort
from sparsect.data.store import load_array, read_json
from sparsect.errors import InputError
from sparsect.evaluation import task
from sparsect.evaluation.statistics import reference_noise_sd
from sparsect.methods.case import Case
from sparsect.methods.classical import Classical
from sparsect.methods.loading import load_methods, write_images
from sparsect.physics import Geometry, NoiseModel
from sparsect.physics.acquisition import Acquisition
from sparsect.priors.classes import BACKGROUND
from sparsect.priors.organs import ORGAN_TO_TISSUE
from sparsect.settings import acquisition_from_cfg, workers_from_cfg

ABSENT, PRESENT = 0, 1
COHORT_KEY, FULL_VIEW_KEY = 7, 9
"""Seed-rule keys: ``(7, class, realisation, subject, slice)`` for a cohort scan,
``(7, 9, slice)`` for the full-view reference FBP that sets the structure threshold."""


@dataclass
class Scans:
    """The cohort simulated at one view count: ``(2, K, S, Z, ...)`` arrays, axis 0
    lesion-absent / lesion-present, axis 1 the noise realisation."""

    fbp: np.ndarray
    sinogram: np.ndarray
    acquisition: Acquisition

    @property
    def geometry(self) -> Geometry:
        return self.acquisition.geometry


def load_cohort(folder: Path, subjects: int | None = None) -> Cohort:
    """The cohort written by ``sparsect cohort``, its first ``subjects`` subjects only when
    given."""
    folder = Path(folder)
    if not (folder / "cohort.json").is_file():
        raise InputError(f"'{folder}' holds no cohort (cohort.json is missing): run "
                         "`sparsect cohort` (or `dvc repro cohort`) first.")
    header = read_json(folder / "cohort.json")
    keep = header["subjects"] if subjects is None else min(int(subjects), header["subjects"])
    return Cohort(np.array(load_array(folder, "hu")[:keep]),
                  np.array(load_array(folder, "labels")[:keep]),
                  np.array(load_array(folder, "lesion_hu")[:keep]),
                  [r for r in read_json(folder / "lesions.json") if r["subject"] < keep],
                  float(header["pixel_size_mm"]), float(header["slice_mm"]))


def simulate_cohort(cfg: DictConfig, cohort: Cohort, views: int, realisations: int,
                    workers: int | None = None) -> Scans:
    """Every cohort slice, lesion-absent and lesion-present, ``realisations`` times, each
    with its own noise (seeded by view count, class, realisation, subject and slice)."""
    acquisition = acquisition_from_cfg(cfg, views)
    s, z = cohort.hu.shape[:2]
    images, keys = [], []
    for c, volume in ((ABSENT, cohort.hu), (PRESENT, cohort.hu + cohort.lesion_hu)):
        for k in range(realisations):
            for i in range(s):
                for j in range(z):
                    images.append(volume[i, j])
                    keys.append((COHORT_KEY, c, k, i, j))
    sinogram, fbp = acquisition.replace(device="cpu").simulate(
        np.stack(images), keys, workers_from_cfg(cfg, workers))
    shape = (2, realisations, s, z)
    return Scans(fbp.reshape(*shape, *fbp.shape[1:]),
                 sinogram.reshape(*shape, *sinogram.shape[1:]), acquisition)


def full_view_sigma(cfg: DictConfig, cohort: Cohort, views: int, subjects: int = 2
                    ) -> tuple[float, str]:
    """Noise SD (HU) of a full-view (``views``), full-dose (``study.full_dose_i0``) FBP of the
    cohort's first subjects, and how it was measured: in uniform soft tissue
    (:func:`reference_noise_sd`), or, on a grid too coarse for any uniform 5 x 5 square,
    as the robust SD (1.4826 MAD) of the FBP minus the reference inside the body."""
    acquisition = acquisition_from_cfg(cfg, views, device="cpu").replace(
        noise=NoiseModel(i0=float(cfg.study.full_dose_i0)))
    references = cohort.hu[:subjects].reshape(-1, *cohort.hu.shape[2:])
    keys = [(COHORT_KEY, FULL_VIEW_KEY, i) for i in range(len(references))]
    _, fbp = acquisition.simulate(references, keys, workers_from_cfg(cfg))
    body = references > -900.0
    sigma = reference_noise_sd(fbp, body)
    if np.isfinite(sigma):
        return sigma, "uniform soft tissue"
    error = (fbp - references)[body]
    return float(1.4826 * np.median(np.abs(error - np.median(error)))), "body, robust SD"


def needed(cohort: Cohort, realisations: int) -> np.ndarray:
    """``(2, K, S, Z)`` slices the scores read: every lesion-absent slice of the first
    realisation (segmentation, structures), and each lesion's centre slice in both
    classes and every realisation."""
    mask = np.zeros((2, realisations, *cohort.hu.shape[:2]), bool)
    mask[ABSENT, 0] = True
    for lesion in cohort.lesions:
        mask[:, :, lesion["subject"], lesion["slice"]] = True
    return mask


def reconstructions(cfg: DictConfig, scans: Scans, cohort: Cohort, models_dir: Path,
                    baselines_dir: Path | None) -> tuple[dict[str, np.ndarray], dict]:
    """Every method's images of the cohort, ``(2, K, S, Z, H, W)`` HU (NaN on slices a
    classical iterative method skips, see :func:`needed`), and per-model extras."""
    shape = scans.fbp.shape
    keys = np.indices(shape[:4]).reshape(4, -1).T
    tissue = np.vectorize(lambda v: ORGAN_TO_TISSUE.get(int(v), 0), otypes=[np.uint8])(
        cohort.labels)
    case = Case(scans.fbp.reshape(-1, *shape[-2:]),
                scans.sinogram.reshape(-1, *scans.sinogram.shape[-2:]), scans.acquisition,
                index=[(f"{c}/{k}/{s}", int(z)) for c, k, s, z in keys],
                full_dose_classes=np.broadcast_to(tissue, shape).reshape(-1, *shape[-2:]))
    needed_case = dataclasses.replace(case, slices=np.flatnonzero(
        needed(cohort, shape[1]).reshape(-1)))
    images: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for method in load_methods(cfg, scans.geometry.views, models_dir, baselines_dir,
                               classical=list(cfg.study.classical)):
        iterative = isinstance(method, Classical) and not method.reads_case_fbp
        for name, output in method.apply(needed_case if iterative else case).items():
            result = output.images
            if iterative:  # the slices the scores read; NaN elsewhere
                result = np.full(case.fbp.shape, np.nan, np.float32)
                result[needed_case.picks] = output.images
            images[name], extra[name] = result.reshape(shape), dict(output.extra)
    return images, extra


def lesion_measures(image: np.ndarray, cohort: Cohort, channels: np.ndarray, roi: int
                    ) -> dict[str, Any]:
    """Per lesion of one method's ``(2, K, S, Z, H, W)`` images: contrast recovery ``cr``
    and ``cnr`` (with each lesion's ``subjects``), and the CHO's test scores
    ``score_p`` / ``score_a`` with their subjects ``groups`` and ``by_host`` summary."""
    realisations = image.shape[1]
    subjects = np.array([lesion["subject"] for lesion in cohort.lesions])
    cr, cnr = [], []
    for lesion in cohort.lesions:
        s, z, r, c = (lesion[k] for k in ("subject", "slice", "row", "col"))
        truth = cohort.lesion_hu[s, z]
        host = np.isin(cohort.labels[s, z], HOSTS[lesion["host"]])
        radius = lesion["diameter_mm"] / 2 / cohort.pixel_size_mm
        inside, ring = task.lesion_rois(truth, host, r, c, radius)
        signal = np.mean([image[PRESENT, k, s, z][inside].mean()
                          - image[ABSENT, k, s, z][inside].mean() for k in range(realisations)])
        cr.append(signal / truth[inside].mean())
        spread = np.mean([image[ABSENT, k, s, z][ring].std(ddof=1) for k in range(realisations)])
        cnr.append(abs(signal) / spread)
    score_p, score_a, groups, by_host = _observer(image, cohort, channels, roi)
    return {"cr": np.asarray(cr), "cnr": np.asarray(cnr), "subjects": subjects,
            "score_p": score_p, "score_a": score_a, "groups": groups, "by_host": by_host}


def lesion_scores(image: np.ndarray, cohort: Cohort, channels: np.ndarray, roi: int
                  ) -> dict[str, object]:
    """Contrast recovery, CNR and the CHO of one method's ``(2, K, S, Z, H, W)`` images."""
    m = lesion_measures(image, cohort, channels, roi)
    cr, cnr, subjects = m["cr"], m["cnr"], m["subjects"]
    score_p, score_a, groups, by_host = m["score_p"], m["score_a"], m["groups"], m["by_host"]

    def ci(values: np.ndarray) -> list[float]:
        return list(task.cluster_bootstrap(lambda rows: np.nanmean(values[rows]), subjects))

    error = np.abs(cr - 1)
    return {
        "lesion_contrast_recovery": {
            "abs_cr_minus_1": float(np.mean(error)), "ci95": ci(error),
            "cr": float(np.mean(cr)), "cr_ci95": ci(cr),
            "by_host": {h: float(np.mean(error[[x["host"] == h for x in cohort.lesions]]))
                        for h in sorted({x["host"] for x in cohort.lesions})}},
        "lesion_cnr": {"mean": float(np.mean(cnr)), "ci95": ci(cnr)},
        "detectability": {
            "d_prime": task.d_prime(score_p, score_a),
            "d_prime_ci95": list(task.cluster_bootstrap(
                lambda rows: task.d_prime(score_p[rows], score_a[rows]), groups)),
            "auc": task.auc(score_p, score_a),
            "auc_ci95": list(task.cluster_bootstrap(
                lambda rows: task.auc(score_p[rows], score_a[rows]), groups)),
            "by_host": by_host},
    }


def _observer(image: np.ndarray, cohort: Cohort, channels: np.ndarray, roi: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The CHO's test scores (lesion-present, lesion-absent), their subjects, and d' / AUC
    per host organ.

    One template per host organ, on patches multiplied by the sign of their lesion's
    contrast: a single linear template over hypo- and hyperdense lesions, or over
    lung and liver backgrounds, would average opposite signals and unlike textures
    away. Each host's scores are then standardised by its lesion-absent scores (mean
    and SD) and pooled, so the overall d' and AUC weigh the hosts by their lesions."""
    realisations = image.shape[1]
    half = max(1, realisations // 2)
    lesions = cohort.lesions
    subjects = np.array([x["subject"] for x in lesions])
    hosts = np.array([x["host"] for x in lesions])
    signs = np.sign([x["contrast_hu"] for x in lesions])

    def outputs(c: int, ks: range, pick: np.ndarray) -> np.ndarray:
        rows = [signs[i] * task.patches(image[c, k, lesions[i]["subject"], lesions[i]["slice"]]
                                        [None], [(0, lesions[i]["row"], lesions[i]["col"])],
                                        roi)[0]
                for k in ks for i in pick]
        return np.asarray(rows) @ channels.T

    train, test = range(half), range(half, realisations)
    scores_p, scores_a, groups, by_host = [], [], [], {}
    for host in sorted(set(hosts)):
        pick = np.flatnonzero(hosts == host)
        template = task.hotelling(outputs(PRESENT, train, pick), outputs(ABSENT, train, pick))
        p = outputs(PRESENT, test, pick) @ template
        a = outputs(ABSENT, test, pick) @ template
        by_host[host] = {"lesions": int(pick.size), "d_prime": task.d_prime(p, a),
                         "auc": task.auc(p, a)}
        centre, spread = a.mean(), a.std(ddof=1) if a.size > 1 else 1.0
        scores_p.append((p - centre) / spread)
        scores_a.append((a - centre) / spread)
        groups.append(np.tile(subjects[pick], len(test)))
    return np.concatenate(scores_p), np.concatenate(scores_a), np.concatenate(groups), by_host


def structure_scores(image: np.ndarray, cohort: Cohort, sigma: float) -> dict[str, dict]:
    """Invented and lost structures of the lesion-absent volumes (first realisation)."""
    s, z = cohort.hu.shape[:2]
    # inside the patient: not the air around it, not the table
    inside = np.isin(cohort.labels, [v for v, t in ORGAN_TO_TISSUE.items() if t != BACKGROUND])
    counts = {"invented": np.zeros((s, z)), "lost": np.zeros((s, z))}
    sizes: dict[str, list[int]] = {"invented": [], "lost": []}
    for i in range(s):
        for j in range(z):
            for kind, size in task.structures(image[ABSENT, 0, i, j], cohort.hu[i, j],
                                              inside[i, j], sigma):
                counts[kind][i, j] += 1
                sizes[kind].append(size)
    area = cohort.pixel_size_mm**2
    out = {}
    subjects = np.repeat(np.arange(s), z)
    for kind, key in (("invented", "hallucinated"), ("lost", "lost")):
        per_slice = counts[kind].reshape(-1)
        out[key] = {"per_slice": float(per_slice.mean()),
                    "ci95": list(task.cluster_bootstrap(
                        lambda rows, v=per_slice: v[rows].mean(), subjects)),
                    "mean_area_mm2": float(np.mean(sizes[kind]) * area) if sizes[kind] else 0.0,
                    "count": int(per_slice.sum())}
    return out


def downstream_scores(image: np.ndarray, cohort: Cohort, segmenter) -> dict[str, object]:
    """The frozen segmenter on the lesion-absent volumes (first realisation): per-organ
    Dice and HD95, and the per-subject mean over organs (the endpoint's unit)."""
    from sparsect.evaluation.segmentation import mean_organ_dice, organ_scores
    from sparsect.models.segmenter import segment
    from sparsect.priors.organs import segmenter_classes

    s, z = cohort.hu.shape[:2]
    volumes = image[ABSENT, 0].reshape(-1, *image.shape[-2:])
    predicted = segment(segmenter, volumes)
    truth = segmenter_classes(cohort.labels.reshape(-1, *image.shape[-2:]))
    subjects = np.repeat(np.arange(s), z)
    scores = organ_scores(predicted, truth, subjects,
                          (cohort.pixel_size_mm, cohort.pixel_size_mm, cohort.slice_mm))
    per_subject = mean_organ_dice(scores)
    values = np.array([per_subject[k] for k in sorted(per_subject, key=int)])
    return {"downstream_dice": {
        "mean": float(np.nanmean(values)),
        "ci95": list(task.cluster_bootstrap(lambda rows: np.nanmean(values[rows]),
                                            np.arange(len(values)))),
        "by_subject": {str(k): float(v) for k, v in per_subject.items()},
        "organs": {organ: float(np.nanmean(list(v["dice"].values())))
                   for organ, v in scores.items()},
        "hd95_mm": {organ: float(np.nanmean(list(v["hd95_mm"].values())))
                    for organ, v in scores.items()}}}


def study(cfg: DictConfig, cohort_dir: Path, models_dir: Path, baselines_dir: Path | None,
          views: int, segmenter_dir: Path | None = None, subjects: int | None = None,
          scans: Scans | None = None, images_dir: Path | None = None) -> dict[str, dict]:
    """Scores every method on the cohort at ``views``; ``_study`` records the settings.

    ``subjects``: the cohort's first ones only (a smaller lesion set); ``scans``: the
    cohort already simulated at ``views`` (the ablation reuses it across its models)."""
    spec = cfg.study
    cohort = load_cohort(cohort_dir, subjects)
    realisations = int(spec.realisations)
    if realisations < 2:
        raise InputError(f"study.realisations={realisations}: the observer needs >= 2 (one "
                         "half to estimate its template, the other to score it).")
    scans = scans or simulate_cohort(cfg, cohort, views, realisations)
    sigma, measured = full_view_sigma(cfg, cohort, int(spec.full_views))
    images, extra = reconstructions(cfg, scans, cohort, models_dir, baselines_dir)
    if images_dir is not None:
        write_images(images_dir, images)
    channels = task.laguerre_gauss_channels(int(spec.cohort.roi_px), float(spec.channel_width_px),
                                            int(spec.channels))
    segmenter = None
    if segmenter_dir is not None:
        from sparsect.models.segmenter import load_segmenter

        segmenter = load_segmenter(Path(segmenter_dir) / "segmenter.ckpt")
    out: dict[str, dict] = {}
    roi = int(spec.cohort.roi_px)
    for name, image in images.items():
        out[name] = {**extra[name], **lesion_scores(image, cohort, channels, roi),
                     **structure_scores(image, cohort, sigma)}
        if segmenter is not None:
            out[name].update(downstream_scores(image, cohort, segmenter))
    if segmenter is not None:
        reference = np.broadcast_to(cohort.hu, (2, 1, *cohort.hu.shape))
        out["_reference"] = downstream_scores(reference, cohort, segmenter)
    out["_study"] = {
        "views": int(views), "subjects": int(cohort.hu.shape[0]),
        "slices_per_subject": int(cohort.hu.shape[1]), "lesions": len(cohort.lesions),
        "lesions_by_host": {h: sum(x["host"] == h for x in cohort.lesions) for h in HOSTS},
        "realisations": realisations, "observer": {
            "channels": int(spec.channels), "channel_width_px": float(spec.channel_width_px),
            "channel_width_mm": float(spec.channel_width_px) * cohort.pixel_size_mm,
            "roi_px": int(spec.cohort.roi_px),
            "train": f"realisations 0-{realisations // 2 - 1}",
            "test": f"realisations {realisations // 2}-{realisations - 1}"},
        "structure_threshold_hu": task.STRUCTURE_SIGMAS * sigma,
        "full_view_fbp_noise_hu": sigma, "noise_measured_in": measured,
        "full_views": int(spec.full_views),
        "set": "full" if subjects is None else f"first {cohort.hu.shape[0]} subjects",
    }
    return json.loads(json.dumps(out, default=float))
