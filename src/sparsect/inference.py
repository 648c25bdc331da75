"""``sparsect reconstruct``: apply a trained model (or a classical method) to new data.

Inputs:
- a CT volume or slice (NIfTI, NRRD, MHA, a DICOM file or series folder): it is
  brought to the model's grid, the sparse-view acquisition is simulated with the
  model's recorded geometry and noise, and the result is reconstructed;
- a measured sinogram ``<name>.npy`` (``(views, detectors)`` or
  ``(slices, views, detectors)`` line integrals) with ``<name>.json`` holding its
  geometry (as ``Geometry.to_dict``); a geometry other than the model's is refused;
- a folder of such inputs, processed one by one with a progress bar.

Outputs are NIfTI in HU. For a volume the affine is the one of the resampled
input grid, so the reconstruction overlays the original scan in any viewer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from sparsect.data.io import (
    SCAN_SUFFIXES,
    ScanEntry,
    axial_slices,
    load_subject,
    standardise,
    volume_from_slices,
)
from sparsect.data.store import atomic_write_bytes
from sparsect.errors import InputError
from sparsect.models.predict import predict
from sparsect.notice import nifti_description
from sparsect.physics import Geometry, NoiseModel, Projector, Simulator, mu_to_hu, reconstruct

METHODS = ("model", "fbp", "sirt")


def _is_volume(path: Path) -> bool:
    return path.name.endswith(SCAN_SUFFIXES) or path.suffix.lower() == ".dcm" or (
        path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir()))


def list_inputs(path: Path) -> list[Path]:
    """One input, or every input inside a folder that is not itself a DICOM series."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist: give a CT volume, slice, DICOM series "
                         "or sinogram .npy.")
    if path.is_file() or _is_volume(path):
        return [path]
    inputs = sorted(p for p in path.iterdir()
                    if (p.suffix == ".npy" or _is_volume(p)) and not p.name.startswith("."))
    if not inputs:
        raise InputError(f"Folder '{path}' holds no CT volume or sinogram: add inputs.")
    return inputs


def _output_path(output: Path, item: Path, many: bool) -> Path:
    if not many:
        return output
    stem = item.name.split(".")[0]
    return Path(output) / f"{stem}_recon.nii.gz"


