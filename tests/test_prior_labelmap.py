"""``sparsect reconstruct --prior``: an earlier scan's label map registered to the current
scan's FBP (sparsect.priors.register) and read by an oracle-prior model."""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import ROOT
from sparsect.cli import main
from sparsect.data.io import axial_slices, volume_from_slices
from sparsect.data.phantom import PhantomConfig, generate_subject
from sparsect.data.phantom.config import phantom_affine
from sparsect.errors import InputError
from sparsect.models.module import ReconModule
from sparsect.physics import Geometry, NoiseModel, Simulator
from sparsect.priors.masks import tissue_masks_from_labels
from sparsect.priors.organs import ORGAN_LABELS, ORGAN_TO_TISSUE
from sparsect.priors.register import _sitk_array, register_label_map, sitk_image

PARAMS = ["--params", str(ROOT / "params.yaml")]
# 128 x 128 x 24 voxels of 3 x 3 x 5 mm: a chest/abdomen slab as the registration sees it
CONFIG = PhantomConfig(shape=(128, 128, 24), spacing_mm=(3.0, 3.0, 5.0), pelvic_probability=0.0)
# the same field of view (384 mm) at a few slices, for the tiny model's 32 x 32 x 12 mm grid
SMALL = dataclasses.replace(CONFIG, shape=(128, 128, 6))
TINY_GEOMETRY = Geometry("parallel", views=16, image_size=32, pixel_size_mm=12.0)
SGUNET = {"_target_": "sparsect.models.unet.SGUNet", "channels": 4, "depth": 3,
          "seg_channels": 4, "in_channels": 1, "predict_prior": False}
# Shifts (RAS mm) that are whole voxels (3 mm in-plane, 5 mm between slices), so that the
# nearest-neighbour shifted map moves by exactly that much.
SHIFTS = [(0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (0.0, -6.0, 0.0), (0.0, 0.0, 10.0), (6.0, 6.0, 5.0)]
# Measured on these phantoms: in-plane errors stay below 0.1 mm; along z (one sample
# per 5 mm slice) the registration lands 0.8 to 1.5 mm off, under a third of a slice.
IN_PLANE_TOLERANCE_MM = 0.5
Z_TOLERANCE_MM = 2.0


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The phantom, its label map, and the FBP of a 60-view scan of it (the fixed image)."""
    hu, labels = generate_subject(0, 7, CONFIG)
    geometry = Geometry("parallel", views=60, image_size=128, pixel_size_mm=3.0)
    with Simulator(geometry, NoiseModel(i0=1e5), upsample=1, device="cpu",
                   filter="ram-lak") as simulator:
        fbp = np.stack([simulator(s, i)[1] for i, s in enumerate(axial_slices(hu))])
    return {"hu": hu, "labels": labels, "fbp": volume_from_slices(fbp),
            "affine": phantom_affine(CONFIG), "folder": tmp_path_factory.mktemp("prior")}


def moved(labels: np.ndarray, affine: np.ndarray, shift_mm, rotation_deg: float = 0.0):
    """``labels`` with their content moved by ``shift_mm`` (RAS) and turned by
    ``rotation_deg`` about the volume's z axis, on the same grid."""
    image = sitk_image(labels.astype(np.int32), affine)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint(
        [(size - 1) / 2 for size in image.GetSize()]))
    transform.SetRotation(0.0, 0.0, np.radians(rotation_deg))
    # Resample pulls values: the map at x is the original at x - shift, and SimpleITK's
    # world is LPS (x and y flipped)
    transform.SetTranslation([shift_mm[0], shift_mm[1], -shift_mm[2]])
    return _sitk_array(sitk.Resample(image, image, transform, sitk.sitkNearestNeighbor, 0))


