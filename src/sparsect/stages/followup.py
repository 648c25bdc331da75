"""Stage ``followup@V``: follow-up imaging with an earlier full-dose scan, on the pairs of
``followup_cohort`` (:mod:`sparsect.stages.followup_cohort`), at ``V`` views:

1. **Acquires both scans.** The follow-up sparse (the pipeline's noise, ``V`` views),
   lesion-absent and lesion-present, ``realisations`` times. The baseline once, at full
   dose and full views with its own noise and its own kernel (``followup.baseline_filter``):
   the prior is a scan, never the follow-up's reference nor the phantom. Its copy without
   the resolved lesions has the same noise (the lesions' noiseless projection is
   subtracted from its sinogram), so their difference is the lesions alone.
2. **Registers** the baseline to the follow-up's own reconstruction (FBP or TV, the one
   with the lower target registration error on the validation pairs), rigidly, then by a
   B-spline (:mod:`sparsect.priors.deformable`), and reports the TRE against the true field.
3. **Reconstructs** with FBP, TV, PICCS, the learned models without a prior, and the
   registered prior itself; PICCS and the prior also with the controls: the prior not
   registered, a wrong patient's prior (registered the same way), and the prior warped
   with the true field (an upper bound, not deployable). TV and PICCS take the weights
   (and PICCS's alpha) with the best body PSNR on the validation pairs, from a stated grid.
4. **Scores** what a prior adds and what it hides: body PSNR / SSIM and per organ; the new
   lesions' ``|CR - 1|``, CNR, and the task study's observer ``d'`` and AUC; the grown and
   shrunk lesions' diameter at half maximum; the resolved lesions' ghost contrast (the
   same follow-up data reconstructed with the baseline with and without them: the mean
   difference over the lesion's true warped footprint over its contrast there); panels of
   the prior's influence beside the true change.

Every interval resamples subjects.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sparsect.data.cohort import Cohort
from sparsect.data.followup import ARRAYS, HOSTS_FOLLOWUP, NEW_KINDS
from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json
from sparsect.errors import InputError
from sparsect.evaluation import task
from sparsect.methods.classical import Classical
from sparsect.methods.learned import Learned
from sparsect.methods.loading import learned_methods
from sparsect.methods.prior import PriorCase, PriorImage
from sparsect.physics import NoiseModel
from sparsect.priors.deformable import identity, register_scans, target_error, warp
from sparsect.priors.organs import ORGAN_LABELS
from sparsect.settings import acquisition_from_cfg, workers_from_cfg
from sparsect.stages.study import ABSENT, PRESENT, lesion_scores

FOLLOWUP_KEY = 28
"""Seed-rule key: ``(28, split, class, realisation, subject, slice)`` for a follow-up scan,
``(28, split, 2, subject, slice)`` for its baseline; ``split`` is :data:`SPLIT_KEYS`'s,
a real pair's ``(2, scan_key(name))``."""
SPLIT_KEYS = {"test": 0, "val": 1, "train": 3}
MIN_OBSERVER_LESIONS = 3
"""Fewest lesions per host organ the observer is trained on (its template needs a
covariance); with fewer, a lesion kind gets its contrast recovery only."""
PRIOR_KINDS = ("registered", "unregistered", "wrong patient", "true field")
"""How the prior reaches a method: the deployable one, then the controls and the bound."""
ORGANS = {"liver": ("liver",), "spleen": ("spleen",), "kidney": ("kidney",),
          "lung": ("lung", "lung_vessel"), "bowel": ("bowel", "colon", "bowel_gas"),
          "muscle": ("muscle",), "fat": ("fat",)}


@dataclass
class Pairs:
    """One split of the cohort: the arrays of :data:`ARRAYS` as attributes, ``(S, Z, ...)``."""

    arrays: dict[str, np.ndarray]
    lesions: list[dict]
    spacing: tuple[float, float, float]

    def __getattr__(self, name: str) -> np.ndarray:
        if name in ARRAYS:
            return self.arrays[name]
        raise AttributeError(name)

    @property
    def subjects(self) -> int:
        return int(self.arrays["followup_hu"].shape[0])

    def kind(self, *kinds: str) -> list[dict]:
        return [x for x in self.lesions if x["kind"] in kinds]


def load_pairs(folder: Path, split: str, subjects: int | None = None) -> Pairs:
    """One split of the cohort ``sparsect followup-cohort`` wrote (its first ``subjects``
    only, when given)."""
    folder = Path(folder)
    if not (folder / "cohort.json").is_file():
        raise InputError(f"'{folder}' holds no follow-up cohort (cohort.json is missing): run "
                         "`sparsect followup-cohort` (or `dvc repro followup_cohort`) first.")
    header = read_json(folder / "cohort.json")
    keep = None if subjects is None else int(subjects)
    arrays = {name: np.array(load_array(folder / split, name)[:keep]) for name in ARRAYS}
    lesions = [x for x in read_json(folder / split / "lesions.json")
               if keep is None or x["subject"] < keep]
    return Pairs(arrays, lesions,
                 (float(header["slice_mm"]), float(header["pixel_size_mm"]),
                  float(header["pixel_size_mm"])))


# -- acquisition and registration -------------------------------------------------------

