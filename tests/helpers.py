"""Test helpers: paths, scan writers and a tiny project, shared by the test modules."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from sparsect.models.module import ReconModule
from sparsect.physics import Geometry, NoiseModel, Projector, hu_to_mu

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A network small enough to train in seconds on 32 x 32 slices (12 mm pixels).
TINY_TRAINING = ["data.image_size=32", "data.pixel_size_mm=12.0", "model.channels=4",
                 "model.depth=3", "model.seg_channels=4", "trainer.batch_size=4",
                 "trainer.crop=null", "trainer.accelerator=cpu"]


def write_nifti(path: Path, volume: np.ndarray, spacing=(2.0, 2.0, 4.0), dtype=np.int16) -> Path:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(volume.astype(dtype), affine), path)
    return path


def write_sitk(path: Path, volume: np.ndarray, spacing=(2.0, 2.0, 4.0)) -> Path:
    """NRRD/MHA through SimpleITK (array order z, y, x there)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.transpose(volume, (2, 1, 0)).astype(np.int16))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(2.0, 2.0, 4.0),
                       modality: str = "CT", rescale: bool = True, *, suffix: str = ".dcm",
                       prefix: str = "slice_", series_uid: str | None = None,
                       study_uid: str | None = None, series_number: int | None = None,
                       description: str | None = None, image_type: list[str] | None = None,
                       transfer_syntax: str | None = None, orientation=(1, 0, 0, 0, 1, 0),
                       step=None, origin=(0.0, 0.0, 0.0), preamble: bool = True,
                       patient_id: str = "phantom") -> Path:
    """Writes ``volume`` (x, y, z) in HU as a CT DICOM series, one file per slice.

    The defaults write ``slice_000.dcm``... of an axial series with a new series UID.
    Options: file names (``prefix``, ``suffix``, e.g. ``""`` or ``".IMA"``), series and
    study UIDs, ``SeriesNumber``, ``SeriesDescription``, ``ImageType``, a compressed
    ``transfer_syntax`` (encoded by pydicom; a syntax it cannot encode gets placeholder
    fragments), ``orientation`` (ImageOrientationPatient), the ``step`` between slice
    positions (default: ``spacing[2]`` along the slice normal), the first slice's
    ``origin``, and files without preamble and file meta (``preamble=False``).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_encoder
    from pydicom.uid import (
        MPEG2MPML,
        UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid() if series_uid is None else series_uid
    study_uid = generate_uid() if study_uid is None else study_uid
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    step = np.cross(row, column) * spacing[2] if step is None else np.asarray(step, float)
    for z in range(volume.shape[2]):
        path = folder / f"{prefix}{z:03d}{suffix}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        if image_type is not None:
            ds.ImageType = list(image_type)
        ds.Modality = modality
        if description is not None:
            ds.SeriesDescription = description
        ds.PatientID = patient_id
        if series_number is not None:
            ds.SeriesNumber = series_number
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + z * step]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        stored = volume[:, :, z].T
        if rescale:
            ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
            stored = stored + 1024
        ds.PixelData = stored.astype(np.int16).tobytes()
        if transfer_syntax is not None:
            try:
                encodable = get_encoder(transfer_syntax).is_available
            except NotImplementedError:
                encodable = False
            if encodable:
                ds.compress(transfer_syntax, generate_instance_uid=False)
            else:
                ds.PixelData = encapsulate([b"\xff\x0a" + bytes(16)])
                ds["PixelData"].VR = "OB"
                ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        if transfer_syntax is not None and not UID(transfer_syntax).is_transfer_syntax:
            # a syntax this pydicom does not know cannot be written: write the file as an
            # encapsulated syntax of the same length, then put the wanted UID in its place
            stand_in = MPEG2MPML
            assert len(stand_in) == len(transfer_syntax), transfer_syntax
            ds.file_meta.TransferSyntaxUID = stand_in
            ds.save_as(path, enforce_file_format=True)
            path.write_bytes(path.read_bytes().replace(stand_in.encode(),
                                                       transfer_syntax.encode(), 1))
        elif preamble:
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.preamble = None
            del ds.file_meta
            ds.save_as(path, implicit_vr=False, little_endian=True)
    return folder


def build_tiny_inputs(root: Path, overrides: list[str], subjects: int, slices: int,
                      seed: int):
    """Writes tiny phantoms into ``root/data`` and runs prepare and masks on them.

    Returns the config (``params.yaml`` plus ``overrides``) the stages ran with.
    """
    from sparsect.config import load_params
    from sparsect.data.phantom import PhantomConfig, write_dataset
    from sparsect.stages.masks import masks
    from sparsect.stages.prepare import prepare

    write_dataset(root / "data", subjects=subjects, seed=seed,
                  config=PhantomConfig(shape=(96, 96, slices), spacing_mm=(4.0, 4.0, 5.0)))
    cfg = load_params(ROOT / "params.yaml", overrides)
    prepare(cfg, root / "data", root / "prepared")
    masks(cfg, root / "prepared", root / "masks")
    return cfg


# The tiny pipeline configuration as a Hydra experiment, so that `dvc exp run -S ...` and
# `sparsect train -m ...` compose exactly what `dvc repro` ran from params.yaml.
TINY_EXPERIMENT = """# @package _global_
data:
  # slabs at the lung bases, never the pelvis: every region is in every split
  phantom: {subjects: 4, shape: [96, 96, 4], spacing_mm: [4.0, 4.0, 5.0],
            dome_level_mm: [10.0, 30.0], pelvic_probability: 0.0}
  image_size: 32
  pixel_size_mm: 12.0
