import torch

from sparsect.models.losses import soft_dice_loss, ssim
from sparsect.models.module import ReconModule
from sparsect.models.unet import SGUNet, UNet


def test_residual_models_start_as_identity():
    fbp = torch.randn(2, 1, 32, 32)
    assert torch.equal(UNet(channels=4, depth=3)(fbp), fbp)
    recon, logits = SGUNet(channels=4, depth=3, seg_channels=4)(fbp)
    assert torch.equal(recon, fbp)
    assert logits.shape == (2, 5, 32, 32)


def test_sg_unet_is_conditioned_on_the_prior():
    torch.manual_seed(0)
    model = SGUNet(channels=4, depth=3, seg_channels=4)
    torch.nn.init.normal_(model.head.weight)
    for spade in model.decoder.spades:
        torch.nn.init.normal_(spade.gamma.weight)
    fbp = torch.randn(1, 1, 32, 32)
    prior_a = torch.zeros(1, 5, 32, 32)
    prior_a[:, 1] = 1
    prior_b = torch.zeros(1, 5, 32, 32)
    prior_b[:, 3] = 1
    out_a, _ = model(fbp, prior_a)
    out_b, _ = model(fbp, prior_b)
    assert not torch.allclose(out_a, out_b)


def test_module_variants_and_hu_round_trip():
    module = ReconModule(net={"_target_": "sparsect.models.unet.UNet", "channels": 4,
                              "depth": 3})
    fbp_hu = torch.randn(2, 1, 32, 32) * 500
    recon_hu, probs = module.reconstruct_hu(fbp_hu)
    assert probs is None
    assert torch.allclose(recon_hu, fbp_hu, atol=1e-3)  # zero-initialised residual
    module = ReconModule(net={"_target_": "sparsect.models.unet.SGUNet", "channels": 4,
                              "depth": 3, "seg_channels": 4}, prior="predicted")
    recon_hu, probs = module.reconstruct_hu(fbp_hu)
    assert probs.shape == (2, 5, 32, 32)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_dice_loss_rewards_the_right_segmentation():
    classes = torch.randint(0, 5, (2, 16, 16))
    good = torch.nn.functional.one_hot(classes, 5).permute(0, 3, 1, 2).float() * 20
    bad = torch.roll(good, 1, dims=1)
    assert soft_dice_loss(good, classes) < 0.05 < soft_dice_loss(bad, classes)


def test_fast_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    torch.manual_seed(0)
    target = torch.rand(3, 1, 48, 40)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    expected = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert torch.isclose(ssim(pred, target, data_range=1.0), expected, atol=1e-4)
    assert torch.isclose(ssim(target, target, data_range=1.0), torch.tensor(1.0), atol=1e-6)


def test_networks_run_channels_last_and_return_ordinary_tensors(monkeypatch):
    import sparsect.models.unet as unet

    for build in (lambda: UNet(in_channels=3, channels=8, depth=3),
                  lambda: SGUNet(in_channels=3, channels=8, depth=3, seg_channels=4)):
        torch.manual_seed(0)
        net = build()
        for parameter in net.parameters():
            if parameter.ndim == 4 and parameter.shape[1] > 1:
                assert parameter.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # a trained-looking head, so the output depends on the weights
            net.head.weight.normal_()
        x = torch.randn(2, 3, 32, 32, requires_grad=True)
        out = net(x)
        recon = out[0] if isinstance(out, tuple) else out
        assert recon.is_contiguous() and recon.shape == (2, 1, 32, 32)
        recon.sum().backward()
        assert x.grad is not None and x.grad.is_contiguous()
        # the same numbers as the ordinary layout throughout
        with monkeypatch.context() as patch:
            patch.setattr(unet, "CHANNELS_LAST", torch.contiguous_format)
            plain = build()
            plain.load_state_dict(net.state_dict())
            assert all(p.is_contiguous() for p in plain.parameters())
            expected = plain(x.detach())
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(recon.detach(), expected, rtol=1e-4, atol=1e-5)
