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
