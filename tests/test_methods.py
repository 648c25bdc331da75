"""Every kind of method through every entry point that applies methods, from files on disk.

One NIfTI volume (a phantom of the task cohort, ``scan.nii.gz``) and one sinogram of it
with its geometry sidecar (``scan.npy``, ``scan.json``: what the acquisition's seed rule
gives that scan, so ``external`` and ``reconstruct`` simulate the very same data from the
volume) are reconstructed by

- ``evaluate`` (the volume is its test split, the sinogram its measurements),
- ``external`` (the volume is a real scan),
- the task study (the sinogram is every realisation of the cohort's subject),
- ``sparsect reconstruct`` (the sinogram file, and the volume),
- the served model (the pyfunc model, the sinogram as its input),

and every entry point must write the same images, to the bit, for each kind of method it
offers: classical (fbp with a tuned filter, sirt, cgls, tv), learned, ``+dc``, oracle and
a model that reads the sinogram through the CT operator (lpd). ``reconstruct`` writes
int16 HU, so its images are compared with the others' rounded; the served model offers
the models without their ``+dc`` step and no oracle; ``reconstruct`` gives an oracle a
registered earlier map (``--prior``), not the scan's own classes, so it is left out there.

One pair is equal to float rounding only: ``+dc`` in the study. The study applies the
data-consistency step to its whole stack (both classes, every realisation) in batches of
16 slices, and the conjugate gradient's per-slice inner products reduce over a
``(pixels, batch)`` layout whose vectorised sums depend on the batch's width; the network
and the classical methods do not (every other pair is bitwise equal, batches or not).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import GEOMETRY, ROOT, SGUNET, write_nifti
from sparsect.cli import main
from sparsect.config import load_params
from sparsect.data.io import axial_slices, find_scans, volume_from_slices
from sparsect.data.store import atomic_write_json, save_array
from sparsect.models.module import ReconModule
from sparsect.physics import NoiseModel
from sparsect.physics.acquisition import scan_key
from sparsect.priors.classes import BACKGROUND, BONE, FAT, LUNG, SOFT_TISSUE
from sparsect.priors.organs import ORGAN_LABELS
from sparsect.serving import ReconstructionModel
from sparsect.settings import acquisition_from_cfg
from sparsect.stages.baselines import baselines
from sparsect.stages.cohort import cohort
from sparsect.stages.evaluate import evaluate
from sparsect.stages.external import RealScan, external
from sparsect.stages.study import Scans

VIEWS = GEOMETRY.views
CLASSICAL = {"fbp": {"filter": "hann"}, "sirt": {"iterations": 5}, "cgls": {"iterations": 4},
             "tv": {"weight": 0.03, "iterations": 5}}
SETTINGS = [
    f"data.image_size={GEOMETRY.image_size}", f"data.pixel_size_mm={GEOMETRY.pixel_size_mm}",
    f"geometry.views={VIEWS}", "physics.device=cpu", "external.max_slices=64",
    "external.label_table=phantom",
    *(f"baselines.{m}.{k}={v}" for m, options in CLASSICAL.items() for k, v in options.items()
      if m != "cgls"),
    "study.classical=[fbp,sirt,cgls,tv]", "study.subjects=1", "study.channels=3",
    "study.channel_width_px=1.5", "study.full_views=32",
    "study.cohort.subjects=2", "study.cohort.slices=4", "study.cohort.lesions_per_subject=3",
    "study.cohort.min_lesions=1", "study.cohort.roi_px=5", "study.cohort.diameter_mm=[12.0,24.0]",
    "data.phantom.shape=[96,96,4]", "data.phantom.spacing_mm=[4.0,4.0,5.0]",
    "data.phantom.pelvic_probability=0.0",
]
UNET = {"_target_": "sparsect.models.unet.UNet", "channels": 4, "depth": 3, "in_channels": 3}
LPD = {"_target_": "sparsect.models.lpd.LearnedPrimalDual", "channels": 4, "iterations": 2}
MODELS = {  # name -> (network, prior, data-consistency step)
    "unet": (UNET, "none", {"lambda": 0.1, "steps": 2}),
    "sg_oracle": ({**SGUNET, "in_channels": 1, "predict_prior": False}, "oracle", None),
    "lpd": (LPD, "none", None),
}
KINDS = {"classical": list(CLASSICAL), "learned": ["unet"], "+dc": ["unet+dc"],
         "oracle": ["sg_oracle"], "operator": ["lpd"]}
# an organ label of each tissue class, so that the cohort's labels give the scan's classes
ORGAN_OF = {BACKGROUND: ORGAN_LABELS["background"], LUNG: ORGAN_LABELS["lung"],
            FAT: ORGAN_LABELS["fat"], SOFT_TISSUE: ORGAN_LABELS["liver"],
            BONE: ORGAN_LABELS["rib"]}


def _checkpoint(path, name: str) -> str:
    net, prior, dc = MODELS[name]
    torch.manual_seed(len(name))
    module = ReconModule(net=net, prior=prior, variant=name, geometry=GEOMETRY.to_dict(),
                         noise=asdict(NoiseModel(i0=1e5)),
                         acquisition={"upsample": 2, "filter": "ram-lak",
                                      "hu_clip": [-1024.0, 3071.0]}, dc=dc)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.1)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    return str(path)


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def entry_points(tmp_path_factory):
    """Runs every entry point on the files; returns method -> entry point -> images."""
    root = tmp_path_factory.mktemp("methods")
    cfg = load_params(ROOT / "params.yaml", SETTINGS)
    cfg.baselines.cgls = CLASSICAL["cgls"]  # not among the default baselines
    cfg.data.phantom.dome_level_mm = [10.0, 30.0]  # slabs at the lung bases: lung and liver
    (root / "params.yaml").write_text(OmegaConf.to_yaml(cfg))
    acquisition = acquisition_from_cfg(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        cohort(cfg, root / "cohort", workers=1)
        # the files on disk: a volume, and its sinogram with the geometry sidecar
        scans = root / "scans"
        scans.mkdir()
        volume = np.load(root / "cohort" / "hu.npy")[0]
        write_nifti(scans / "scan.nii.gz", volume_from_slices(volume),
                    spacing=(GEOMETRY.pixel_size_mm, GEOMETRY.pixel_size_mm, 5.0),
                    dtype=np.float32)
        scan = RealScan.load(cfg, find_scans(scans)[0])
        keys = [(scan_key("scan"), z) for z in range(len(scan.hu))]
        sinogram = acquisition.simulate(scan.hu, keys)[0]
        np.save(root / "scan.npy", sinogram)
        (root / "scan.json").write_text(json.dumps(GEOMETRY.to_dict()))
        sinogram, fbp = np.load(root / "scan.npy"), acquisition.fbp(np.load(root / "scan.npy"))

        models = root / "models"
        models.mkdir()
        atomic_write_json(models / "summary.json", {
            name: {"checkpoint": f"{name}.ckpt"} for name in MODELS})
        checkpoints = {name: _checkpoint(models / f"{name}.ckpt", name) for name in MODELS}

        # evaluate: the volume as the test split, the sinogram as its measurements
        for folder, arrays in (("prepared/test", {"hu": scan.hu}),
                               ("sim/test", {"sinogram": sinogram, "fbp": fbp}),
                               ("masks/test", {"masks": scan.classes})):
            (root / folder).mkdir(parents=True)
            for name, array in arrays.items():
                save_array(root / folder, name, array)
        atomic_write_json(root / "prepared/test/index.json",
                          [["scan", z] for z in range(len(scan.hu))])
        atomic_write_json(root / "sim/geometry.json", {**acquisition.describe(), "shard": None})
        baselines(cfg, root / "sim", root / "baselines", workers=1)
        # the study: the cohort's subject has the scan's tissue classes, and every
        # realisation of it (lesion-absent and -present) is the sinogram
        labels = np.load(root / "cohort" / "labels.npy")
        labels[0] = np.vectorize(ORGAN_OF.get)(scan.classes)
        np.save(root / "cohort" / "labels.npy", labels)
        shape = (2, 2, 1)
        study_scans = Scans(np.broadcast_to(fbp, (*shape, *fbp.shape)).copy(),
                            np.broadcast_to(sinogram, (*shape, *sinogram.shape)).copy(),
                            acquisition)
        evaluate(cfg, root / "prepared", root / "sim", root / "masks", models, root / "eval",
                 VIEWS, root / "baselines", root / "cohort", study_subjects=1,
                 scans=study_scans, images_dir=root / "images")
        external(cfg, scans, models, root / "baselines", root / "external", VIEWS, workers=1,
                 images_dir=root / "external_images")

        found: dict[str, dict[str, np.ndarray]] = {}
        for path in sorted((root / "images" / "test").glob("*.npy")):
            found.setdefault(path.stem, {})["evaluate"] = np.load(path)
        for path in sorted((root / "external_images" / "scan").glob("*.npy")):
            found[path.stem]["external"] = np.load(path)
        for path in sorted((root / "images" / "study").glob("*.npy")):
            found[path.stem]["study"] = np.load(path)[0, 0, 0]

        # sparsect reconstruct, from the sinogram file and, for the learned method and one
        # classical one, from the volume (it simulates the sinogram file's very data)
        for name, images in found.items():
            model, _, dc = name.partition("+")
            if model == "sg_oracle":
                continue
            for source in ("sinogram", "volume")[:2 if name in ("unet", "tv") else 1]:
                item = root / "scan.npy" if source == "sinogram" else scans / "scan.nii.gz"
                out = root / "recon" / f"{name}-{source}.nii.gz"
                if model in CLASSICAL:
                    args = ["--model", checkpoints["unet"], "--method", model,
                            *(f"--option={k}={v}" for k, v in CLASSICAL[model].items())]
                else:
                    args = ["--model", checkpoints[model], *(["--dc"] if dc else [])]
                assert main(["reconstruct", str(item), "-o", str(out), "--params",
                             str(root / "params.yaml"), *args]) == 0
                images[f"reconstruct ({source})"] = axial_slices(
                    np.asanyarray(nib.load(out).dataobj))

        # the served model, the sinogram as its input
        for name in ("unet", "lpd"):
            served = ReconstructionModel()
            served.load_context(SimpleNamespace(artifacts={"checkpoint": checkpoints[name]}))
            found[name]["served"] = served.predict(None, sinogram, params={"input": "sinogram"})
    return found, np.array(sinogram), np.load(root / "external" / "scan" / "sinogram.npy")


def test_external_and_reconstruct_simulate_the_sinogram_file(entry_points):
    _, sinogram, simulated = entry_points
    assert np.array_equal(simulated, sinogram)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_entry_point_writes_the_same_images(entry_points, kind):
    found, _, _ = entry_points
    for name in KINDS[kind]:
        images = found[name]
        expected = images["evaluate"]
        assert expected.dtype == np.float32 and np.isfinite(expected).all()
        floats = [point for point in images if not point.startswith("reconstruct")]
        written = [point for point in images if point.startswith("reconstruct")]
        assert {"evaluate", "external", "study"} <= set(floats), (name, list(images))
        assert kind == "oracle" or written, (name, list(images))
        for point in floats:
            if kind == "+dc" and point == "study":  # see the module docstring
                assert np.abs(images[point] - expected).max() <= 1e-3, (name, point)
                continue
            assert np.array_equal(images[point], expected), (name, point)
        for point in written:  # int16 HU
            assert np.array_equal(images[point], np.round(expected).astype(np.int16)), \
                (name, point)
    if kind in ("learned", "operator"):
        assert "served" in found[KINDS[kind][0]]


def test_the_methods_differ(entry_points):
    """The comparison has teeth: every method gives other images than every other."""
    found, _, _ = entry_points
    names = [name for names in KINDS.values() for name in names]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(found[a]["evaluate"] - found[b]["evaluate"]).max() > 1.0, (a, b)