def _save_nifti(path: Path, volume_hu: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(np.round(volume_hu).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header["descrip"] = nifti_description("written by sparsect")
    path = Path(path)
    _check_output_name(path)
    atomic_write_bytes(path, nib.Nifti1Image.to_bytes(image) if path.suffix == ".nii"
                       else _gzip(image))


def _check_output_name(path: Path) -> None:
    if not Path(path).name.endswith((".nii", ".nii.gz")):
        raise InputError(f"Output '{path}' must end in .nii or .nii.gz: rename it, "
                         "e.g. recon.nii.gz.")


def _gzip(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes(), mtime=0)


class Reconstructor:
    """Reconstructs slices with a model or a classical method on the model's geometry.

    The acquisition (geometry, noise, simulation grid, FBP filter, HU clip) is the
    one recorded in the model's checkpoint, so new data are simulated and
    reconstructed as the training data were; ``sirt_iterations`` is the classical
    method's setting (``baselines.sirt.iterations``)."""

    def __init__(self, module, method: str = "model", views: int | None = None,
                 device: str = "auto", sirt_iterations: int = 100) -> None:
        if method not in METHODS:
            raise InputError(f"Method '{method}' is unknown: use one of {', '.join(METHODS)}.")
        self.module, self.method = module, method
        geometry = dict(module.hparams.geometry)
        if views is not None and int(views) != int(geometry["views"]):
            raise InputError(
                f"--views {views} does not match the model, trained for {geometry['views']} "
                "views: pick the model of that view count or drop --views."
            )
        self.geometry = Geometry.from_dict(geometry)
        self.noise = NoiseModel(**dict(module.hparams.noise))
        acquisition = dict(module.hparams.acquisition)
        self.upsample, self.filter = int(acquisition["upsample"]), str(acquisition["filter"])
        self.hu_clip = tuple(float(v) for v in acquisition["hu_clip"])
        self.device, self.sirt_iterations = device, int(sirt_iterations)

    def from_sinograms(self, sinograms: np.ndarray) -> np.ndarray:
        """``(N, views, detectors)`` -> ``(N, H, W)`` HU."""
        size = self.geometry.image_size
        images = np.empty((len(sinograms), size, size), np.float32)
        options = ({"iterations": self.sirt_iterations} if self.method == "sirt"
                   else {"filter": self.filter})
        with Projector(self.geometry, self.device) as projector:
            for index, sinogram in enumerate(sinograms):
                images[index] = mu_to_hu(reconstruct("sirt" if self.method == "sirt" else "fbp",
                                                     projector, sinogram, **options))
        if self.method != "model":
            return images
        return predict(self.module, images, sinogram=sinograms, geometry=self.geometry).images

    def simulate(self, hu_slices: np.ndarray, seed: int = 0) -> np.ndarray:
        with Simulator(self.geometry, self.noise, upsample=self.upsample,
                       device=self.device, filter=self.filter) as simulator:
            return np.stack([simulator(hu, seed + i)[0] for i, hu in enumerate(hu_slices)])


def _read_sinogram(path: Path, geometry: Geometry) -> np.ndarray:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise InputError(f"Sinogram '{path}' has no geometry file '{sidecar.name}' beside it: "
                         "write its Geometry.to_dict() there.")
    try:
        measured = Geometry.from_dict(json.loads(sidecar.read_text()))
    except (ValueError, TypeError, json.JSONDecodeError) as error:
        raise InputError(f"Geometry file '{sidecar}' is invalid ({error}): fix it.") from None
    if measured != geometry:
        raise InputError(f"Sinogram '{path}' was measured with geometry {measured.to_dict()} but "
                         f"the model expects {geometry.to_dict()}: use a model trained for it.")
    try:
        sinograms = np.load(path, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read sinogram '{path}' ({error}): give a .npy array.") from None
    if sinograms.ndim == 2:
        sinograms = sinograms[None]
    expected = (geometry.views, geometry.detector_count)
    if sinograms.ndim != 3 or sinograms.shape[1:] != expected:
        raise InputError(f"Sinogram '{path}' has shape {sinograms.shape} but the geometry needs "
                         f"(slices, {expected[0]}, {expected[1]}): check views and detectors.")
    return sinograms


def reconstruct_input(recon: Reconstructor, item: Path, output: Path,
                      save_reference: bool = False) -> Path:
    """Reconstructs one input into ``output`` (NIfTI, HU)."""
    geometry = recon.geometry
    if item.suffix == ".npy":
        volume = recon.from_sinograms(_read_sinogram(item, geometry))
        px = geometry.pixel_size_mm
        affine = np.diag([px, px, 1.0, 1.0])
        _save_nifti(output, volume_from_slices(volume), affine)
        return output
    subject = standardise(load_subject(ScanEntry(item.name, item, None)), geometry.image_size,
                          geometry.pixel_size_mm, recon.hu_clip)
    reference = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    volume = recon.from_sinograms(recon.simulate(reference))
    affine = subject["ct"].affine
    _save_nifti(output, volume_from_slices(volume), affine)
    if save_reference:
        name = output.name.replace(".nii.gz", "").replace(".nii", "")
        _save_nifti(output.with_name(f"{name}_reference.nii.gz"),
                    volume_from_slices(reference), affine)
    return output


def run(input_path: Path, output: Path, module, method: str = "model", views: int | None = None,
        save_reference: bool = False, device: str = "auto", sirt_iterations: int = 100
        ) -> list[Path]:
    recon = Reconstructor(module, method, views, device=device, sirt_iterations=sirt_iterations)
    inputs = list_inputs(input_path)
    # outputs are written one by one, atomically; the folder appears with the first one
    many = Path(input_path).is_dir() and not _is_volume(Path(input_path))
    if not many:
        _check_output_name(output)
    written = []
    for item in tqdm(inputs, unit="input", desc="reconstruct", disable=len(inputs) == 1):
        written.append(reconstruct_input(recon, item, _output_path(output, item, many),
                                         save_reference))
    return written


def reconstruct_files(cfg: Any, input_path: Path, output: Path, model_uri: str | None = None,
                      method: str = "model", views: int | None = None,
                      save_reference: bool = False) -> list[Path]:
    """``sparsect reconstruct``: ``model_uri`` (default: the ``sg_unet`` champion for
    ``views``) applied to ``input_path``, with the settings of ``cfg``."""
    from sparsect.registry import champion_uri, resolve_model_uri

    uri = model_uri or champion_uri(cfg, views)
    return run(input_path, output, resolve_model_uri(cfg, uri), method, views, save_reference,
               str(cfg.physics.device), int(cfg.baselines.sirt.iterations))
