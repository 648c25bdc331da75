"""Image-quality metrics on a fixed HU window.

PSNR and SSIM use one ``data_range`` for every image (``hu_max - hu_min`` after
clipping to that window): a per-image range, as some benchmarks use, makes
numbers incomparable across images and methods. Metrics are per slice, so a
mean and a confidence interval over slices can be reported.

Only torch and torchmetrics are needed here (the training step uses them too).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure


def _window(hu: torch.Tensor, hu_min: float, hu_max: float) -> torch.Tensor:
    hu = hu.float()
    if hu.ndim == 3:
        hu = hu.unsqueeze(1)
    return hu.clamp(hu_min, hu_max)


def psnr_hu(pred: torch.Tensor, target: torch.Tensor, hu_min: float, hu_max: float) -> torch.Tensor:
    """Per-slice PSNR in dB on HU clipped to ``[hu_min, hu_max]``.

    Args:
        pred, target: ``(N, H, W)`` or ``(N, 1, H, W)`` in HU.

    Returns:
        ``(N,)`` PSNR with ``data_range = hu_max - hu_min``.
    """
    pred, target = _window(pred, hu_min, hu_max), _window(target, hu_min, hu_max)
    mse = ((pred - target) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10 * torch.log10((hu_max - hu_min) ** 2 / mse)


def ssim_hu(pred: torch.Tensor, target: torch.Tensor, hu_min: float, hu_max: float) -> torch.Tensor:
    """Per-slice SSIM (Gaussian window 11, sigma 1.5) on the same fixed window."""
    pred, target = _window(pred, hu_min, hu_max), _window(target, hu_min, hu_max)
    return structural_similarity_index_measure(
        pred, target, data_range=hu_max - hu_min, reduction="none"
    )


def rmse_hu(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-slice root-mean-square error in HU (no window)."""
    return ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1).sqrt()


def dice_per_class(pred_classes: torch.Tensor, true_classes: torch.Tensor,
                   num_classes: int) -> torch.Tensor:
    """Dice per slice and class, ``(N, C)``; NaN where a class is absent from both."""
    pred = torch.nn.functional.one_hot(pred_classes.long(), num_classes).flatten(1, -2).float()
    true = torch.nn.functional.one_hot(true_classes.long(), num_classes).flatten(1, -2).float()
    intersection = (pred * true).sum(dim=1)
    total = pred.sum(dim=1) + true.sum(dim=1)
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.nan)


def mean_dice(pred_classes: torch.Tensor, true_classes: torch.Tensor, num_classes: int,
              skip_background: bool = True) -> torch.Tensor:
    """Per-slice Dice averaged over the classes present (background skipped by default)."""
    dice = dice_per_class(pred_classes, true_classes, num_classes)
    if skip_background:
        dice = dice[:, 1:]
    return torch.nanmean(dice, dim=1)
