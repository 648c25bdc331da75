"""The model that reads an earlier scan (``prior: scan``, ``prior_unet``): its input, that
its output depends on the prior, that a trained one keeps what the data show and the prior
lacks, and the endpoint's decision rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsect.errors import InputError
from sparsect.models.module import ReconModule
from sparsect.models.predict import predict
from sparsect.models.unet import PriorUNet
from sparsect.priors.organs import ORGAN_CLASSES, scan_prior

SIZE = 32


def _module(channels: int = 8, depth: int = 3, seed: int = 0, scramble: bool = True
            ) -> ReconModule:
    torch.manual_seed(seed)
    module = ReconModule(net={"_target_": "sparsect.models.unet.PriorUNet", "in_channels": 1,
                              "channels": channels, "depth": depth}, prior="scan",
                         variant="prior_unet", loss={"l1": 0.0, "mse": 10.0, "ssim": 0.0})
    if scramble:  # every weight matters (the residual head starts at zero)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.normal_(0.0, 0.2)
    return module.eval()


def _scene(rng: np.random.Generator, lesions: list[tuple[int, int, int, float]]
           ) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + 0.5
    image = np.where(xx**2 + yy**2 < 13**2, 40.0, -1000.0).astype(np.float32)
    for row, col, radius, contrast in lesions:
        image[(yy - row) ** 2 + (xx - col) ** 2 < radius**2] += contrast
    return image


def _organs(prior_hu: np.ndarray) -> np.ndarray:
    return np.where(prior_hu > -500, 1, 0).astype(np.uint8)  # body and background


def test_scan_prior_holds_the_scan_then_the_organ_map_one_hot():
    prior = np.full((2, 4, 4), 40.0, np.float32)
    organs = np.zeros((2, 4, 4), np.uint8)
    organs[:, 1:3, 1:3] = 3
    out = scan_prior(prior, organs)
    assert out.shape == (2, 1 + ORGAN_CLASSES, 4, 4)
    assert np.allclose(out[:, 0], 0.04)
    assert out[0, 1 + 3, 1, 1] == 1.0 and out[0, 1 + 0, 0, 0] == 1.0
    assert np.allclose(out[:, 1:].sum(1), 1.0)
    with pytest.raises(ValueError, match="organ classes must lie"):
        scan_prior(prior, organs + ORGAN_CLASSES)
    with pytest.raises(ValueError, match="must match"):
        scan_prior(prior, organs[:, :2])


def test_the_output_depends_on_the_earlier_scan_and_its_organ_map():
    module = _module()
    rng = np.random.default_rng(0)
    fbp = _scene(rng, [(2, 3, 3, 200.0)])[None] + rng.normal(0, 30, (1, SIZE, SIZE))
    prior = _scene(rng, [(2, 3, 3, 200.0)])[None]
    organs = _organs(prior)
    base = predict(module, fbp, prior_scan=prior, prior_organs=organs).images
    changed_scan = predict(module, fbp, prior_scan=prior + 100.0, prior_organs=organs).images
    changed_map = predict(module, fbp, prior_scan=prior, prior_organs=organs * 0 + 4).images
    assert np.abs(changed_scan - base).mean() > 0.1  # a network that ignored it: 0
    assert np.abs(changed_map - base).mean() > 0.1
    # the network's own check of its input
    with pytest.raises(ValueError, match="prior of 11 channels"):
        PriorUNet(channels=4, depth=2)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 5, 8, 8))


def test_a_scan_model_needs_its_prior_and_others_refuse_one():
    module = _module()
    fbp = np.zeros((1, SIZE, SIZE), np.float32)
    with pytest.raises(InputError, match="reads an earlier scan and its organ map"):
        predict(module, fbp)
    with pytest.raises(InputError, match="reads an earlier scan and its organ map"):
        predict(module, fbp, prior_scan=fbp)
    other = ReconModule(net={"_target_": "sparsect.models.unet.UNet", "channels": 4,
                             "depth": 2}, prior="none").eval()
    with pytest.raises(InputError, match="reads no earlier scan"):
        predict(other, fbp, prior_scan=fbp, prior_organs=fbp.astype(np.uint8))


def _training_set(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Follow-ups with lesions the prior may lack (new) and the prior with lesions the
    follow-up lacks (resolved); the FBP is the follow-up under heavy noise, the prior
    a cleaner, slightly shifted scan."""
    fbp, target, prior = [], [], []
    for _ in range(count):
        lesions = [(int(rng.integers(-7, 8)), int(rng.integers(-7, 8)), int(rng.integers(2, 4)),
                    float(rng.choice([-1, 1]) * rng.uniform(150, 300)))
                   for _ in range(int(rng.integers(1, 3)))]
        in_prior = [x for x in lesions if rng.uniform() < 0.5]
        if rng.uniform() < 0.4:  # resolved since the earlier scan
            in_prior.append((int(rng.integers(-7, 8)), int(rng.integers(-7, 8)), 3, 250.0))
        truth = _scene(rng, lesions)
        target.append(truth)
        fbp.append(truth + rng.normal(0, 80, truth.shape).astype(np.float32))
        earlier = np.roll(_scene(rng, in_prior), int(rng.integers(-1, 2)), axis=1)
        prior.append(earlier + rng.normal(0, 10, truth.shape).astype(np.float32))
    fbp, target, prior = (np.stack(x).astype(np.float32) for x in (fbp, target, prior))
    return {"fbp_hu": fbp, "target_hu": target, "masks": np.zeros(fbp.shape, np.int64),
            "prior_scan": prior, "prior_organs": _organs(prior)}


