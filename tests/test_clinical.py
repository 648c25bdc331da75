"""The clinical preset (``experiment=clinical``) end to end on a tiny budget.

The grid is the preset's own, 512 x 512 pixels of 0.75 mm under the clinical fan beam;
only the amount of data and the network's size are cut: three phantom subjects of two
slices (one per split), one epoch of a narrow network. Every stage runs in-process:
make-data, prepare, masks, simulate, train (unet and sg_unet) and evaluate.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from helpers import ROOT
from sparsect.config import load_params, write_params
from sparsect.data.store import load_array
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import predict
from sparsect.settings import geometry_from_cfg
from sparsect.stages.evaluate import evaluate
from sparsect.stages.make_data import make_data
from sparsect.stages.masks import masks
from sparsect.stages.prepare import prepare
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train

pytestmark = pytest.mark.slow

SIZE, PIXEL_MM = 512, 0.75
SLICES = 2
MODELS = ("unet", "sg_unet")
# Less data and a narrow network (the widths of helpers.TINY_TRAINING), never a coarser
# grid: crop, view count, geometry and simulation settings stay the preset's.
TINY_BUDGET = [
    "data.phantom.subjects=3", f"data.phantom.shape=[{SIZE},{SIZE},{SLICES}]",
    "model.channels=4", "model.depth=3", "model.seg_channels=4",
    "trainer.batch_size=4", "trainer.max_epochs=1", "trainer.accelerator=cpu",
    "physics.device=cpu", "evaluate.panel_slices=1",
]


@pytest.fixture(scope="module")
def clinical(tmp_path_factory):
    """The preset composed as `sparsect params experiment=clinical` writes it, then every
    stage once; returns ``(cfg, root)``."""
    root = tmp_path_factory.mktemp("clinical")
    params = write_params(ROOT / "conf", root / "params.yaml", ["experiment=clinical"])
    cfg = load_params(params, TINY_BUDGET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        make_data(cfg, root / "data")
        prepare(cfg, root / "data", root / "prepared")
        masks(cfg, root / "prepared", root / "masks")
        simulate(cfg, root / "prepared", root / "sim", workers=2)
        train(cfg, root / "prepared", root / "sim", root / "masks", root / "models",
              models=MODELS)
        evaluate(cfg, root / "prepared", root / "sim", root / "masks", root / "models",
                 root / "evaluation")
    return cfg, root


def test_preset_composes_the_clinical_grid_and_fan_beam(tmp_path):
    cfg = load_params(write_params(ROOT / "conf", tmp_path / "params.yaml",
                                   ["experiment=clinical"]))
    assert (cfg.data.image_size, cfg.data.pixel_size_mm) == (SIZE, PIXEL_MM)
    assert cfg.data.image_size * cfg.data.pixel_size_mm == 384.0  # field of view, mm
    assert list(cfg.data.phantom.shape[:2]) == [SIZE, SIZE]
    assert list(cfg.data.phantom.spacing_mm[:2]) == [PIXEL_MM, PIXEL_MM]
    assert cfg.geometry.beam == "fan" and cfg.geometry.source_isocenter_mm == 595.0
    assert cfg.trainer.crop == 128
    phantom = load_params(ROOT / "params.yaml")
    assert list(cfg.data.hu_clip) == list(phantom.data.hu_clip)
    assert dict(cfg.data.split) == dict(phantom.data.split)


def test_phantoms_and_prepared_slices_are_512_at_0_75_mm(clinical):
    cfg, root = clinical
    scan = nib.load(root / "data" / "subject_000.nii.gz")
    assert scan.shape == (SIZE, SIZE, SLICES)
    assert np.allclose(scan.header.get_zooms()[:2], PIXEL_MM)
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    assert (manifest["image_size"], manifest["pixel_size_mm"]) == (SIZE, PIXEL_MM)
    for split in ("train", "val", "test"):
        hu = load_array(root / "prepared" / split, "hu")
        assert hu.shape == (SLICES, SIZE, SIZE)
        assert load_array(root / "masks" / split, "masks").shape == (SLICES, SIZE, SIZE)
    hu = np.asarray(load_array(root / "prepared" / "train", "hu"))
    assert hu.min() == -1000.0 and hu.max() > 200.0  # air around a body with bone


def test_sinograms_have_the_fan_beam_shape_of_the_geometry(clinical):
    cfg, root = clinical
    geo = cfg.geometry
    # Flat detector covering the fan through the circle circumscribing the image, one
    # isocentre pixel per bin, one bin of margin each side, the image's parity.
    radius = SIZE * PIXEL_MM / math.sqrt(2.0)
    half_width = geo.source_detector_mm * math.tan(math.asin(radius / geo.source_isocenter_mm))
    pitch = PIXEL_MM * geo.source_detector_mm / geo.source_isocenter_mm
    bins = math.ceil(2.0 * half_width / pitch) + 2
    bins += (bins - SIZE) % 2
    geometry = geometry_from_cfg(cfg)
    assert (geometry.beam, geometry.detector_count, geometry.views) == ("fan", bins, geo.views)
    header = json.loads((root / "sim" / "geometry.json").read_text())
    assert header["geometry"] == geometry.to_dict()
    for split in ("train", "val", "test"):
        sinogram = load_array(root / "sim" / split, "sinogram")
        assert sinogram.shape == (SLICES, geo.views, bins)
        assert np.isfinite(sinogram).all() and sinogram.max() > 1.0  # a body attenuates
        assert load_array(root / "sim" / split, "fbp").shape == (SLICES, SIZE, SIZE)


def test_checkpoints_record_the_clinical_geometry_and_acquisition(clinical):
    cfg, root = clinical
    for name in MODELS:
        module = load_module(root / "models" / f"{name}.ckpt")
        assert dict(module.hparams.geometry) == geometry_from_cfg(cfg).to_dict()
        assert dict(module.hparams.acquisition) == {
            "upsample": int(cfg.physics.upsample), "filter": str(cfg.physics.filter),
            "hu_clip": [float(v) for v in cfg.data.hu_clip]}


def test_evaluate_scores_every_method(clinical):
    _, root = clinical
    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    methods = {m for m in metrics if not m.startswith("_")}
    # each model with its data-consistent form (the step chosen on validation)
    assert methods == {"fbp", *MODELS, *(f"{m}+dc" for m in MODELS)}
    for method in methods:
        assert {"psnr", "ssim", "rmse_hu", "residual", "regions"} <= set(metrics[method])
        assert all(math.isfinite(metrics[method][k]) for k in ("psnr", "ssim", "rmse_hu"))
    # 60 noisy fan-beam views: streaks, but the anatomy is there
    assert 15.0 < metrics["fbp"]["psnr"] < 50.0, metrics["fbp"]["psnr"]
    assert metrics["_settings"]["slices"] == SLICES


def test_predict_on_a_full_512_slice(clinical):
    _, root = clinical
    fbp = np.asarray(load_array(root / "sim" / "test", "fbp"))[:1]
    prediction = predict(load_module(root / "models" / "sg_unet.ckpt"), fbp)
    assert prediction.images.shape == (1, SIZE, SIZE)
    assert np.isfinite(prediction.images).all()
    assert prediction.classes is not None and prediction.classes.shape == (1, SIZE, SIZE)