@dataclass
class Scans:
    """A split acquired at one view count: the follow-up ``(2, K, S, Z, ...)`` (FBP and
    sinograms) and the baseline's FBP with and without its resolved lesions ``(S, Z, H, W)``."""

    fbp: np.ndarray
    sinogram: np.ndarray
    baseline: np.ndarray
    baseline_without: np.ndarray
    acquisition: Any


def acquire(cfg: DictConfig, pairs: Pairs, views: int, realisations: int, split: str,
            scan: int | None = None) -> Scans:
    """Both scans of every pair (see the module docstring); ``scan``: a real pair's
    :func:`~sparsect.physics.acquisition.scan_key`, in its seed keys."""
    spec = cfg.followup
    prefix = (FOLLOWUP_KEY, SPLIT_KEYS[split]) if scan is None else (FOLLOWUP_KEY, 2, scan)
    acquisition = acquisition_from_cfg(cfg, views, device="cpu")
    workers = workers_from_cfg(cfg)
    s, z = pairs.followup_hu.shape[:2]
    images, keys = [], []
    for c, volume in ((ABSENT, pairs.followup_hu), (PRESENT, pairs.followup_hu + pairs.new_hu)):
        for k in range(realisations):
            for i in range(s):
                for j in range(z):
                    images.append(volume[i, j])
                    keys.append((*prefix, c, k, i, j))
    sinogram, fbp = acquisition.simulate(np.stack(images), keys, workers)
    shape = (2, realisations, s, z)
    full = acquisition.replace(views=int(spec.baseline_views),
                               noise=NoiseModel(i0=float(cfg.study.full_dose_i0)),
                               filter=str(spec.baseline_filter))
    base_keys = [(*prefix, 2, i, j) for i in range(s) for j in range(z)]
    base_sino, base_fbp = full.simulate(pairs.baseline_hu.reshape(-1, *fbp.shape[1:]),
                                        base_keys, workers)
    # the resolved lesions' own line integrals: a noiseless projection of their HU above
    # water, minus that of water (linear, and clear of the HU clip)
    clean = full.replace(noise=NoiseModel(i0=float("inf")))
    water = np.zeros_like(pairs.resolved_hu.reshape(-1, *fbp.shape[1:]))
    lesions, _ = clean.simulate(water + pairs.resolved_hu.reshape(water.shape), base_keys)
    zero, _ = clean.simulate(water, base_keys)
    without = full.fbp(base_sino - (lesions - zero))
    return Scans(fbp.reshape(*shape, *fbp.shape[1:]),
                 sinogram.reshape(*shape, *sinogram.shape[1:]),
                 base_fbp.reshape(s, z, *fbp.shape[1:]), without.reshape(s, z, *fbp.shape[1:]),
                 acquisition)


def _register_job(job: tuple) -> tuple[np.ndarray, dict]:
    fixed, moving, spacing, settings = job
    result = register_scans(fixed, moving, spacing, **settings)
    return result.field, result.record


