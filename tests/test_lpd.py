"""Learned Primal-Dual and the data-consistency step: the measurements reach the image."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsect.data.datamodule import SliceDataset
from sparsect.errors import InputError
from sparsect.models.checkpoint import load_module
from sparsect.models.consistency import choose, conjugate_gradient, residual, tune
from sparsect.models.lpd import LearnedPrimalDual, SGLearnedPrimalDual
from sparsect.models.module import ReconModule
from sparsect.models.predict import predict
from sparsect.physics import Geometry, NoiseModel, hu_to_mu
from sparsect.physics.operator import ct_operator
from sparsect.serving import ReconstructionModel

GEOMETRY = Geometry("parallel", views=16, image_size=32, pixel_size_mm=12.0)
LPD = {"_target_": "sparsect.models.lpd.LearnedPrimalDual", "channels": 4, "iterations": 3}
SG_LPD = {"_target_": "sparsect.models.lpd.SGLearnedPrimalDual", "channels": 4,
          "iterations": 3, "depth": 3, "seg_channels": 4}
ACQUISITION = {"upsample": 2, "filter": "ram-lak", "hu_clip": [-1024.0, 3071.0]}


def phantoms(count: int = 4) -> np.ndarray:
    """Discs of soft tissue with a bone and a lung insert that move from slice to slice."""
    size = GEOMETRY.image_size
    yy, xx = np.mgrid[:size, :size] - size / 2
    out = []
    for z in range(count):
        hu = np.full((size, size), -1000.0, np.float32)
        hu[xx**2 + yy**2 < 13**2] = 40.0
        hu[(xx - 4 + z) ** 2 + yy**2 < 9] = 900.0
        hu[xx**2 + (yy - 5) ** 2 < 16 + 4 * z] = -850.0
        out.append(hu)
    return np.stack(out)


def measure(hu: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Line integrals of ``hu`` on the reconstruction operator, plus Gaussian noise."""
    with torch.no_grad():
        clean = ct_operator(GEOMETRY).forward(torch.from_numpy(hu_to_mu(hu))).numpy()
    rng = np.random.default_rng(seed)
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def module_for(spec: dict, prior: str = "none", randomise: bool = True, **extra) -> ReconModule:
    torch.manual_seed(0)
    module = ReconModule(net=spec, prior=prior, variant="lpd", geometry=GEOMETRY.to_dict(),
                         noise=asdict(NoiseModel(i0=1e5)), acquisition=ACQUISITION, **extra)
    if randomise:  # every weight matters (the update blocks start at zero)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.normal_(0.0, 0.1)
    return module.eval()


