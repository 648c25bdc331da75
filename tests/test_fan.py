"""The clinical fan-beam experiment (``experiment=fan``, ``make fan``): what it changes,
and that a model trained on its rebinned input reads the same input at inference."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import ROOT, TINY_TRAINING
from sparsect.config import load_params, write_params
from sparsect.data.store import load_array
from sparsect.models.checkpoint import load_module
from sparsect.physics.acquisition import Acquisition
from sparsect.stages.make_data import make_data
from sparsect.stages.masks import masks
from sparsect.stages.prepare import prepare
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train


def _flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def test_the_fan_experiment_changes_only_what_it_states(tmp_path):
    """Beside the geometry it swaps in, the experiment sets the view count, the networks'
    rebinned input, the epochs and TV's iteration grid, and nothing else: data, models,
    loss and every other setting are the parallel-beam pipeline's."""
    default = _flat(load_params(write_params(ROOT / "conf", tmp_path / "p.yaml", [])))
    fan = _flat(load_params(write_params(ROOT / "conf", tmp_path / "f.yaml",
                                         ["experiment=fan"])))
    parallel = OmegaConf.load(ROOT / "conf" / "geometry" / "parallel.yaml")
    clinical = OmegaConf.load(ROOT / "conf" / "geometry" / "fan_clinical.yaml")
    geometry = {f"geometry.{k}" for k in clinical if clinical[k] != parallel.get(k)}
    changed = {k for k in default.keys() | fan.keys() if default.get(k) != fan.get(k)}
    assert changed == geometry | {"sweep.views", "physics.input_parallel_views",
                                  "trainer.max_epochs", "tuning.grid.tv.iterations"}
    assert fan["geometry.beam"] == "fan" and fan["sweep.views"] == [60]
    assert fan["physics.input_parallel_views"] == 240
    assert default["physics.input_parallel_views"] is None


@pytest.mark.slow
def test_a_fan_model_reads_at_inference_the_input_it_was_trained_on(tmp_path, monkeypatch):
    """Trained under experiment=fan (tiny data, one epoch), the checkpoint records the
    rebinned input, and the acquisition it records makes from the sinograms exactly the
    images the model was trained and validated on (what `reconstruct`, `external` and the
    served model build their input with)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = write_params(ROOT / "conf", tmp_path / "params.yaml", ["experiment=fan"])
    cfg = load_params(params, [*TINY_TRAINING, "data.phantom.subjects=3",
                               "data.phantom.shape=[96,96,2]", "trainer.max_epochs=1",
                               "physics.device=cpu", "model.dc_steps=[]",
                               # 240 angles are too many for a 32-pixel grid's 48 bins
                               "physics.input_parallel_views=120"])
    make_data(cfg, tmp_path / "data")
    prepare(cfg, tmp_path / "data", tmp_path / "prepared")
    masks(cfg, tmp_path / "prepared", tmp_path / "masks")
    simulate(cfg, tmp_path / "prepared", tmp_path / "sim", workers=1)
    train(cfg, tmp_path / "prepared", tmp_path / "sim", tmp_path / "masks",
          tmp_path / "models", models=("unet",))
    module = load_module(tmp_path / "models" / "unet.ckpt")
    assert module.hparams.acquisition["input_parallel_views"] == 120
    acquisition = Acquisition.of_module(module, device="cpu")
    assert acquisition.geometry.beam == "fan" and acquisition.geometry.views == 60
    for split in ("train", "val"):
        sinograms = np.asarray(load_array(tmp_path / "sim" / split, "sinogram"))
        trained_on = np.asarray(load_array(tmp_path / "sim" / split, "fbp"))
        assert np.array_equal(acquisition.fbp(sinograms), trained_on)
        direct = Acquisition.from_record(dict(module.hparams.geometry), None,
                                         {"filter": acquisition.filter}, device="cpu")
        assert not np.allclose(direct.fbp(sinograms), trained_on, atol=5.0)