def save_labels(path, labels: np.ndarray, affine: np.ndarray):
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), str(path))
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the body's tissue classes (lung, fat, soft tissue, bone)."""
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))
                          for k in range(1, 5)]))


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: "x{:g}y{:g}z{:g}mm".format(*s))
def test_registration_recovers_the_shift_and_the_masks(scan, shift):
    truth = tissue_masks_from_labels(scan["labels"], ORGAN_TO_TISSUE)
    shifted = moved(scan["labels"], scan["affine"], shift)
    path = save_labels(scan["folder"] / "shifted.nii.gz", shifted, scan["affine"])
    result = register_label_map(path, scan["fbp"], scan["affine"], "phantom")
    error = np.asarray(result.record["translation_mm"]) - np.asarray(shift)
    assert np.abs(error[:2]).max() <= IN_PLANE_TOLERANCE_MM, result.record
    assert abs(error[2]) <= Z_TOLERANCE_MM, result.record
    assert np.abs(result.record["rotation_deg"]).max() < 0.5
    unregistered = dice(tissue_masks_from_labels(shifted, ORGAN_TO_TISSUE), truth)
    registered = dice(result.classes, truth)
    assert registered >= unregistered and registered >= 0.9
    if any(shift):
        assert unregistered < 0.9  # the shift matters: without registration the masks miss


def test_registration_recovers_a_small_rotation_and_is_deterministic(scan):
    truth = tissue_masks_from_labels(scan["labels"], ORGAN_TO_TISSUE)
    turned = moved(scan["labels"], scan["affine"], (0.0, 0.0, 0.0), rotation_deg=3.0)
    path = save_labels(scan["folder"] / "turned.nii.gz", turned, scan["affine"])
    first = register_label_map(path, scan["fbp"], scan["affine"], "phantom")
    # a rotation of the content by +3 degrees about z is one of -3 degrees from scan to map
    assert abs(abs(first.record["rotation_deg"][2]) - 3.0) < 0.3, first.record
    assert np.abs(first.record["translation_mm"][:2]).max() <= IN_PLANE_TOLERANCE_MM
    assert dice(first.classes, truth) >= max(
        0.9, dice(tissue_masks_from_labels(turned, ORGAN_TO_TISSUE), truth))
    again = register_label_map(path, scan["fbp"], scan["affine"], "phantom")
    assert again.record == first.record and np.array_equal(again.classes, first.classes)


def _corrupt_gzip(folder, labels, affine):
    path = save_labels(folder / "corrupt.nii.gz", labels, affine)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


def _two_d(folder, labels, affine):
    return save_labels(folder / "flat.nii.gz", labels[:, :, 0], affine)


def _unknown_labels(folder, labels, affine):
    labels = labels.copy()
    labels[60:70, 60:70, :] = 250
    return save_labels(folder / "unknown.nii.gz", labels, affine)


def _not_gzip(folder, labels, affine):
    path = folder / "text.nii.gz"
    path.write_bytes(gzip.compress(b"not a NIfTI header" * 30)[:40])
    return path


def _image_not_labels(folder, labels, affine):
    path = folder / "image.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.float32) + 0.5, affine), str(path))
    return path


def _two_slices(folder, labels, affine):
    return save_labels(folder / "thin.nii.gz", labels[:, :, 11:13], affine)


def _six_slices(folder, labels, affine):
    """A map of 6 of the scan's 24 slices: once registered it covers too little of it."""
    return save_labels(folder / "slab.nii.gz", labels[:, :, 9:15], affine)


@pytest.mark.parametrize(("make", "message"), [
    (lambda folder, labels, affine: folder / "missing.nii.gz", "does not exist"),
    (_corrupt_gzip, "Cannot read label map"),
    (_not_gzip, "Cannot read label map"),
    (_two_d, "3D volume"),
    (_unknown_labels, "250 that the label table does not know"),
    (_image_not_labels, "non-integer values"),
    (_two_slices, "too thin to register"),
    (_six_slices, "covers 2"),
], ids=["missing", "corrupt-gzip", "truncated", "2d", "unknown-labels", "image", "thin",
        "no-overlap"])
def test_bad_label_maps_are_one_sentence_naming_the_file(scan, make, message):
    path = make(scan["folder"], scan["labels"], scan["affine"])
    with pytest.raises(InputError, match=message) as error:
        register_label_map(path, scan["fbp"], scan["affine"], "phantom")
    assert str(path) in str(error.value)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_an_unknown_table_is_refused(scan):
    path = save_labels(scan["folder"] / "ok.nii.gz", scan["labels"], scan["affine"])
    with pytest.raises(InputError, match="Label table 'nnunet' is unknown"):
        register_label_map(path, scan["fbp"], scan["affine"], "nnunet")