def register_all(fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float, float],
                 settings: dict, workers: int) -> list[tuple[np.ndarray, dict]]:
    """Registers ``moving[i]`` to ``fixed[i]`` for every subject (a process pool)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(f, m, spacing, settings) for f, m in zip(fixed, moving, strict=True)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_register_job, jobs))
    return [_register_job(job) for job in jobs]


def registered_priors(cfg: DictConfig, pairs: Pairs, scans: Scans, fixed: np.ndarray,
                      segmenter: Any, workers: int) -> dict[str, Any]:
    """Registers every baseline to ``fixed`` (``(S, Z, H, W)``, the follow-up's own image)
    and returns the warped baselines (``prior``), their organ maps (``organs``), the
    fields and the TRE against the true field."""
    registration = dict(OmegaConf.to_container(cfg.followup.registration, resolve=True))
    registration.pop("fixed")
    found = register_all(fixed, scans.baseline, pairs.spacing, registration, workers)
    prior = np.stack([warp(b, f, pairs.spacing)
                      for b, (f, _) in zip(scans.baseline, found, strict=True)])
    return {"prior": prior, "organs": organ_maps(segmenter, prior),
            "fields": [f for f, _ in found], "tre_mm": tre([f for f, _ in found], pairs)}


def organ_maps(segmenter: Any, images: np.ndarray) -> np.ndarray:
    """The fixed segmenter's classes of ``(..., H, W)`` HU images, same shape (uint8)."""
    from sparsect.models.segmenter import segment

    flat = np.asarray(images, np.float32).reshape(-1, *images.shape[-2:])
    return segment(segmenter, flat).reshape(images.shape)


def body_mask(labels: np.ndarray) -> np.ndarray:
    return ~np.isin(labels, (ORGAN_LABELS["background"], ORGAN_LABELS["table"]))


def tre(fields: list[np.ndarray], pairs: Pairs) -> dict[str, float]:
    """Target registration error over every body voxel of every subject."""
    estimated = np.stack(fields)
    return target_error(estimated, pairs.field, body_mask(pairs.followup_labels))


# -- reconstruction ---------------------------------------------------------------------

def _case(scans: Scans, prior: np.ndarray | None, slices: np.ndarray | None,
          organs: np.ndarray | None = None) -> PriorCase:
    shape = scans.fbp.shape
    keys = np.indices(shape[:4]).reshape(4, -1).T

    def each(array: np.ndarray | None) -> np.ndarray | None:
        # (S, Z, H, W) -> every class and realisation
        return None if array is None else np.broadcast_to(array, shape).reshape(-1, *shape[-2:])

    return PriorCase(scans.fbp.reshape(-1, *shape[-2:]),
                scans.sinogram.reshape(-1, *scans.sinogram.shape[-2:]), scans.acquisition,
                index=[(f"{c}/{k}/{s}", int(z)) for c, k, s, z in keys], slices=slices,
                prior=each(prior), prior_organs=each(organs))


def tune(cfg: DictConfig, pairs: Pairs, scans: Scans, prior: np.ndarray) -> dict[str, Any]:
    """TV's weight and PICCS's weight and alpha with the best mean body PSNR on the
    validation pairs (the lesion-present follow-up, first realisation), over the grid
    ``followup.piccs``; alpha 0 is TV."""
    import torch

    from sparsect.physics import hu_to_mu, mu_to_hu
    from sparsect.physics.iterative import piccs
    from sparsect.physics.operator import ct_operator

    grid = cfg.followup.piccs
    window = (float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max))
    reference = (pairs.followup_hu + pairs.new_hu).reshape(-1, *prior.shape[-2:])
    body = body_mask(pairs.followup_labels).reshape(reference.shape)
    sino = torch.from_numpy(scans.sinogram[PRESENT, 0].reshape(-1, *scans.sinogram.shape[-2:]))
    start = torch.from_numpy(np.asarray(hu_to_mu(scans.fbp[PRESENT, 0].reshape(reference.shape)),
                                        np.float32))
    x_p = torch.from_numpy(np.asarray(hu_to_mu(prior.reshape(reference.shape)), np.float32))
    op = ct_operator(scans.acquisition.geometry, "cpu")
    counts = [int(v) for v in grid.iterations]
    trials = []
    for weight in grid.weights:
        for alpha in [0.0, *grid.alphas]:
            out = piccs(op, sino, start, x_p, record=counts, weight=float(weight),
                        alpha=float(alpha))
            for count, images in out.items():
                psnr = body_psnr(mu_to_hu(images.numpy()), reference, body, window)
                trials.append({"weight": float(weight), "alpha": float(alpha),
                               "iterations": count, "psnr": float(np.mean(psnr))})
    best_tv = max((t for t in trials if t["alpha"] == 0.0), key=lambda t: t["psnr"])
    best = max((t for t in trials if t["alpha"] > 0.0), key=lambda t: t["psnr"])
    return {"tv": {k: best_tv[k] for k in ("weight", "iterations")},
            "piccs": {k: best[k] for k in ("weight", "alpha", "iterations")},
            "validation_psnr": {"tv": best_tv["psnr"], "piccs": best["psnr"]},
            "trials": trials, "criterion": "mean body PSNR, validation follow-ups"}


# -- metrics ----------------------------------------------------------------------------

def body_psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray,
              window: tuple[float, float]) -> np.ndarray:
    """Per-slice PSNR (dB) over ``mask`` on HU clipped to ``window``."""
    a = np.clip(image, *window).astype(np.float64)
    b = np.clip(reference, *window).astype(np.float64)
    error = ((a - b) ** 2 * mask).reshape(len(a), -1).sum(1)
    count = np.maximum(mask.reshape(len(a), -1).sum(1), 1)
    mse = np.maximum(error / count, 1e-12)
    return 10 * np.log10((window[1] - window[0]) ** 2 / mse)


def subject_psnr(images: np.ndarray, pairs: Pairs, window: tuple[float, float]
                 ) -> np.ndarray:
    """Body PSNR per subject (the mean over its slices) of ``(S, Z, H, W)`` lesion-present
    follow-ups."""
    reference = pairs.followup_hu + pairs.new_hu
    s, z = reference.shape[:2]
    flat = images.reshape(-1, *images.shape[-2:])
    labels = pairs.followup_labels.reshape(flat.shape)
    return body_psnr(flat, reference.reshape(flat.shape), body_mask(labels),
                     window).reshape(s, z).mean(1)


def image_scores(images: np.ndarray, pairs: Pairs, window: tuple[float, float]
                 ) -> dict[str, Any]:
    """Body PSNR / SSIM and PSNR per organ of ``(S, Z, H, W)`` lesion-present follow-ups,
    per subject, with subject-bootstrap intervals."""
    import torch

    from sparsect.evaluation.metrics import ssim_hu

    reference = pairs.followup_hu + pairs.new_hu
    s, z = reference.shape[:2]
    flat = images.reshape(-1, *images.shape[-2:])
    ref = reference.reshape(flat.shape)
    labels = pairs.followup_labels.reshape(flat.shape)
    psnr = subject_psnr(images, pairs, window)
    ssim = ssim_hu(torch.from_numpy(flat.astype(np.float32)),
                   torch.from_numpy(ref.astype(np.float32)), *window).numpy().reshape(s, z).mean(1)
    subjects = np.arange(s)
    out = {"body_psnr": float(psnr.mean()),
           "body_psnr_ci95": list(task.cluster_bootstrap(lambda r: psnr[r].mean(), subjects)),
           "body_ssim": float(ssim.mean()),
           "body_ssim_ci95": list(task.cluster_bootstrap(lambda r: ssim[r].mean(), subjects)),
           "organ_psnr": {}}
    for organ, names in ORGANS.items():
        mask = np.isin(labels, [ORGAN_LABELS[n] for n in names])
        if mask.sum() < 50:
            continue
        a = np.clip(flat, *window)[mask].astype(np.float64)
        b = np.clip(ref, *window)[mask].astype(np.float64)
        out["organ_psnr"][organ] = float(10 * np.log10((window[1] - window[0]) ** 2
                                                       / max(np.mean((a - b) ** 2), 1e-12)))
    return out


