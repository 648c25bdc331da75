import math

import torch

from sparsect.evaluation.metrics import dice_per_class, mean_dice, psnr_hu, rmse_hu, ssim_hu


def test_psnr_uses_the_fixed_window_range():
    target = torch.zeros(2, 8, 8)
    pred = target + 30.0  # 30 HU everywhere
    psnr = psnr_hu(pred, target, -1000.0, 2000.0)
    assert torch.allclose(psnr, torch.full((2,), 20 * math.log10(3000 / 30)), atol=1e-4)
    # values outside the window are clipped before comparison
    assert torch.isinf(psnr_hu(target + 5000, target + 3000, -1000, 2000)).all() or \
        psnr_hu(target + 5000, target + 3000, -1000, 2000).min() > 100


def test_ssim_and_rmse():
    torch.manual_seed(0)
    target = torch.randn(3, 32, 32) * 200
    assert torch.allclose(ssim_hu(target, target, -1000, 2000), torch.ones(3), atol=1e-5)
    noisy = target + torch.randn_like(target) * 100
    assert (ssim_hu(noisy, target, -1000, 2000) < 0.99).all()
    assert torch.allclose(rmse_hu(target + 10, target), torch.full((3,), 10.0), atol=1e-3)


def test_dice():
    true = torch.tensor([[[0, 1], [1, 2]]])
    assert torch.allclose(mean_dice(true, true, 3), torch.ones(1))
    pred = torch.tensor([[[0, 1], [2, 2]]])
    dice = dice_per_class(pred, true, 4)
    assert torch.isclose(dice[0, 1], torch.tensor(2 / 3))
    assert torch.isclose(dice[0, 2], torch.tensor(2 / 3))
    assert torch.isnan(dice[0, 3])  # absent from both: not counted as perfect
