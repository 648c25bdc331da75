"""One way to apply a model: evaluate, reconstruct, the pyfunc model and the benchmark
all go through ``sparsect.models.predict.predict`` and agree to the bit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import GEOMETRY, bench_module, save_module, sinograms
from sparsect.errors import InputError
from sparsect.inference import Reconstructor
from sparsect.methods.learned import Learned
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import predict
from sparsect.physics.acquisition import Acquisition
from sparsect.serving import ReconstructionModel
from sparsect.stages.evaluate import HeldOut


@pytest.mark.parametrize(("prior", "context", "predict_prior"),
                         [("threshold", 3, False), ("predicted", 1, True)])
def test_four_entry_points_give_the_same_numbers(tmp_path, prior, context, predict_prior):
    checkpoint = save_module(tmp_path / "model.ckpt", prior, context, predict_prior)
    module = load_module(checkpoint)
    measured = sinograms()
    fbp = Acquisition.of_module(module, device="cpu").fbp(measured)
    expected = predict(module, fbp).images
    assert not np.allclose(expected, fbp, atol=1.0)  # the network does something

    served = Reconstructor(module, device="cpu").from_sinograms(measured)
    index = [["subject", z] for z in range(len(fbp))]
    split = HeldOut(target=fbp, index=index, subjects=np.array(["subject"] * len(fbp)),
                    fbp=fbp, sinograms=measured, geometry=GEOMETRY,
                    true_masks=np.zeros(fbp.shape, np.uint8),
                    acquisition=Acquisition.of_module(module).describe())
    scored = Learned("model", module).apply(split.case(seed=0, device="cpu"))
    assert list(scored) == ["model"]  # no data-consistency step recorded
    pyfunc = ReconstructionModel()
    pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint)}))
    registered = pyfunc.predict(None, fbp)
    benchmarked = bench_module().reconstruct_volume(module, fbp)

    for name, images in {"reconstruct": served, "evaluate": scored["model"].images,
                         "pyfunc": registered, "benchmark": benchmarked}.items():
        assert np.array_equal(images, expected), name


def test_neighbours_and_priors_are_what_the_model_reads(tmp_path):
    module = load_module(save_module(tmp_path / "model.ckpt", "threshold", 3, False))
    fbp = Acquisition.of_module(module, device="cpu").fbp(sinograms(6))
    # two subjects of three slices: the same as predicting each volume on its own
    index = [["a", 0], ["a", 1], ["a", 2], ["b", 0], ["b", 1], ["b", 2]]
    both = predict(module, fbp, index=index, batch_size=4).images
    alone = np.concatenate([predict(module, fbp[:3]).images, predict(module, fbp[3:]).images])
    assert np.allclose(both, alone, atol=1e-3)
    # ...and not the same as one volume of six (the neighbours would cross subjects)
    crossed = predict(module, fbp).images
    assert not np.allclose(crossed[2:4], both[2:4], atol=1e-3)
    assert np.allclose(crossed[:2], both[:2], atol=1e-3)


def test_oracle_models_and_leaks_are_refused(tmp_path):
    oracle = load_module(save_module(tmp_path / "oracle.ckpt", "oracle", 1, False))
    fbp = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(InputError, match="Oracle models read full-dose masks"):
        predict(oracle, fbp)
    masks = np.full(fbp.shape, 3, np.uint8)
    assert predict(oracle, fbp, full_dose_classes=masks).images.shape == fbp.shape
    deployable = load_module(save_module(tmp_path / "sg.ckpt", "predicted", 1, True))
    with pytest.raises(ValueError, match="only the oracle"):
        predict(deployable, fbp, full_dose_classes=masks)
    with pytest.raises(ValueError, match="2 sinograms for 3 FBP slices"):
        predict(deployable, np.zeros((3, 32, 32), np.float32), sinogram=np.zeros((2, 16, 8)))


def test_raw_counts_with_their_flat_field_reconstruct_like_line_integrals(tmp_path):
    """A measured sinogram of detector counts: reconstruct takes the log itself."""
    import json

    from sparsect.inference import reconstruct_input

    module = load_module(save_module(tmp_path / "model.ckpt", "predicted", 1, True))
    recon = Reconstructor(module, device="cpu")
    line_integrals = sinograms(3)
    flat = np.linspace(8e4, 1.2e5, GEOMETRY.detector_count)  # a bowtie-shaped I0
    np.save(tmp_path / "p.npy", line_integrals)
    (tmp_path / "p.json").write_text(json.dumps(GEOMETRY.to_dict()))
    np.save(tmp_path / "c.npy", flat * np.exp(-line_integrals.astype(np.float64)))
    np.save(tmp_path / "flat.npy", flat)
    (tmp_path / "c.json").write_text(json.dumps(
        {"geometry": GEOMETRY.to_dict(), "values": "counts", "flat_field": "flat.npy"}))
    import nibabel as nib

    images = [nib.load(reconstruct_input(recon, tmp_path / f"{name}.npy",
                                         tmp_path / f"{name}.nii.gz")).get_fdata()
              for name in ("p", "c")]
    assert images[0].shape == (32, 32, 3)
    assert np.abs(images[0] - images[1]).max() <= 1.0  # int16 HU, rounding only


def test_the_mirror_average_is_the_mean_of_the_slices_and_their_mirror_images(tmp_path):
    """Each prediction is the mean of one pass on the slices and one on their left-right
    mirror images (mirrored back); so the average of a slice and its mirror image is
    itself mirror-symmetric, which one pass of the random network is not. (Not for the
    threshold prior: its morphology breaks ties by scan order, so the classes of a
    mirrored FBP are not exactly the mirrored classes.)"""
    tolerance = 1e-3
    module = load_module(save_module(tmp_path / "m.ckpt", "predicted", 1, True))
    fbp = Acquisition.of_module(module).fbp(sinograms(3))
    mirrored = np.ascontiguousarray(fbp[:, :, ::-1])
    single = predict(module, fbp, mirror_average=False).images
    single_mirrored = predict(module, mirrored, mirror_average=False).images[:, :, ::-1]
    averaged = predict(module, fbp).images
    np.testing.assert_allclose(averaged, (single + single_mirrored) / 2, atol=tolerance)
    assert np.abs(single - single_mirrored).max() > 1.0  # the two passes differ
    np.testing.assert_allclose(predict(module, mirrored).images[:, :, ::-1], averaged,
                               atol=tolerance)


@pytest.mark.parametrize("prior", ["predicted", "threshold", "oracle"])
def test_a_subset_of_slices_is_what_the_whole_stack_gives_for_them(tmp_path, prior):
    """``slices`` reconstructs only those slices, with neighbours from the whole stack."""
    module = load_module(save_module(tmp_path / "m.ckpt", prior, 3, prior == "predicted"))
    fbp = Acquisition.of_module(module).fbp(sinograms(5))
    oracle = (np.arange(5 * 32 * 32).reshape(5, 32, 32) % 5).astype(np.uint8)
    classes = oracle if prior == "oracle" else None
    whole = predict(module, fbp, full_dose_classes=classes)
    picks = [4, 0, 2]
    part = predict(module, fbp, full_dose_classes=classes, slices=picks)
    np.testing.assert_allclose(part.images, whole.images[picks], atol=1e-3)  # HU; batching
    if prior == "predicted":
        np.testing.assert_array_equal(part.classes, whole.classes[picks])
    # the neighbours of slice 0 are read (a lone slice would see only itself)
    alone = predict(module, fbp[:1], full_dose_classes=None if classes is None else oracle[:1])
    assert np.abs(alone.images[0] - part.images[1]).max() > 1.0