def test_the_sinogram_in_network_units_is_the_projection_of_hu_over_1000():
    hu = phantoms()
    module = module_for(LPD)
    y = module.sinogram_units(torch.from_numpy(measure(hu)))
    expected = ct_operator(GEOMETRY).forward(torch.from_numpy(hu) / 1000.0)
    assert torch.allclose(y, expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


def test_an_untrained_lpd_returns_its_fbp_and_a_trained_one_reads_the_sinogram():
    hu = phantoms()
    sinogram = torch.from_numpy(measure(hu))
    fbp = torch.from_numpy(hu / 1000.0 + 0.05)[:, None]
    fresh = module_for(LPD, randomise=False)
    out, logits = fresh(fbp, None, sinogram)
    assert logits is None and torch.equal(out, fbp)  # zero-initialised updates
    module = module_for(LPD)
    changed = module(fbp, None, sinogram * 1.1)[0]
    assert not torch.allclose(module(fbp, None, sinogram)[0], changed, atol=1e-4)
    with pytest.raises(ValueError, match="reads the measured sinogram"):
        module(fbp)


def test_gradients_reach_every_update_block_through_the_operator():
    hu = phantoms(2)
    module = module_for(LPD).train()
    fbp = torch.from_numpy(hu / 1000.0)[:, None]
    recon, _ = module(fbp, None, torch.from_numpy(measure(hu)))
    recon.square().mean().backward()
    for blocks in (module.net.dual_blocks, module.net.primal_blocks):
        for block in blocks:
            assert block[0].weight.grad.abs().sum() > 0


def test_sg_lpd_predicts_a_prior_that_conditions_its_updates():
    hu = phantoms(2)
    module = module_for(SG_LPD, prior="predicted")
    fbp = torch.from_numpy(hu / 1000.0)[:, None]
    sinogram = torch.from_numpy(measure(hu))
    recon, logits = module(fbp, None, sinogram)
    assert recon.shape == (2, 1, 32, 32) and logits.shape == (2, 5, 32, 32)
    net = module.net
    uniform = torch.full_like(logits, 0.2)
    given, _ = net(fbp, uniform, sinogram=module.sinogram_units(sinogram),
                   operator=module.operator())
    assert not torch.allclose(given, recon, atol=1e-5)  # the prior enters the updates
    assert isinstance(net, LearnedPrimalDual) and isinstance(net, SGLearnedPrimalDual)


def test_operator_models_train_on_whole_unflipped_slices_with_their_sinograms():
    hu = phantoms()
    sinograms = measure(hu)
    dataset = SliceDataset(hu, hu, np.zeros(hu.shape, np.int64), augment=True, crop=16,
                           sinograms=sinograms)
    item = dataset[3]
    assert item["fbp"].shape == (1, 32, 32)
    assert torch.equal(item["sinogram"], torch.from_numpy(sinograms[3]))
    assert torch.allclose(item["fbp"][0], torch.from_numpy(hu[3]) / 1000.0)  # not flipped
    with pytest.raises(ValueError, match="sinograms 3"):
        SliceDataset(hu, hu, np.zeros(hu.shape, np.int64), sinograms=sinograms[:3])


def test_conjugate_gradient_solves_the_regularised_normal_equations():
    hu = phantoms(2)
    operator = ct_operator(GEOMETRY)
    y = torch.from_numpy(measure(hu, noise=0.05, seed=1)) / hu_to_mu(0.0) - operator.forward(
        torch.ones(1, 32, 32))
    x_net = torch.from_numpy(hu / 1000.0 + 0.1)
    lam = 0.01
    dense = operator.matrix.to_dense().double()
    weight = lam * operator.norm() ** 2
    normal = dense.T @ dense + weight * torch.eye(dense.shape[1], dtype=torch.float64)
    for k in range(2):
        rhs = dense.T @ y[k].reshape(-1).double() + weight * x_net[k].reshape(-1).double()
        exact = torch.linalg.solve(normal, rhs).reshape(32, 32).float()
        iterates = conjugate_gradient(x_net, y, operator, lam, 60, record=[0, 5])
        assert torch.equal(iterates[0], x_net)
        assert (iterates[60][k] - exact).abs().max() < 2e-3 * exact.abs().max()
        # five steps already get most of the way
        first = (x_net[k] - exact).norm()
        assert (iterates[5][k] - exact).norm() < 0.2 * first
    # a very large lambda keeps the network's image
    kept = conjugate_gradient(x_net, y, operator, 1e6, 3)[3]
    assert torch.allclose(kept, x_net, atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        conjugate_gradient(x_net, y, operator, 0.0, 3)


def test_the_discrepancy_principle_stops_at_the_floor_not_below():
    trials = [{"lambda": lam, "steps": 3, "residual": r, "psnr": 0.0}
              for lam, r in [(1.0, 0.012), (0.1, 0.0101), (0.01, 0.0095), (0.001, 0.011)]]
    network = {"residual": 0.0115, "psnr": 30.0}
    assert choose(trials, 0.0100, network)["lambda"] == 0.1
    # everything that lowers the residual is below the floor: the least fitted of those
    assert choose(trials, 0.0112, network)["lambda"] == 0.001
    # a network already at the floor gets no step, and no step may raise the residual
    assert choose(trials, 0.0100, {"residual": 0.0099})["steps"] == 0
    assert choose(trials, 0.0080, {"residual": 0.0090})["steps"] == 0
    tie = [{"lambda": 0.1, "steps": 10, "residual": 0.0101},
           {"lambda": 0.1, "steps": 3, "residual": 0.0101}]
    assert choose(tie, 0.01, network)["steps"] == 3


def test_tuning_picks_a_step_at_the_noise_floor_and_predict_applies_it(tmp_path):
    hu = phantoms(6)
    sinograms = measure(hu, noise=0.02, seed=2)
    blurred = (hu + 60.0 * np.random.default_rng(3).standard_normal(hu.shape)).astype(
        np.float32)
    module = module_for({"_target_": "sparsect.models.unet.UNet", "channels": 4, "depth": 3},
                        randomise=False)
    result = tune(module, blurred, sinograms, hu, lambdas=[0.001, 0.01, 0.1, 1.0],
                  steps=[2, 5])
    assert len(result["trials"]) == 8
    assert result["network"]["residual"] > result["floor"]  # the network is off the data
    assert result["steps"] > 0 and result["residual"] >= result["floor"]
    closer = [t for t in result["trials"]
              if result["floor"] <= t["residual"] < result["residual"]]
    assert not closer
    assert result["network"]["residual"] > result["residual"]  # it moved towards the data

    path = tmp_path / "dc.ckpt"
    hparams = {**dict(module.hparams), "dc": {"lambda": result["lambda"],
                                              "steps": result["steps"]}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    loaded = load_module(path)
    prediction = predict(loaded, blurred, sinogram=sinograms, geometry=GEOMETRY,
                         data_consistency=True)
    assert np.array_equal(prediction.images, predict(loaded, blurred).images)
    operator = ct_operator(GEOMETRY)
    offset = operator.forward(torch.ones(1, 32, 32))
    y = loaded.sinogram_units(torch.from_numpy(sinograms))
    after = residual(torch.from_numpy(prediction.consistent) / 1000.0, y, operator, offset)
    assert abs(float(after.mean()) - result["residual"]) < 1e-4
    with pytest.raises(InputError, match="pass the sinogram"):
        predict(loaded, blurred, data_consistency=True)
    # no step where the network was already at the floor: +dc is the network
    torch.save({"state_dict": module.state_dict(),
                "hyper_parameters": {**hparams, "dc": {"lambda": None, "steps": 0}}}, path)
    kept = predict(load_module(path), blurred, sinogram=sinograms, data_consistency=True)
    assert np.array_equal(kept.consistent, kept.images)
    with pytest.raises(InputError, match="records no data-consistency step"):
        predict(module, blurred, sinogram=sinograms, data_consistency=True)
    other = Geometry("parallel", views=8, image_size=32, pixel_size_mm=12.0)
    with pytest.raises(InputError, match="geometry differs"):
        predict(loaded, blurred, sinogram=sinograms, geometry=other, data_consistency=True)


def test_an_operator_model_is_applied_once_per_slice_and_served_with_its_sinogram(tmp_path):
    hu = phantoms(3)
    sinograms = measure(hu)
    module = module_for(LPD)
    path = tmp_path / "lpd.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    loaded = load_module(path)
    fbp = hu + 30.0
    # no mirror average: a mirrored image is not the image of the measured sinogram
    once = predict(loaded, fbp, sinogram=sinograms, mirror_average=False).images
    assert np.array_equal(predict(loaded, fbp, sinogram=sinograms).images, once)
    with pytest.raises(InputError, match="reads the measured sinogram"):
        predict(loaded, fbp)
    pyfunc = ReconstructionModel()
    pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(path)}))
    served = pyfunc.predict(None, {"fbp": fbp, "sinogram": sinograms})
    assert np.array_equal(served, once)
    with pytest.raises(InputError, match="reads the measured sinogram"):
        pyfunc.predict(None, fbp)


@pytest.mark.parametrize("override", ["model.dc_lambdas=[0.0,0.1]", "model.dc_lambdas=[]",
                                      "model.dc_steps=[0,3]"])
def test_a_bad_data_consistency_grid_is_named(tmp_path, override):
    from helpers import ROOT
    from sparsect.config import load_params
    from sparsect.stages.train import choose_consistency

    cfg = load_params(ROOT / "params.yaml", [override])
    with pytest.raises(InputError, match=r"model.dc_lambdas must list positive weights"):
        choose_consistency(cfg, tmp_path / "missing.ckpt", tmp_path, tmp_path, tmp_path)
    assert choose_consistency(load_params(ROOT / "params.yaml", ["model.dc_steps=[]"]),
                              tmp_path / "missing.ckpt", tmp_path, tmp_path, tmp_path) is None
