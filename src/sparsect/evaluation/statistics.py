"""Per-slice metric tables, per-region metrics and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from sparsect.priors.classes import BACKGROUND, BONE, LUNG, SOFT_TISSUE

# Regions from the full-dose masks. "body" is everything inside the patient.
REGIONS = {"lung": (LUNG,), "soft_tissue": (SOFT_TISSUE,), "bone": (BONE,), "body": None}
MIN_REGION_PIXELS = 20  # fewer pixels of a class in a slice: that slice is skipped for it


def region_masks(classes: np.ndarray) -> dict[str, np.ndarray]:
    """``(N, H, W)`` tissue classes -> region name -> boolean ``(N, H, W)``."""
    out = {}
    for name, members in REGIONS.items():
        out[name] = classes != BACKGROUND if members is None else np.isin(classes, members)
    return out


def per_slice_region_metrics(pred: np.ndarray, target: np.ndarray, regions: dict[str, np.ndarray],
                             hu_min: float, hu_max: float) -> dict[str, dict[str, np.ndarray]]:
    """PSNR, SSIM and RMSE restricted to each region, per slice (NaN where too small).

    PSNR uses the same fixed window and data range as the whole-image PSNR; SSIM
    is the mean of the SSIM map over the region's pixels.
    """
    pred_w = np.clip(pred, hu_min, hu_max)
    target_w = np.clip(target, hu_min, hu_max)
    ssim_map = structural_similarity_index_measure(
        torch.from_numpy(pred_w)[:, None].float(), torch.from_numpy(target_w)[:, None].float(),
        data_range=hu_max - hu_min, reduction="none", return_full_image=True)[1][:, 0].numpy()
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, mask in regions.items():
        count = mask.sum(axis=(1, 2))
        valid = count >= MIN_REGION_PIXELS
        safe = np.maximum(count, 1)
        mse_w = (((pred_w - target_w) ** 2) * mask).sum(axis=(1, 2)) / safe
        mse = (((pred - target) ** 2) * mask).sum(axis=(1, 2)) / safe
        with np.errstate(divide="ignore"):
            psnr = 10 * np.log10((hu_max - hu_min) ** 2 / np.maximum(mse_w, 1e-12))
        out[name] = {
            "psnr": np.where(valid, psnr, np.nan),
            "ssim": np.where(valid, (ssim_map * mask).sum(axis=(1, 2)) / safe, np.nan),
            "rmse_hu": np.where(valid, np.sqrt(mse), np.nan),
        }
    return out


def bootstrap_ci(values: np.ndarray, groups: np.ndarray | None = None, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling slices (or whole groups).

    With ``groups`` (the subject of each slice) whole subjects are resampled,
    which respects the correlation between slices of one patient.

    >>> lo, hi = bootstrap_ci(np.arange(100.0))
    >>> bool(lo < 49.5 < hi)
    True
    """
    values = np.asarray(values, float)
    keep = np.isfinite(values)
    values = values[keep]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        samples = rng.integers(0, values.size, (resamples, values.size))
        means = values[samples].mean(axis=1)
    else:
        groups = np.asarray(groups)[keep]
        names = np.unique(groups)
        members = [values[groups == name] for name in names]
        picks = rng.integers(0, len(names), (resamples, len(names)))
        means = np.array([np.concatenate([members[i] for i in row]).mean() for row in picks])
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarise(values: np.ndarray, subjects: np.ndarray, seed: int = 0) -> dict[str, object]:
    """Mean, slice-bootstrap CI, subject-bootstrap CI and per-subject means."""
    values = np.asarray(values, float)
    per_subject = {str(s): float(np.nanmean(values[subjects == s])) for s in np.unique(subjects)}
    return {
        "mean": float(np.nanmean(values)),
        "ci95": list(bootstrap_ci(values, seed=seed)),
        "ci95_by_subject": list(bootstrap_ci(values, subjects, seed=seed)),
        "by_subject": per_subject,
    }


NOISE_WINDOW = 5
"""Side (pixels) of the square windows :func:`reference_noise_sd` measures in."""
SOFT_TISSUE_HU = (0.0, 100.0)
"""HU range of the uniform soft tissue (muscle, liver, spleen) the noise is measured in."""


def reference_noise_sd(hu: np.ndarray, body: np.ndarray, window: int = NOISE_WINDOW) -> float:
    """Noise level of reference images: median standard deviation (HU) over the
    ``window`` x ``window`` squares that lie wholly in soft tissue inside the body.

    A real scan's reference is itself noisy; that noise caps any method's PSNR against
    it and penalises a method for denoising. In a noiseless phantom this measures the
    organs' texture instead. NaN when no such square exists.

    >>> rng = np.random.default_rng(0)
    >>> hu = np.full((1, 64, 64), -1000.0); hu[0, 8:56, 8:56] = 50 + rng.normal(0, 10, (48, 48))
    >>> body = hu > -500
    >>> 8.5 < reference_noise_sd(hu, body) < 11.0
    True
    """
    from scipy import ndimage

    hu = np.asarray(hu, np.float64)
    lo, hi = SOFT_TISSUE_HU
    inside = (hu >= lo - 50.0) & (hu <= hi + 50.0) & np.asarray(body, bool)
    size = (1, window, window)
    full = ndimage.minimum_filter(inside.astype(np.uint8), size=size, mode="constant") > 0
    mean = ndimage.uniform_filter(hu, size=size, mode="nearest")
    full &= (mean >= lo) & (mean <= hi)
    if not full.any():
        return float("nan")
    square = ndimage.uniform_filter(hu * hu, size=size, mode="nearest")
    var = np.maximum(square - mean * mean, 0.0) * window * window / (window * window - 1)
    return float(np.median(np.sqrt(var[full])))