def fwhm_diameter(image: np.ndarray, row: int, col: int, contrast: float, radius_px: float,
                  host: np.ndarray, pixel_mm: float) -> float:
    """Diameter (mm, of the equal-area disc) of the region around ``(row, col)`` above half
    the lesion's peak over its local background (the host's median in a ring 2-5 pixels
    beyond ``radius_px``); NaN where no peak stands out."""
    from scipy import ndimage

    rr, cc = np.mgrid[:image.shape[0], :image.shape[1]]
    distance = np.hypot(rr - row, cc - col)
    ring = (distance > radius_px + 2) & (distance <= radius_px + 5) & host
    if ring.sum() < 5:
        ring = (distance > radius_px + 2) & (distance <= radius_px + 5)
    background = float(np.median(image[ring]))
    signal = np.sign(contrast) * (image - background)
    peak = float(signal[max(0, row - 1):row + 2, max(0, col - 1):col + 2].mean())
    if not peak > 0:
        return float("nan")
    above = (signal >= peak / 2) & (distance <= 2 * radius_px + 3)
    labelled, _ = ndimage.label(above)
    if not above[row, col]:
        return float("nan")
    area = float((labelled == labelled[row, col]).sum())
    return 2.0 * float(np.sqrt(area / np.pi)) * pixel_mm


def changed_scores(images: np.ndarray, pairs: Pairs) -> dict[str, Any]:
    """Grown and shrunk lesions (lesion-present follow-ups, ``(S, Z, H, W)``): the error of
    the half-maximum diameter against the same measure on the reference, and the share of
    the change hidden (0: the new size, 1: the old one)."""
    reference = pairs.followup_hu + pairs.new_hu
    px = pairs.spacing[1]
    errors, hidden, subjects = [], [], []
    for x in pairs.kind("grown", "shrunk"):
        s, z, r, c = x["subject"], x["slice"], x["row"], x["col"]
        host = np.isin(pairs.followup_labels[s, z], HOSTS_FOLLOWUP[x["host"]])
        radius = x["diameter_mm"] / 2 / px
        truth = fwhm_diameter(reference[s, z], r, c, x["contrast_hu"], radius, host, px)
        got = fwhm_diameter(images[s, z], r, c, x["contrast_hu"], radius, host, px)
        old = truth * x["baseline_diameter_mm"] / x["diameter_mm"]
        errors.append(got - truth)
        hidden.append((got - truth) / (old - truth) if old != truth else np.nan)
        subjects.append(s)
    errors, hidden, subjects = np.asarray(errors), np.asarray(hidden), np.asarray(subjects)
    if errors.size == 0:
        return {}
    with warnings.catch_warnings():  # a resample of lesions without a measurable peak
        warnings.simplefilter("ignore", RuntimeWarning)
        return _changed_summary(errors, hidden, subjects)


def _changed_summary(errors: np.ndarray, hidden: np.ndarray, subjects: np.ndarray
                     ) -> dict[str, Any]:
    return {"lesions": int(errors.size), "measured": int(np.isfinite(errors).sum()),
            "diameter_error_mm": float(np.nanmean(errors)),
            "abs_diameter_error_mm": float(np.nanmean(np.abs(errors))),
            "abs_diameter_error_ci95": list(task.cluster_bootstrap(
                lambda rows: np.nanmean(np.abs(errors[rows])), subjects)),
            "change_hidden": float(np.nanmean(hidden)),
            "change_hidden_ci95": list(task.cluster_bootstrap(
                lambda rows: np.nanmean(hidden[rows]), subjects))}


def ghost_footprints(pairs: Pairs) -> list[tuple[dict, np.ndarray, float]]:
    """Each resolved lesion with its true warped footprint on its follow-up centre slice
    (coverage >= half its peak) and its contrast there."""
    out = []
    for x in pairs.kind("resolved"):
        s, z = x["subject"], x["slice"]
        warped = warp(pairs.resolved_hu[s], pairs.field[s], pairs.spacing, order=1, fill=0.0)[z]
        peak = np.abs(warped[x["row"], x["col"]])
        if peak == 0:
            continue
        footprint = np.abs(warped) >= 0.5 * peak
        out.append((x, footprint, float(warped[footprint].mean())))
    return out


