"""``sparsect reconstruct``: apply a trained model (or a classical method) to new data.

Inputs:
- a CT volume or slice (NIfTI, NRRD, MHA, a LoDoPaB-CT ground-truth HDF5 file, a DICOM
  file of any name, or a folder of DICOM files at any depth, as archives ship them; a
  folder holding several series needs ``series``, a UID or series number): it is
  brought to the model's grid, the sparse-view acquisition is simulated with the
  model's recorded geometry and noise, and the result is reconstructed;
- a measured sinogram ``<name>.npy`` (``(views, detectors)`` or
  ``(slices, views, detectors)``) with ``<name>.json`` beside it: its geometry (as
  ``Geometry.to_dict``) for line integrals, or ``{"geometry": {...}, "values":
  "counts", "flat_field": I0 or "flat.npy", "dark_field": ...}`` for raw detector
  counts, whose log is taken here; a geometry other than the model's is refused;
- a folder of such inputs (files, and sub-folders of DICOM files), processed one by
  one with a progress bar.

Outputs are NIfTI in HU. For a volume the affine is the one of the resampled
input grid, so the reconstruction overlays the original scan in any viewer.

A model trained on external tissue masks (prior ``oracle`` in the variants table,
e.g. ``sg_oracle``) reads them from ``prior``: a label map of an earlier scan of the
same patient, registered rigidly to this scan's FBP and resampled onto the
reconstruction grid (:mod:`sparsect.priors.register`); ``<output stem>.prior.json``
beside the output records the map, its table, the registration and whether the map
was made from this very scan (``oracle``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from sparsect.data.datasets import is_lodopab_file
from sparsect.data.dicom import is_dicom_file
from sparsect.data.io import (
    SCAN_SUFFIXES,
    ScanEntry,
    axial_slices,
    is_dicom_input,
    load_subject,
    standardise,
    volume_from_slices,
)
from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.errors import InputError
from sparsect.models.predict import predict
from sparsect.notice import nifti_description
from sparsect.physics import (
    Geometry,
    NoiseModel,
    Simulator,
    line_integrals_from_counts,
    mu_to_hu,
)
from sparsect.physics.reconstruct import reconstruct_stack
from sparsect.priors.register import prior_table, register_label_map

METHODS = ("model", "fbp", "sirt")


def _is_file_input(path: Path) -> bool:
    """A scan or sinogram file (not a DICOM file, which belongs to its folder's series)."""
    return path.is_file() and (path.name.endswith(SCAN_SUFFIXES) or path.suffix == ".npy"
                               or is_lodopab_file(path))


def _is_volume(path: Path) -> bool:
    """Whether ``path`` is one volume: a scan file, a DICOM file, or a DICOM folder (a
    folder that directly holds DICOM files, or holds no other input and DICOM files at
    some depth)."""
    path = Path(path)
    if path.is_file():
        return (_is_file_input(path) and path.suffix != ".npy") or is_dicom_file(path)
    if not path.is_dir():
        return False
    children = [p for p in path.iterdir() if not p.name.startswith(".")]
    if any(is_dicom_file(p) for p in children):
        return True
    return not any(_is_file_input(p) for p in children) and is_dicom_input(path)


def list_inputs(path: Path) -> list[Path]:
    """One input, or every input inside a folder that is not itself a DICOM folder: its
    scan and sinogram files, and its sub-folders of DICOM files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist: give a CT volume, slice, DICOM series "
                         "or sinogram .npy.")
    if path.is_file() or _is_volume(path):
        return [path]
    inputs = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (
        _is_file_input(p) or (p.is_dir() and is_dicom_input(p))))
    if not inputs:
        raise InputError(f"Folder '{path}' holds no CT volume or sinogram: add inputs.")
    return inputs


@dataclass(frozen=True)
class PriorMap:
    """The ``--prior`` of ``sparsect reconstruct``: a label map of the patient, the name
    of its label table, and whether the map was made from the scan being reconstructed
    (``oracle``: then the model reads the very masks it was trained on, an upper bound)."""

    path: Path
    table: str = "totalsegmentator"
    oracle: bool = False


def _stem(path: Path) -> str:
    return Path(path).name.replace(".nii.gz", "").replace(".nii", "")


def prior_sidecar(output: Path) -> Path:
    """``<output stem>.prior.json`` beside ``output``."""
    return Path(output).with_name(f"{_stem(output)}.prior.json")


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
                 device: str = "auto", sirt_iterations: int = 100,
                 data_consistency: bool = False, prior: PriorMap | None = None) -> None:
        if method not in METHODS:
            raise InputError(f"Method '{method}' is unknown: use one of {', '.join(METHODS)}.")
        self.module, self.method = module, method
        self.prior = _check_prior(module, method, prior)
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
        self.data_consistency = bool(data_consistency) and method == "model"
        if self.data_consistency and not module.hparams.get("dc"):
            raise InputError("--dc asks for the model's data-consistency step, but this model "
                             "records none: retrain it with model.dc_steps set, or drop --dc.")

    def classical(self, sinograms: np.ndarray) -> np.ndarray:
        """``(N, views, detectors)`` -> ``(N, H, W)`` HU by SIRT (``method="sirt"``) or FBP
        (the other methods; a model's input)."""
        # SIRT batched on the torch operator, as the baselines stage runs it
        options = ({"iterations": self.sirt_iterations} if self.method == "sirt"
                   else {"filter": self.filter})
        return mu_to_hu(reconstruct_stack("sirt" if self.method == "sirt" else "fbp",
                                          self.geometry, sinograms, device=self.device,
                                          **options))

    def from_sinograms(self, sinograms: np.ndarray, images: np.ndarray | None = None,
                       prior_classes: np.ndarray | None = None) -> np.ndarray:
        """``(N, views, detectors)`` -> ``(N, H, W)`` HU; ``images``: their
        :meth:`classical` reconstruction when already made; ``prior_classes``: ``(N, H, W)``
        tissue classes for a model that reads external ones (``PriorMap``)."""
        images = self.classical(sinograms) if images is None else images
        if self.method != "model":
            return images
        prediction = predict(self.module, images, sinogram=sinograms, geometry=self.geometry,
                             data_consistency=self.data_consistency,
                             full_dose_classes=prior_classes)
        return prediction.consistent if self.data_consistency else prediction.images

    def simulate(self, hu_slices: np.ndarray, seed: int = 0) -> np.ndarray:
        with Simulator(self.geometry, self.noise, upsample=self.upsample,
                       device=self.device, filter=self.filter) as simulator:
            return np.stack([simulator(hu, seed + i)[0] for i, hu in enumerate(hu_slices)])


def _check_prior(module, method: str, prior: PriorMap | None) -> PriorMap | None:
    """``prior`` when the model reads external tissue classes, which it then needs;
    refused for any other model or method."""
    model_prior = str(module.hparams.get("prior", "none"))
    name = module.hparams.get("variant") or "this model"
    if prior is None:
        if method == "model" and model_prior == "oracle":
            raise InputError(f"Model '{name}' reads an external tissue map (prior: oracle): "
                             "pass --prior with a label map of this patient, or use a "
                             "deployable model such as sg_unet.")
        return None
    if method != "model":
        raise InputError(f"--prior is read by a model, not by --method {method}: drop --prior "
                         "or use --method model.")
    if model_prior != "oracle":
        raise InputError(f"Model '{name}' predicts its own prior (prior: {model_prior}); "
                         "--prior needs a model trained on external masks such as sg_oracle.")
    prior_table(prior.table)
    return prior


def _sidecar(path: Path) -> tuple[Geometry, dict]:
    """``<name>.json`` beside sinogram ``path``: its geometry (``Geometry.to_dict()``), or
    ``{"geometry": {...}, "values": "counts", "flat_field": I0 | "flat.npy",
    "dark_field": ... }`` for raw counts."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise InputError(f"Sinogram '{path}' has no geometry file '{sidecar.name}' beside it: "
                         "write its Geometry.to_dict() there.")
    try:
        content = json.loads(sidecar.read_text())
        measurement = content if "geometry" in content else {"geometry": content}
        geometry = Geometry.from_dict(measurement["geometry"])
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise InputError(f"Geometry file '{sidecar}' is invalid ({error}): fix it.") from None
    values = measurement.get("values", "line_integrals")
    if values not in ("line_integrals", "counts"):
        raise InputError(f"Geometry file '{sidecar}' says values '{values}': write "
                         "\"line_integrals\" or \"counts\" (with a flat_field).")
    if values == "counts" and "flat_field" not in measurement:
        raise InputError(f"Sinogram '{path}' holds raw counts but '{sidecar.name}' gives no "
                         "flat_field: add I0 (a number, or a .npy of the counts without object).")
    return geometry, measurement


def _field(value: float | str, path: Path) -> float | np.ndarray:
    """A flat or dark field: a number, or a ``.npy`` file named relative to the sinogram."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return np.load(path.parent / str(value), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read field '{value}' of sinogram '{path}' ({error}): give a "
                         "number or a .npy file beside the sinogram.") from None


def _read_sinogram(path: Path, geometry: Geometry) -> np.ndarray:
    """Line integrals ``(slices, views, detectors)`` of sinogram ``path`` (taking the log of
    raw counts with their flat field when its sidecar says so)."""
    measured, measurement = _sidecar(path)
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
    if measurement.get("values") == "counts":
        return line_integrals_from_counts(
            sinograms, _field(measurement["flat_field"], path), path.name,
            _field(measurement.get("dark_field", 0.0), path))
    return sinograms


def reconstruct_input(recon: Reconstructor, item: Path, output: Path,
                      save_reference: bool = False, series: str | None = None) -> Path:
    """Reconstructs one input into ``output`` (NIfTI, HU); ``series`` (a UID or series
    number) picks the series of a DICOM folder that holds several."""
    geometry = recon.geometry
    if item.suffix == ".npy":
        if recon.prior is not None:
            raise InputError(f"Sinogram '{item}' has no position in the patient to register "
                             "--prior to: reconstruct the scan volume instead, or drop --prior.")
        volume = recon.from_sinograms(_read_sinogram(item, geometry))
        px = geometry.pixel_size_mm
        affine = np.diag([px, px, 1.0, 1.0])
        _save_nifti(output, volume_from_slices(volume), affine)
        return output
    entry = ScanEntry(item.name, item, None, series=series if is_dicom_input(item) else None)
    subject = standardise(load_subject(entry), geometry.image_size, geometry.pixel_size_mm,
                          recon.hu_clip)
    reference = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    affine = subject["ct"].affine
    sinograms = recon.simulate(reference)
    if recon.prior is None:
        volume = recon.from_sinograms(sinograms)
    else:
        # the map is registered to what this scan gives at reconstruction time: its FBP
        images = recon.classical(sinograms)
        registered = register_label_map(recon.prior.path, volume_from_slices(images), affine,
                                        recon.prior.table)
        volume = recon.from_sinograms(sinograms, images, axial_slices(registered.classes))
        _check_output_name(output)
        atomic_write_json(prior_sidecar(output), {
            "label_map": str(Path(recon.prior.path).resolve()),
            "table": recon.prior.table,
            "oracle": bool(recon.prior.oracle),
            "model": recon.module.hparams.get("variant"),
            "registration": registered.record,
        })
    try:
        _save_nifti(output, volume_from_slices(volume), affine)
    except BaseException:
        if recon.prior is not None:
            prior_sidecar(output).unlink(missing_ok=True)
        raise
    if save_reference:
        name = output.name.replace(".nii.gz", "").replace(".nii", "")
        _save_nifti(output.with_name(f"{name}_reference.nii.gz"),
                    volume_from_slices(reference), affine)
    return output


def run(input_path: Path, output: Path, module, method: str = "model", views: int | None = None,
        save_reference: bool = False, device: str = "auto", sirt_iterations: int = 100,
        series: str | None = None, data_consistency: bool = False,
        prior: PriorMap | None = None) -> list[Path]:
    recon = Reconstructor(module, method, views, device=device, sirt_iterations=sirt_iterations,
                          data_consistency=data_consistency, prior=prior)
    inputs = list_inputs(input_path)
    if prior is not None and len(inputs) != 1:
        raise InputError(f"--prior is the label map of one patient but '{input_path}' holds "
                         f"{len(inputs)} inputs: reconstruct them one at a time.")
    if series is not None and not any(is_dicom_input(item) for item in inputs):
        raise InputError(f"--series {series} picks a DICOM series, but '{input_path}' holds no "
                         "DICOM files: drop --series.")
    # outputs are written one by one, atomically; the folder appears with the first one
    many = Path(input_path).is_dir() and not _is_volume(Path(input_path))
    if not many:
        _check_output_name(output)
    written = []
    for item in tqdm(inputs, unit="input", desc="reconstruct", disable=len(inputs) == 1):
        written.append(reconstruct_input(recon, item, _output_path(output, item, many),
                                         save_reference, series))
    return written


def reconstruct_files(cfg: Any, input_path: Path, output: Path, model_uri: str | None = None,
                      method: str = "model", views: int | None = None,
                      save_reference: bool = False, series: str | None = None,
                      data_consistency: bool = False,
                      prior: PriorMap | None = None, runtime: str = "torch",
                      export_dir: Path | None = None) -> list[Path]:
    """``sparsect reconstruct``: ``model_uri`` (default: the ``sg_unet`` champion for
    ``views``) applied to ``input_path`` (``series``: the DICOM series to take from a
    folder holding several), with the settings of ``cfg``; ``data_consistency``: the
    model's data-consistency step after it (the ``+dc`` method); ``prior``: the label
    map an oracle-prior model reads; ``runtime``: what runs the network (torch, or the
    ONNX graph of :mod:`sparsect.deploy`'s export in ``export_dir``, by default the one
    logged to the registry version)."""
    from sparsect.deploy import runtime_module
    from sparsect.registry import champion_uri, resolve_model_uri

    uri = model_uri or champion_uri(cfg, views)
    module = resolve_model_uri(cfg, uri)
    if method == "model":
        module = runtime_module(cfg, module, runtime, uri, export_dir)
    return run(input_path, output, module, method, views, save_reference,
               str(cfg.physics.device), int(cfg.baselines.sirt.iterations), series,
               data_consistency, prior)