@pytest.mark.slow
def test_a_trained_model_keeps_what_the_data_show_and_the_prior_lacks(tmp_path):
    import pytorch_lightning as pl

    from sparsect.data.datamodule import ArrayDataModule

    rng = np.random.default_rng(1)
    data = ArrayDataModule(_training_set(rng, 384), _training_set(rng, 32), batch_size=16,
                           augment=True, seed=0)
    pl.seed_everything(0, verbose=False)
    module = _module(scramble=False)
    module.train()
    trainer = pl.Trainer(max_epochs=12, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    module.eval()
    # a new lesion: in the follow-up's data, not in the earlier scan
    lesion = (3, -4, 3, 250.0)
    truth = _scene(rng, [lesion])
    noise = np.random.default_rng(7).normal(0, 80, (16, SIZE, SIZE)).astype(np.float32)
    fbp = truth[None] + noise
    without = np.repeat(_scene(rng, [])[None], 16, 0)
    with_lesion = np.repeat(truth[None], 16, 0)
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + 0.5
    inside = (yy - lesion[0]) ** 2 + (xx - lesion[1]) ** 2 < (lesion[2] - 1) ** 2
    ring = ((yy - lesion[0]) ** 2 + (xx - lesion[1]) ** 2 > 5**2) & (xx**2 + yy**2 < 11**2)

    def contrast(prior: np.ndarray) -> float:
        out = predict(module, fbp, prior_scan=prior, prior_organs=_organs(prior)).images
        return float(np.mean([o[inside].mean() - o[ring].mean() for o in out]))

    kept, copied = contrast(without), contrast(with_lesion)
    assert kept > 0.6 * lesion[3], (kept, copied)  # the data win where they disagree
    assert copied > 0.6 * lesion[3]
    # and the prior is read: a resolved lesion (prior only) is not copied in full
    resolved = np.repeat(_scene(rng, [(-5, 5, 3, 250.0)])[None], 16, 0)
    empty = np.repeat(_scene(rng, [])[None], 16, 0) + noise
    out = predict(module, empty, prior_scan=resolved, prior_organs=_organs(resolved)).images
    inside_old = (yy + 5) ** 2 + (xx - 5) ** 2 < 2**2
    ghost = float(np.mean([o[inside_old].mean() - o[ring].mean() for o in out]))
    assert ghost < 0.5 * 250.0, ghost
    # and the output depends on the prior (a trained network that ignored it would not)
    assert np.abs(predict(module, empty, prior_scan=without, prior_organs=_organs(without))
                  .images - out).mean() > 0.5


def test_the_endpoint_decision_rules():
    from sparsect.stages.followup_endpoint import d_prime_bootstrap, decide

    # efficacy: strictly above 0; safety: the bound and the width rule
    assert decide([0.1, 0.5], 0.0, "lower", False, strict=True) == "met"
    assert decide([0.0, 0.5], 0.0, "lower", False, strict=True) == "not shown"
    assert decide([-0.5, -0.1], 0.0, "lower", False, strict=True) == "failed"
    assert decide([-0.05, 0.03], -0.10, "lower", True) == "met"
    assert decide([-0.05, 0.30], -0.10, "lower", True) == "not shown"  # too wide to decide
    assert decide([-0.40, -0.20], -0.10, "lower", True) == "failed"
    assert decide([0.02, 0.08], 0.10, "upper", True) == "met"
    assert decide([0.12, 0.15], 0.10, "upper", True) == "failed"
    assert decide([float("nan"), 0.0], 0.10, "upper", True) == "not shown"
    # identical observers differ by nothing, in every resample
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 4)
    scores = [{"score_p": rng.normal(1, 1, 24), "score_a": rng.normal(0, 1, 24),
               "groups": groups} for _ in range(3)]
    same = d_prime_bootstrap(scores, scores, 6, 200)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    better = [{**s, "score_p": s["score_p"] + 1.0} for s in scores]
    gain = d_prime_bootstrap(better, scores, 6, 200)
    assert gain["mean"] > 0.5 and gain["ci95"][0] > 0