def ghost_values(with_lesion: np.ndarray, without: np.ndarray,
                 footprints: list[tuple[dict, np.ndarray, float]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each resolved lesion's ghost contrast (see :func:`ghost_scores`) and its subject."""
    values, subjects = [], []
    for x, footprint, contrast in footprints:
        s, z = x["subject"], x["slice"]
        values.append(float((with_lesion[s, z] - without[s, z])[footprint].mean()) / contrast)
        subjects.append(s)
    return np.asarray(values, float), np.asarray(subjects, int)


def ghost_scores(with_lesion: np.ndarray, without: np.ndarray,
                 footprints: list[tuple[dict, np.ndarray, float]]) -> dict[str, Any]:
    """Ghost contrast of the resolved lesions: ``mean_F(x_with - x_without) / contrast_F``
    on ``(S, Z, H, W)`` reconstructions of the same follow-up data (0: the old lesion left
    no trace; 1: it was copied in full)."""
    values, subjects = ghost_values(with_lesion, without, footprints)
    if values.size == 0:
        return {}
    return {"lesions": int(values.size), "ghost_contrast": float(values.mean()),
            "ci95": list(task.cluster_bootstrap(lambda rows: values[rows].mean(), subjects))}


# -- the evaluation ---------------------------------------------------------------------

def _needed(pairs: Pairs, realisations: int, lesion_study: bool) -> np.ndarray:
    """``(2, K, S, Z)`` slices to reconstruct: every lesion-present slice of the first
    realisation, and (``lesion_study``) each new lesion's centre slice in both classes and
    every realisation."""
    mask = np.zeros((2, realisations, *pairs.followup_hu.shape[:2]), bool)
    mask[PRESENT, 0] = True
    if lesion_study:
        for x in pairs.kind(*NEW_KINDS):
            mask[:, :, x["subject"], x["slice"]] = True
    return mask


def _methods(cfg: DictConfig, settings: dict, models_dir: Path | None,
             prior_models_dir: Path | None = None) -> tuple[list, dict[str, Any]]:
    """The methods without a prior, and the methods that read the earlier scan by name
    (PICCS, the prior itself, and the models of ``prior_models_dir``)."""
    plain: list = [Classical("fbp"), Classical("tv", dict(settings["tv"]))]
    if models_dir is not None and (Path(models_dir) / "summary.json").is_file():
        keep = set(cfg.followup.learned)
        plain.extend(m for m in learned_methods(cfg, models_dir) if m.name in keep)
    prior: dict[str, Any] = {"piccs": PriorImage("piccs", dict(settings["piccs"])),
                             "prior": PriorImage("prior")}
    if prior_models_dir is not None:
        prior.update((m.name, m) for m in learned_methods(cfg, prior_models_dir))
    return plain, prior


@dataclass
class Reconstructions:
    """Every method's ``(2, K, S, Z, H, W)`` images (NaN on slices not needed), their
    extras, the lesion-present first-realisation images made with the baseline without
    its resolved lesions (``ghost``), the priors by kind, the TRE by kind and the resolved
    lesions' footprints."""

    images: dict[str, np.ndarray]
    extra: dict[str, dict]
    ghost: dict[str, np.ndarray]
    priors: dict[str, np.ndarray]
    tre: dict[str, dict]
    footprints: list


def _spread(case_slices: np.ndarray, shape: tuple, images: np.ndarray) -> np.ndarray:
    full = np.full(shape, np.nan, np.float32)
    full.reshape(-1, *shape[-2:])[case_slices] = images
    return full


def _reconstruct(cfg: DictConfig, pairs: Pairs, scans: Scans, plain: list,
                 prior_methods: dict[str, Any], fixed_name: str, registration: dict,
                 workers: int, lesion_kinds: set[str], wrong_patient: bool,
                 segmenter: Any = None, kinds: tuple[str, ...] = PRIOR_KINDS
                 ) -> Reconstructions:
    """Registers the baselines and runs every method, with every kind of prior of
    ``kinds`` (a learned one with the organ map ``segmenter`` gives each kind's prior)."""
    realisations = scans.fbp.shape[1]
    shape = (*scans.fbp.shape[:4], *scans.fbp.shape[-2:])
    s = pairs.subjects
    needed = _needed(pairs, realisations, True)
    rows = np.flatnonzero(needed.reshape(-1))
    case = _case(scans, None, rows)
    images: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for method in plain:
        for name, output in method.apply(case).items():
            images[name], extra[name] = _spread(rows, shape, output.images), dict(output.extra)
    fixed = images["tv"][PRESENT, 0] if fixed_name == "tv" else scans.fbp[PRESENT, 0]
    fields = {"registered": register_all(fixed, scans.baseline, pairs.spacing, registration,
                                         workers)}
    wrong = np.roll(np.arange(s), 1)
    if wrong_patient and s > 1:
        fields["wrong patient"] = register_all(fixed, scans.baseline[wrong], pairs.spacing,
                                               registration, workers)
    fields["unregistered"] = [(identity(fixed.shape[1:]).field, {})] * s
    fields["true field"] = [(pairs.field[i], {}) for i in range(s)]
    tre_by_kind = {kind: tre([f for f, _ in found], pairs) for kind, found in fields.items()
                   if kind != "true field"}
    priors, priors_without = {}, {}
    for kind, found in fields.items():
        order = wrong if kind == "wrong patient" else np.arange(s)
        # beyond the baseline's slab the prior repeats its edge (what it last saw there)
        priors[kind] = np.stack([warp(scans.baseline[order[i]], found[i][0], pairs.spacing)
                                 for i in range(s)])
        priors_without[kind] = np.stack([warp(scans.baseline_without[order[i]], found[i][0],
                                              pairs.spacing) for i in range(s)])
    footprints = ghost_footprints(pairs)
    ghost_mask = np.zeros(needed.shape, bool)
    for x, _, _ in footprints:
        ghost_mask[PRESENT, 0, x["subject"], x["slice"]] = True
    ghost_rows = np.flatnonzero(ghost_mask.reshape(-1))
    ghost: dict[str, np.ndarray] = {}
    learned = any(isinstance(m, Learned) for m in prior_methods.values())
    if learned and segmenter is None:
        raise InputError("A model that reads the earlier scan needs its organ map: give "
                         "--segmenter (the segmenter stage's output).")
    for kind in (k for k in PRIOR_KINDS if k in fields and k in kinds):
        mask = _needed(pairs, realisations, kind in lesion_kinds)
        kind_rows = np.flatnonzero(mask.reshape(-1))
        suffix = "" if kind == "registered" else f" ({kind})"
        organs = organs_without = None
        if learned:
            organs = organ_maps(segmenter, priors[kind])
            organs_without = organ_maps(segmenter, priors_without[kind])
        for method in prior_methods.values():
            case = _case(scans, priors[kind], kind_rows, organs)
            for name, output in method.apply(case).items():
                images[name + suffix] = _spread(kind_rows, shape, output.images)
                extra[name + suffix] = {**output.extra, "prior": kind}
            case = _case(scans, priors_without[kind], ghost_rows, organs_without)
            for name, output in method.apply(case).items():
                ghost[name + suffix] = _spread(ghost_rows, shape, output.images)[PRESENT, 0]
    # a method that reads no prior gives the same image either way: measured, not assumed
    for method in plain:
        for name, output in method.apply(_case(scans, None, ghost_rows)).items():
            ghost[name] = _spread(ghost_rows, shape, output.images)[PRESENT, 0]
    return Reconstructions(images, extra, ghost, priors, tre_by_kind, footprints)


def new_lesion_contrast(image: np.ndarray, pairs: Pairs, kind: str = "new") -> dict[str, Any]:
    """``|CR - 1|`` of the new lesions (or those of ``kind``) from the first realisation's
    lesion-present and lesion-absent images (``(2, K, S, Z, H, W)``): for a pair too small
    for the observer."""
    values = []
    for x in pairs.kind(kind):
        s, z = x["subject"], x["slice"]
        truth = pairs.new_hu[s, z]
        inside = np.abs(truth) >= 0.5 * abs(truth[x["row"], x["col"]])
        if not inside.any():
            continue
        signal = (image[PRESENT, 0, s, z] - image[ABSENT, 0, s, z])[inside].mean()
        values.append(abs(signal / truth[inside].mean() - 1.0))
    return {"lesions": len(values),
            "abs_cr_minus_1": float(np.mean(values)) if values else float("nan")}


def _scores(cfg: DictConfig, pairs: Pairs, result: Reconstructions, observer: bool
            ) -> dict[str, Any]:
    """Every method's scores; the observer (``d'``, AUC) only where ``observer``. The new
    lesions and the lobulated ones (the change no model learned) are scored apart."""
    spec = cfg.followup
    window = (float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max))
    channels = task.laguerre_gauss_channels(int(spec.cohort.roi_px),
                                            float(cfg.study.channel_width_px),
                                            int(cfg.study.channels))
    out: dict[str, Any] = {}
    for name, image in result.images.items():
        present = image[PRESENT, 0]
        out[name] = {**result.extra[name], **image_scores(present, pairs, window),
                     "changed_lesions": changed_scores(present, pairs),
                     "resolved_lesions": ghost_scores(present, result.ghost[name],
                                                      result.footprints)}
        for key, kind in (("new_lesions", "new"), ("lobulated_lesions", "lobulated")):
            lesions = pairs.kind(kind)
            at = image[:, :, [x["subject"] for x in lesions], [x["slice"] for x in lesions]]
            if not (lesions and np.isfinite(at).all()):
                continue
            hosts = [x["host"] for x in lesions]
            if not observer or min(hosts.count(h) for h in hosts) < MIN_OBSERVER_LESIONS:
                out[name][key] = {"lesion_contrast_recovery": new_lesion_contrast(
                    image, pairs, kind)}
                continue
            cohort = Cohort(pairs.followup_hu, pairs.followup_labels, pairs.new_hu, lesions,
                            pairs.spacing[1], pairs.spacing[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                scores = lesion_scores(image, cohort, channels, int(spec.cohort.roi_px))
            if np.array_equal(at[ABSENT], at[PRESENT]):
                # the images do not change with the lesion: no observer can see it
                scores["detectability"].update(
                    d_prime=0.0, d_prime_ci95=[0.0, 0.0], auc=0.5, auc_ci95=[0.5, 0.5],
                    note="lesion-present and lesion-absent images are identical")
            out[name][key] = scores
    return out


def real_pair(cfg: DictConfig, entry: Any) -> tuple[str, Pairs, dict]:
    """A pair made from a real scan (``data.io.find_scans`` entry): the follow-up is the scan
    deformed, with lesions inserted as in the cohort; the baseline a smoothed copy
    (``followup.real.baseline_smoothing_px``), re-acquired at full dose in :func:`acquire`.
    Its margin along z holds the largest z motion; the slab is what is left."""
    from sparsect.data.followup import FollowupSpec, make_pair
    from sparsect.data.io import axial_slices, load_subject, standardise
    from sparsect.physics.acquisition import scan_key
    from sparsect.priors.organ_map import organ_labels
    from sparsect.priors.totalsegmentator import STRUCTURES_V2
    from sparsect.stages.followup_cohort import followup_spec

    data = cfg.data
    subject = standardise(load_subject(entry), int(data.image_size), float(data.pixel_size_mm),
                          tuple(data.hu_clip))
    hu = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    labels = (axial_slices(subject["labels"].data[0].numpy()).astype(np.int64)
              if "labels" in subject else None)
    organs = organ_labels(hu, labels, STRUCTURES_V2 if labels is not None else None)
    slice_mm = float(subject["ct"].spacing[2])
    spec = followup_spec(cfg)
    reach = spec.shift_mm / np.sqrt(3.0) + spec.elastic_mm / 2 + slice_mm
    margin = int(np.ceil(reach / slice_mm))
    if hu.shape[0] - 2 * margin < 3:
        raise InputError(f"Real scan '{entry.scan}' has {hu.shape[0]} slices of {slice_mm} mm: "
                         f"a follow-up pair needs {2 * margin + 3}; give a longer scan.")
    spec = FollowupSpec(**{**{k: getattr(spec, k) for k in spec.__dataclass_fields__},
                           "subjects": 1, "slices": hu.shape[0] - 2 * margin,
                           "margin_slices": margin})
    spacing = (slice_mm, float(data.pixel_size_mm), float(data.pixel_size_mm))
    key = scan_key(entry.subject)
    pair = make_pair(hu, organs, spec, spacing, key, 0,
                     float(cfg.followup.real.baseline_smoothing_px))
    arrays = {name: getattr(pair, name)[None] for name in ARRAYS}
    info = {"scan": str(entry.scan), "organ_map": labels is not None, "slice_mm": slice_mm,
            "slices": int(spec.slices), "motion": pair.motion,
            "lesions": {k: sum(x["kind"] == k for x in pair.lesions)
                        for k in sorted({x["kind"] for x in pair.lesions})},
            "hosts": sorted({x["host"] for x in pair.lesions}), "key": key}
    return entry.subject, Pairs(arrays, pair.lesions, spacing), info


def real_pairs_scores(cfg: DictConfig, scans_dir: Path, views: int, plain: list,
                      prior_methods: dict, fixed_name: str, registration: dict,
                      workers: int, segmenter: Any = None) -> dict[str, Any]:
    """Every method on the pair of each real scan of ``scans_dir`` but those of
    ``followup.real.exclude`` (a second scan of a patient already there), per scan
    (descriptive: one patient each, no observer)."""
    from sparsect.data.io import find_scans

    out: dict[str, Any] = {}
    skip = set(cfg.followup.real.exclude)
    for entry in find_scans(Path(scans_dir)):
        if entry.subject in skip:
            continue
        name, pairs, info = real_pair(cfg, entry)
        scans = acquire(cfg, pairs, views, 2, "test", scan=info["key"])
        result = _reconstruct(cfg, pairs, scans, plain, prior_methods, fixed_name, registration,
                              workers, {"registered", "true field"}, wrong_patient=False,
                              segmenter=segmenter)
        out[name] = {**_scores(cfg, pairs, result, observer=False),
                     "_pair": {**info, "tre_mm": result.tre}}
    return out


def followup(cfg: DictConfig, cohort_dir: Path, views: int, out_dir: Path,
             models_dir: Path | None = None, images_dir: Path | None = None,
             scans_dir: Path | None = None, prior_models_dir: Path | None = None,
             segmenter_dir: Path | None = None) -> dict[str, Any]:
    """Scores every method on the follow-up cohort at ``views`` (and on the pair made from
    each real scan of ``scans_dir``); writes ``metrics.json`` and ``panels.png`` into
    ``out_dir``. ``prior_models_dir``: a ``followup_train@V`` output, whose models read
    the registered earlier scan and its organ map (the segmenter of ``segmenter_dir``)."""
    spec = cfg.followup
    realisations = int(spec.realisations)
    if realisations < 2:
        raise InputError(f"followup.realisations={realisations}: the observer needs >= 2.")
    workers = workers_from_cfg(cfg)
    registration = dict(OmegaConf.to_container(spec.registration, resolve=True))
    fixed_options = registration.pop("fixed")
    # -- validation: the registration's fixed image, TV's and PICCS's settings
    val = load_pairs(cohort_dir, "val")
    val_scans = acquire(cfg, val, views, 1, "val")
    val_fixed = {"fbp": val_scans.fbp[PRESENT, 0]}
    if "tv" in fixed_options:
        default_tv = Classical("tv", {"weight": float(spec.registration_tv_weight),
                                      "iterations": 100})
        flat = default_tv.apply(_case(val_scans, None, np.flatnonzero(
            _needed(val, 1, False).reshape(-1))))["tv"].images
        val_fixed["tv"] = flat.reshape(val_scans.fbp.shape[2:])
    val_registered = {name: register_all(fixed, val_scans.baseline, val.spacing, registration,
                                         workers) for name, fixed in val_fixed.items()}
    val_tre = {name: tre([f for f, _ in found], val) for name, found in val_registered.items()}
    fixed_name = min(val_tre, key=lambda name: val_tre[name]["3d_mean"])
    val_fields = val_registered[fixed_name]
    val_prior = np.stack([warp(b, f, val.spacing)
                          for b, (f, _) in zip(val_scans.baseline, val_fields, strict=True)])
    settings = tune(cfg, val, val_scans, val_prior)
    # -- the test cohort
    pairs = load_pairs(cohort_dir, "test", spec.get("subjects"))
    scans = acquire(cfg, pairs, views, realisations, "test")
    plain, prior_methods = _methods(cfg, settings, models_dir, prior_models_dir)
    segmenter = None
    if prior_models_dir is not None:
        from sparsect.models.segmenter import load_segmenter

        if segmenter_dir is None:
            raise InputError("--prior-models needs --segmenter: the organ map of the earlier "
                             "scan comes from the segmenter stage's output.")
        segmenter = load_segmenter(Path(segmenter_dir) / "segmenter.ckpt")
    result = _reconstruct(cfg, pairs, scans, plain, prior_methods, fixed_name, registration,
                          workers, set(spec.lesion_study_priors), wrong_patient=True,
                          segmenter=segmenter)
    if images_dir is not None:
        from sparsect.methods.loading import write_images

        write_images(images_dir, result.images)
    out = _scores(cfg, pairs, result, observer=True)
    tre_test = result.tre
    images, priors = result.images, result.priors
    kinds = [x["kind"] for x in pairs.lesions]
    out["_followup"] = {
        "views": int(views), "subjects": pairs.subjects,
        "slices_per_subject": int(pairs.followup_hu.shape[1]),
        "lesions": {k: kinds.count(k) for k in sorted(set(kinds))},
        "realisations": realisations,
        "observer": {"train": f"realisations 0-{realisations // 2 - 1}",
                     "test": f"realisations {realisations // 2}-{realisations - 1}"},
        "baseline": {"views": int(spec.baseline_views), "i0": float(cfg.study.full_dose_i0),
                     "filter": str(spec.baseline_filter)},
        "registration": {"fixed": fixed_name, "validation_tre_mm": val_tre,
                         "test_tre_mm": tre_test, "settings": registration},
        "tuning": settings,
    }
    if scans_dir is not None:
        out["_real"] = real_pairs_scores(cfg, scans_dir, views, plain, prior_methods,
                                         fixed_name, registration, workers, segmenter)
    out = json.loads(json.dumps(out, default=float))
    with atomic_dir(Path(out_dir)) as tmp:
        atomic_write_json(tmp / "metrics.json", out)
        _panels(tmp / "panels.png", pairs, images, priors["true field"], scans, views)
    return out


def _panels(path: Path, pairs: Pairs, images: dict[str, np.ndarray], warped_truth: np.ndarray,
            scans: Scans, views: int) -> None:
    """Per subject (the first two with a new or resolved lesion): the follow-up reference,
    the true change since the baseline, FBP, TV, PICCS, PICCS's prior influence (PICCS -
    TV), and the first two learned models, on a soft-tissue window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    del warped_truth  # the change map uses the noiseless baseline, warped with the truth
    picks = []
    for x in pairs.kind("new", "resolved"):
        if (x["subject"], x["slice"]) not in picks and len(picks) < 2:
            picks.append((x["subject"], x["slice"]))
    # the first learned model without a prior and the first that reads it
    learned = [n for n in images if n not in ("fbp", "tv", "piccs", "prior")
               and "(" not in n and not n.endswith("+dc")][:2]
    columns = ["reference", "true change", "fbp", "tv", "piccs", "piccs - tv", *learned]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.2 * len(columns),
                                                                2.4 * len(picks)), squeeze=False)
    reference = pairs.followup_hu + pairs.new_hu
    for row, (s, z) in enumerate(picks):
        truth_base = warp(pairs.baseline_hu[s], pairs.field[s], pairs.spacing, fill=-1000.0)[z]
        panels = {"reference": reference[s, z], "true change": reference[s, z] - truth_base,
                  "piccs - tv": images["piccs"][PRESENT, 0, s, z] - images["tv"][PRESENT, 0, s, z],
                  **{n: images[n][PRESENT, 0, s, z] for n in ("fbp", "tv", "piccs", *learned)}}
        for col, name in enumerate(columns):
            ax = axes[row, col]
            difference = name in ("true change", "piccs - tv")
            ax.imshow(panels[name], cmap="coolwarm" if difference else "gray",
                      vmin=-100 if difference else -160, vmax=100 if difference else 240)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(f"follow-up at {views} views (difference panels: -100 to 100 HU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