sweep: {views: [12, 24]}
model: {channels: 4, depth: 3, seg_channels: 4}
trainer: {max_epochs: 3, batch_size: 4, crop: 16}
evaluate: {panel_slices: 1}
baselines: {sirt: {iterations: 20}, tv: {iterations: 20}}
tuning: {max_slices: 4, grid: {fbp: {filter: [ram-lak, hann]}, sirt: {iterations: [10, 20]},
                               tv: {weight: [0.01, 0.03], iterations: [10, 20]}}}
external: {max_slices: 2}
study: {cohort: {subjects: 2, slices: 4, lesions_per_subject: 3, min_lesions: 1, roi_px: 5,
                 diameter_mm: [12.0, 24.0]},
        subjects: null, channels: 3, channel_width_px: 1.5, full_views: 48}
segmenter: {epochs: 1, channels: 4, depth: 2}
followup: {cohort: {subjects: 3, slices: 8, lesions: {new: 2, grown: 1, shrunk: 0, resolved: 1,
                                                      stable: 0},
                    min_new_lesions: 1, roi_px: 5, diameter_mm: [12.0, 24.0],
                    changed_min_mm: 12.0},
           views: [24], subjects: null, realisations: 2, baseline_views: 48,
           registration: {fixed: [fbp], iterations: 5},
           piccs: {weights: [0.01], alphas: [0.8], iterations: [20]}}
"""


def sh(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def tool_env(repo: Path) -> dict[str, str]:
    """The project's tools on PATH and a tracking store inside ``repo``."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}


def init_tiny_repo(repo: Path) -> Path:
    """A git + DVC project in ``repo``: this checkout's conf, code and dvc.yaml, the
    tiny experiment composed into params.yaml, and its phantoms tracked by DVC."""
    for name in ("conf", "src", "realct"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(ROOT / ".gitignore", repo)
    env = tool_env(repo)
    (repo / "conf" / "experiment" / "tiny.yaml").write_text(TINY_EXPERIMENT)
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("dvc", "config", "hydra.enabled", "true", cwd=repo, env=env)
    sh("sparsect", "params", "experiment=tiny", cwd=repo, env=env)
    sh("sparsect", "make-data", "--out", "data", cwd=repo, env=env)
    sh("dvc", "add", "-q", "data", cwd=repo, env=env)
    return repo


# Tiny models for the tests of applying a model (predict, reconstruct, pyfunc, ONNX).
GEOMETRY = Geometry("parallel", views=16, image_size=32, pixel_size_mm=12.0)
SGUNET = {"_target_": "sparsect.models.unet.SGUNet", "channels": 4, "depth": 3,
          "seg_channels": 4}


def save_module(path, prior: str, context: int, predict_prior: bool):
    """A tiny checkpoint whose every weight matters (no zero-initialised heads), so
    outputs depend on the neighbours and the prior input."""
    torch.manual_seed(0)
    module = ReconModule(
        net={**SGUNET, "in_channels": context, "predict_prior": predict_prior}, prior=prior,
        geometry=GEOMETRY.to_dict(), noise=asdict(NoiseModel(i0=1e5)),
        acquisition={"upsample": 2, "filter": "ram-lak", "hu_clip": [-1024.0, 3071.0]})
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.2)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    return path


def sinograms(count: int = 5) -> np.ndarray:
    """Line integrals of discs of soft tissue, bone and lung, a different one per slice."""
    size = GEOMETRY.image_size
    yy, xx = np.mgrid[:size, :size] - size / 2
    out = []
    with Projector(GEOMETRY, "cpu") as projector:
        for z in range(count):
            hu = np.full((size, size), -1000.0, np.float32)
            hu[xx**2 + yy**2 < 13**2] = 40.0
            hu[(xx - 4 + z) ** 2 + yy**2 < 9] = 900.0
            hu[xx**2 + (yy - 5) ** 2 < 16 + 4 * z] = -850.0
            out.append(projector.forward(hu_to_mu(hu)))
    return np.stack(out).astype(np.float32)


def bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_reconstruct", ROOT / "scripts" / "bench_reconstruct.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