def test_totalsegmentator_maps_take_unlabelled_voxels_from_hu(scan):
    """Label 0 of TotalSegmentator is no tissue class: those voxels come from the FBP."""
    labels = np.zeros_like(scan["labels"], dtype=np.int16)
    labels[scan["labels"] == ORGAN_LABELS["liver"]] = 5  # liver
    labels[scan["labels"] == ORGAN_LABELS["spine"]] = 31  # vertebrae_L1
    path = save_labels(scan["folder"] / "totalseg.nii.gz", labels, scan["affine"])
    result = register_label_map(path, scan["fbp"], scan["affine"], "totalsegmentator")
    truth = tissue_masks_from_labels(scan["labels"], ORGAN_TO_TISSUE)
    assert np.mean(result.classes[truth == 0] == 0) > 0.95  # air outside from HU
    liver = scan["labels"] == ORGAN_LABELS["liver"]
    assert np.mean(result.classes[liver] == 3) > 0.95  # soft tissue from the map


# --- the command line -------------------------------------------------------------------

def _checkpoint(path, prior: str, variant: str):
    torch.manual_seed(0)
    module = ReconModule(net=dict(SGUNET, predict_prior=prior == "predicted"), prior=prior,
                         variant=variant, geometry=TINY_GEOMETRY.to_dict(),
                         noise=asdict(NoiseModel(i0=1e5)),
                         acquisition={"upsample": 2, "filter": "ram-lak",
                                      "hu_clip": [-1024.0, 3071.0]})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    return path


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    hu, labels = generate_subject(0, 7, SMALL)
    affine = phantom_affine(SMALL)
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), str(folder / "scan.nii.gz"))
    save_labels(folder / "seg.nii.gz", labels, affine)
    return {"folder": folder, "oracle": _checkpoint(folder / "oracle.ckpt", "oracle", "sg_oracle"),
            "sg_unet": _checkpoint(folder / "sg.ckpt", "predicted", "sg_unet")}


def _reconstruct(case, out, model: str, *extra: str) -> int:
    folder = case["folder"]
    return main(["reconstruct", str(folder / "scan.nii.gz"), "-o", str(out), "--model",
                 str(case[model]), *PARAMS, *extra])


@pytest.mark.parametrize("oracle", [True, False])
def test_reconstruct_with_a_prior_writes_the_sidecar(small_case, tmp_path, capsys, oracle):
    out = tmp_path / "recon.nii.gz"
    flags = ["--prior-oracle"] if oracle else []
    assert _reconstruct(small_case, out, "oracle", "--prior", str(small_case["folder"] /
                        "seg.nii.gz"), "--prior-table", "phantom", *flags) == 0
    image = nib.load(str(out))
    assert image.shape == (32, 32, 6)
    sidecar = json.loads((tmp_path / "recon.prior.json").read_text())
    assert sidecar["oracle"] is oracle and sidecar["table"] == "phantom"
    assert sidecar["label_map"].endswith("seg.nii.gz") and sidecar["model"] == "sg_oracle"
    record = sidecar["registration"]
    assert record["coverage"] > 0.9 and np.abs(record["translation_mm"]).max() < 6.0
    assert ("oracle: the map was made from this scan" in capsys.readouterr().out) is oracle


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("sg_unet", ["--prior", "seg.nii.gz"], "Model 'sg_unet' predicts its own prior"),
    ("oracle", [], "Model 'sg_oracle' reads an external tissue map"),
    ("oracle", ["--prior", "missing.nii.gz"], "missing.nii.gz' does not exist"),
    ("oracle", ["--prior", "seg.nii.gz", "--method", "fbp"], "--prior is read by a model"),
    ("oracle", ["--prior-oracle"], "--prior-oracle describes the map"),
], ids=["not-oracle", "oracle-without-prior", "missing-map", "fbp", "oracle-flag-alone"])
def test_reconstruct_refuses_a_prior_it_cannot_use(small_case, tmp_path, capsys, model, extra,
                                                   message):
    out = tmp_path / "recon.nii.gz"
    extra = [str(small_case["folder"] / e) if e.endswith(".nii.gz") else e for e in extra]
    assert _reconstruct(small_case, out, model, *extra, "--prior-table", "phantom") == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "recon.prior.json").exists()
