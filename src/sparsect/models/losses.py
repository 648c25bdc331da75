"""Training losses.

``ssim`` here is a separable-Gaussian SSIM for the loss. It gives the same value
as torchmetrics' SSIM (a test checks it) at a fraction of the cost of its
backward pass, which dominated a CPU training step. Reported metrics still use
torchmetrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float,
         size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of ``(B, 1, H, W)`` images (reflect-padded, as torchmetrics computes it)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    kernel = _gaussian(size, sigma, pred.device, pred.dtype)
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    channels = stack.shape[1]
    rows = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    pad = (size - 1) // 2
    stack = F.pad(stack, (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(F.conv2d(stack, rows, groups=channels), cols, groups=channels)
    mu_p, mu_t, e_pp, e_tt, e_pt = blurred.unbind(dim=1)
    # variances clamped at zero as torchmetrics does (float round-off can make them negative)
    var_p, var_t = (e_pp - mu_p**2).clamp_min(0), (e_tt - mu_t**2).clamp_min(0)
    cov = e_pt - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / (
        (mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)
    )
    return ssim_map.mean()


def soft_dice_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    present = one_hot.sum(dims) > 0
    dice = (2 * intersection + 1.0) / (total + 1.0)
    return 1 - dice[present].mean()
