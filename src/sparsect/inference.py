"""``sparsect reconstruct``: apply a trained model (or a classical method) to new data.

Inputs:
- a CT volume or slice (NIfTI, NRRD, MHA, a LoDoPaB-CT ground-truth HDF5 file, a DICOM
  file of any name, or a folder of DICOM files at any depth, as archives ship them; a
  folder holding several series needs ``series``, a UID or series number): it is
  brought to the model's grid, the sparse-view acquisition is simulated with the
  model's recorded geometry and noise, and the result is reconstructed;
- a measured sinogram ``<name>.npy`` (``(views, detectors)`` or
  ``(slices, views, detectors)``) with ``<name>.json`` beside it: its geometry (as
  ``Geometry.to_dict``, every field of
  :data:`~sparsect.physics.measured.SIDECAR_FIELDS`) for line integrals, or
  ``{"geometry": {...}, "values": "counts", "flat_field": I0 or "flat.npy",
  "dark_field": ...}`` for raw detector counts, whose log is taken here. A classical
  method reconstructs it on its own geometry (axis offset, shifted or curved detector;
  ``"axis_offset_mm": "estimate"`` estimates the offset from the data); a model needs its
  own, onto which it is rebinned when that is exact up to interpolation, and refused
  otherwise;
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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from sparsect.archive import SUMMARY, config_digest, find_series, is_archive, run_archive
from sparsect.data.inputs import list_inputs
from sparsect.data.io import (
    ScanEntry,
    active_spacing_override,
    axial_slices,
    is_dicom_input,
    load_subject,
    scan_name,
    spacing_override,
    standardise,
    volume_from_slices,
)
from sparsect.data.outputs import (
    check_output_name,
    geometry_sidecar,
    nifti_stem,
    prior_sidecar,
    save_nifti,
)
from sparsect.data.store import atomic_write_json
from sparsect.errors import InputError
from sparsect.methods.classical import Classical
from sparsect.methods.learned import Learned
from sparsect.methods.names import CLASSICAL, DC_SUFFIX
from sparsect.methods.prior import PriorCase, PriorImage
from sparsect.physics import Geometry
from sparsect.physics.acquisition import Acquisition, scan_key
from sparsect.physics.measured import read_measurement
from sparsect.physics.noisefloor import residual_floor
from sparsect.physics.rebin import rebin_to
from sparsect.priors.labels import label_table
from sparsect.priors.register import register_label_map
from sparsect.settings import workers_from_cfg
from sparsect.tracking import sha256_file

METHODS = ("model", *CLASSICAL, "piccs")
"""What ``sparsect reconstruct --method`` runs: the model, a classical method, or PICCS
(which reads an earlier scan, ``--prior-scan``)."""


@dataclass(frozen=True)
class PriorMap:
    """The ``--prior`` of ``sparsect reconstruct``: a label map of the patient, the name
    of its label table, and whether the map was made from the scan being reconstructed
    (``oracle``: then the model reads the very masks it was trained on, an upper bound)."""

    path: Path
    table: str = "totalsegmentator"
    oracle: bool = False


class Reconstructor:
    """Reconstructs slices with a model or a classical method on the model's acquisition.

    The acquisition (geometry, noise, simulation grid, FBP filter, HU clip) is the one
    recorded in the model's checkpoint, so new data are simulated and reconstructed as
    the training data were; a scan's noise follows the acquisition's seed rule keyed by
    the scan's name, as ``external`` keys it. Both kinds of method run through the method
    layer (:mod:`sparsect.methods`).

    Args:
        module: The trained model (its acquisition is the one used).
        method: ``model`` or a classical method of :data:`METHODS`.
        views: The view count asked for (must be the model's).
        device: Where ASTRA and the torch operator run.
        options: The classical method's settings (e.g. the ones ``baselines`` chose on
            validation); required for a classical method.
        data_consistency: The model's ``+dc`` form.
        prior: The label map an oracle-prior model reads.
        seed: Base seed of the simulation's seed rule (``seed`` in the config).
        workers: Processes that simulate.
    """

    def __init__(self, module, method: str = "model", views: int | None = None,
                 device: str = "auto", options: dict[str, Any] | None = None,
                 data_consistency: bool = False, prior: PriorMap | None = None,
                 seed: int = 0, workers: int = 1) -> None:
        if method not in METHODS:
            raise InputError(f"Method '{method}' is unknown: use one of {', '.join(METHODS)}.")
        self.module, self.method, self.workers = module, method, int(workers)
        self.prior = _check_prior(module, method, prior)
        self.acquisition = Acquisition.of_module(module, seed=seed, device=device)
        trained = self.acquisition.geometry.views
        if views is not None and int(views) != trained:
            raise InputError(
                f"--views {views} does not match the model, trained for {trained} "
                "views: pick the model of that view count or drop --views."
            )
        data_consistency = bool(data_consistency) and method == "model"
        if data_consistency and not module.hparams.get("dc"):
            raise InputError("--dc asks for the model's data-consistency step, but this model "
                             "records none: retrain it with model.dc_steps set, or drop --dc.")
        if method == "piccs":
            if options is None:
                raise InputError(
                    "--method piccs needs its settings and none were found: give them with "
                    "--option (e.g. weight=0.01 --option alpha=0.5 --option iterations=200), "
                    "or run `dvc repro followup@<views>`, which chooses them on validation.")
            self.applied, self.output = PriorImage("piccs", dict(options)), "piccs"
        elif method == "model":
            name = module.hparams.get("variant") or "model"
            self.applied: Classical | Learned = Learned(name, module, data_consistency)
            self.output = name + DC_SUFFIX if data_consistency else name
        else:
            if options is None:
                raise InputError(
                    f"--method {method} needs its settings, and the model's registry version "
                    f"records none: give them with --option (e.g. "
                    f"{_EXAMPLE_OPTIONS.get(method, 'iterations=100')}), or run `sparsect "
                    "promote`, which stores the tuned ones on the registry versions.")
            self.applied, self.output = Classical(method, dict(options)), method

    @property
    def geometry(self) -> Geometry:
        return self.acquisition.geometry

    @property
    def reads_scan(self) -> bool:
        """Whether the method applied is a model that reads an earlier scan."""
        return self.method == "model" and str(self.module.hparams.get("prior")) == "scan"

    @property
    def hu_clip(self) -> tuple[float, float] | None:
        return self.acquisition.hu_clip

    def from_sinograms(self, sinograms: np.ndarray, images: np.ndarray | None = None,
                       prior_classes: np.ndarray | None = None,
                       prior_scan: np.ndarray | None = None,
                       prior_organs: np.ndarray | None = None) -> np.ndarray:
        """``(N, views, detectors)`` -> ``(N, H, W)`` HU; ``images``: their FBP with the
        acquisition's filter when already made; ``prior_classes``: ``(N, H, W)`` tissue
        classes for a model that reads external ones (``PriorMap``); ``prior_scan``:
        ``(N, H, W)`` HU, an earlier scan registered to these slices (PICCS, and a model
        that reads it with its organ classes ``prior_organs``)."""
        images = self.acquisition.fbp(sinograms) if images is None else images
        case = PriorCase(images, sinograms, self.acquisition, full_dose_classes=prior_classes,
                         prior=prior_scan, prior_organs=prior_organs)
        return self.applied.apply(case)[self.output].images

    def simulate(self, hu_slices: np.ndarray, name: str) -> np.ndarray:
        """The sinograms of scan ``name``'s ``(N, H, W)`` HU slices (each slice's noise
        keyed by the scan's name and the slice, as ``external`` keys it)."""
        keys = [(scan_key(name), z) for z in range(len(hu_slices))]
        return self.acquisition.simulate(hu_slices, keys, self.workers)[0]


_EXAMPLE_OPTIONS = {"fbp": "filter=hann", "tv": "weight=0.03 --option iterations=100"}
DEFAULT_SEGMENTER = Path("artifacts/segmenter")
"""Where the pipeline's ``segmenter`` stage writes (dvc.yaml): the organ map of an earlier
scan, unless ``--segmenter`` names another."""


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
    label_table(prior.table)
    return prior


@dataclass(frozen=True)
class PriorScan:
    """The ``--prior-scan`` of ``sparsect reconstruct``: an earlier full-dose CT of the
    patient, the registration settings (``followup.registration``), and the segmenter
    checkpoint whose classes are its organ map (for a model that reads it)."""

    path: Path
    registration: dict
    segmenter: Path | None = None


def _with_prior_scan(recon: Reconstructor, prior_scan: PriorScan, sinograms: np.ndarray,
                     spacing: tuple[float, float, float], output: Path) -> np.ndarray:
    """Reads, registers and applies the earlier scan; writes the registration beside
    ``output``."""
    from sparsect.prior_scan import read_prior_scan, register_prior_scan

    geometry = recon.geometry
    baseline, own_mm = read_prior_scan(prior_scan.path, geometry.image_size,
                                       geometry.pixel_size_mm, recon.hu_clip, spacing[0])
    images = recon.acquisition.fbp(sinograms)
    prior, record = register_prior_scan(images, baseline, spacing, prior_scan.registration,
                                        prior_scan.path)
    organs, extra = None, {}
    if recon.reads_scan:
        from sparsect.models.segmenter import segment

        segmenter = prior_scan.segmenter
        if segmenter is None or not Path(segmenter).is_file():
            raise InputError(f"Model '{recon.output}' reads the earlier scan's organ map, made "
                             f"by the segmenter, and '{segmenter}' is missing: give --segmenter "
                             "(the segmenter stage's output) or run `dvc repro segmenter`.")
        organs = segment(segmenter, prior)
        extra = {"segmenter": str(Path(segmenter).resolve()),
                 "segmenter_sha256": sha256_file(Path(segmenter))}
    volume = recon.from_sinograms(sinograms, images, prior_scan=prior, prior_organs=organs)
    check_output_name(output)
    settings = recon.applied.settings if isinstance(recon.applied, PriorImage) else {}
    atomic_write_json(prior_sidecar(output), {
        "prior_scan": str(Path(prior_scan.path).resolve()), "method": recon.output,
        "settings": settings, "prior_slice_mm": own_mm, "registration": record, **extra})
    return volume


def _reconstruct_measurement(recon: Reconstructor, item: Path, output: Path) -> Path:
    """A measured sinogram (:func:`~sparsect.physics.measured.read_measurement`): a
    classical method runs on the sinogram's own geometry and grid; a model needs its own
    geometry, so the sinogram is rebinned onto the model's detector where every view's
    rays are the model's (:func:`~sparsect.physics.rebin.rebin_to`), and refused
    otherwise. ``<output stem>.geometry.json`` beside the output records the geometry,
    how its axis offset was set and whether the data were rebinned."""
    measurement = read_measurement(item)
    check_output_name(output)
    record = {"input": str(Path(item).resolve()), "method": recon.output, **measurement.record}
    if recon.method in CLASSICAL:
        geometry = measurement.geometry
        acquisition = dataclasses.replace(recon.acquisition, geometry=geometry)
        case = PriorCase(acquisition.fbp(measurement.sinograms), measurement.sinograms,
                         acquisition)
        volume = recon.applied.apply(case)[recon.output].images
        record["rebinned_to"] = None
    else:
        geometry = recon.geometry
        sinograms = measurement.sinograms
        if measurement.geometry != geometry:
            try:
                sinograms = rebin_to(sinograms, measurement.geometry, geometry)
            except ValueError as reason:
                raise InputError(
                    f"Sinogram '{item}' cannot be given to model '{recon.output}': {reason}; "
                    "reconstruct it with --method fbp, sirt, cgls or tv, which run on its own "
                    "geometry.") from None
            record["rebinned_to"] = geometry.to_dict()
        else:
            record["rebinned_to"] = None
        applied = recon.applied
        if (isinstance(applied, Learned) and applied.data_consistency
                and measurement.counts is not None and record["rebinned_to"] is None):
            # measured counts give each slice's noise exactly (Poisson): +dc stops there
            floor = residual_floor(sinograms, geometry, counts=measurement.counts[0],
                                   upsample=recon.acquisition.upsample)
            applied = dataclasses.replace(applied, dc_floor=floor.floor)
            record["dc_floor"] = {"source": "counts", **{
                part: [float(v) for v in getattr(floor, part)]
                for part in ("floor", "noise", "mismatch")}}
        case = PriorCase(recon.acquisition.fbp(sinograms), sinograms, recon.acquisition)
        volume = applied.apply(case)[recon.output].images
    px = geometry.pixel_size_mm
    sidecar = geometry_sidecar(output)
    atomic_write_json(sidecar, record)
    try:
        save_nifti(output, volume_from_slices(volume), np.diag([px, px, 1.0, 1.0]))
    except BaseException:
        sidecar.unlink(missing_ok=True)
        raise
    return output


def reconstruct_input(recon: Reconstructor, item: Path, output: Path,
                      save_reference: bool = False, series: str | None = None,
                      prior_scan: PriorScan | None = None) -> Path:
    """Reconstructs one input into ``output`` (NIfTI, HU); ``series`` (a UID or series
    number) picks the series of a DICOM folder that holds several; ``prior_scan``: the
    earlier scan PICCS reads."""
    geometry = recon.geometry
    if item.suffix == ".npy":
        if prior_scan is not None:
            raise InputError(f"Sinogram '{item}' has no position in the patient to register "
                             "--prior-scan to: reconstruct the scan volume instead.")
        if recon.prior is not None:
            raise InputError(f"Sinogram '{item}' has no position in the patient to register "
                             "--prior to: reconstruct the scan volume instead, or drop --prior.")
        return _reconstruct_measurement(recon, item, output)
    entry = ScanEntry(item.name, item, None, series=series if is_dicom_input(item) else None)
    subject = standardise(load_subject(entry), geometry.image_size, geometry.pixel_size_mm,
                          recon.hu_clip)
    reference = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
    affine = subject["ct"].affine
    sinograms = recon.simulate(reference, scan_name(item))
    if prior_scan is not None:
        spacing = tuple(float(v) for v in subject["ct"].spacing)
        volume = _with_prior_scan(recon, prior_scan, sinograms,
                                  (spacing[2], spacing[1], spacing[0]), output)
    elif recon.prior is None:
        volume = recon.from_sinograms(sinograms)
    else:
        # the map is registered to what this scan gives at reconstruction time: its FBP
        images = recon.acquisition.fbp(sinograms)
        registered = register_label_map(recon.prior.path, volume_from_slices(images), affine,
                                        recon.prior.table)
        volume = recon.from_sinograms(sinograms, images, axial_slices(registered.classes))
        check_output_name(output)
        atomic_write_json(prior_sidecar(output), {
            "label_map": str(Path(recon.prior.path).resolve()),
            "table": recon.prior.table,
            "oracle": bool(recon.prior.oracle),
            "model": recon.module.hparams.get("variant"),
            "registration": registered.record,
        })
    try:
        save_nifti(output, volume_from_slices(volume), affine)
    except BaseException:
        if recon.prior is not None or prior_scan is not None:
            prior_sidecar(output).unlink(missing_ok=True)
        raise
    if save_reference:
        save_nifti(output.with_name(f"{nifti_stem(output)}_reference.nii.gz"),
                    volume_from_slices(reference), affine)
    return output


def run(input_path: Path, output: Path, module, method: str = "model", views: int | None = None,
        save_reference: bool = False, device: str = "auto",
        options: dict[str, Any] | None = None, series: str | None = None,
        data_consistency: bool = False, prior: PriorMap | None = None, seed: int = 0,
        workers: int = 1, prior_scan: PriorScan | None = None, jobs: int = 1,
        threads: int | None = None, devices: int | None = None,
        num_nodes: int = 1) -> list[Path]:
    """Reconstructs one input into ``output``, or every series of a folder (an archive,
    :mod:`sparsect.archive`) under the folder ``output``: in ``jobs`` processes of
    ``threads`` torch threads each, or with ``devices``, in Lightning's predict loop on
    ``devices`` x ``num_nodes`` DDP ranks."""
    reads_scan = method == "model" and str(module.hparams.get("prior")) == "scan"
    name = module.hparams.get("variant") or "this model"
    if prior_scan is not None and method != "piccs" and not reads_scan:
        reader = f"model '{name}'" if method == "model" else f"--method {method}"
        raise InputError(f"--prior-scan is read by --method piccs or a model that reads an "
                         f"earlier scan (prior: scan), and {reader} cannot read one: add "
                         "--method piccs, pick such a model, or drop --prior-scan.")
    if reads_scan and prior_scan is None:
        raise InputError(f"Model '{name}' reads an earlier scan of the patient: add "
                         "--prior-scan BASELINE.")
    if method == "piccs" and prior_scan is None:
        raise InputError("--method piccs reconstructs with an earlier scan of the patient: "
                         "add --prior-scan BASELINE.")
    if prior_scan is not None and prior is not None:
        raise InputError("--prior-scan brings its own organ map (the segmenter's): drop --prior.")
    recon = Reconstructor(module, method, views, device=device, options=options,
                          data_consistency=data_consistency, prior=prior, seed=seed,
                          workers=workers)
    many = is_archive(Path(input_path), series)
    inputs = find_series(Path(input_path)) if many else list_inputs(input_path)
    if prior_scan is not None and len(inputs) != 1:
        raise InputError(f"--prior-scan is an earlier scan of one patient but '{input_path}' "
                         f"holds {len(inputs)} inputs: reconstruct them one at a time.")
    if prior is not None and len(inputs) != 1:
        raise InputError(f"--prior is the label map of one patient but '{input_path}' holds "
                         f"{len(inputs)} inputs: reconstruct them one at a time.")
    if series is not None and not any(is_dicom_input(item) for item in inputs):
        raise InputError(f"--series {series} picks a DICOM series, but '{input_path}' holds no "
                         "DICOM files: drop --series.")
    if not many:
        check_output_name(output)
        return [reconstruct_input(recon, inputs[0], output, save_reference, series, prior_scan)]
    # an archive: every series at any depth, in `jobs` processes, resumable, a bad series
    # a row of summary.csv (sparsect.archive)
    settings = (module, method, views, device, options, data_consistency, seed,
                series, save_reference, active_spacing_override())
    rows = run_archive(Path(input_path), Path(output), _archive_setup, settings, _archive_work,
                       _configuration(*settings), jobs, threads, inputs, devices, num_nodes,
                       "auto")
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        raise InputError(
            f"{len(failed)} of {len(rows)} series in '{input_path}' failed (the first, "
            f"'{failed[0]['input']}': {failed[0]['reason']}): their reasons are in "
            f"'{Path(output) / SUMMARY}'; fix or remove them and rerun, which skips the "
            "finished ones.")
    return [Path(output) / row["output"] for row in rows]


def _archive_setup(module, method, views, device, options, data_consistency, seed, series,
                   save_reference, spacing, **rank) -> tuple[Reconstructor, str | None, bool]:
    """A process's reconstructor for :func:`~sparsect.archive.run_archive` (simulating in
    that process: the archive's processes are the parallelism), inside the caller's
    ``--spacing`` override for the rest of the process."""
    if spacing is not None:
        spacing_override(spacing[1], spacing[0]).__enter__()
    device = rank.get("device", device)  # a DDP rank's own GPU
    recon = Reconstructor(module, method, views, device=device, options=options,
                          data_consistency=data_consistency, seed=seed, workers=1)
    return recon, series, save_reference


def _archive_work(worker: tuple[Reconstructor, str | None, bool], item: Path,
                  output: Path) -> tuple[int, ...]:
    recon, series, save_reference = worker
    reconstruct_input(recon, item, output, save_reference, series)
    return tuple(nib.load(output).shape)


def _configuration(module, *settings: Any) -> str:
    """The checksum of what decides an archive's outputs: the network's weights and
    recorded settings, the method and its settings, and the package's version."""
    import io

    import torch

    from sparsect import __version__

    weights = io.BytesIO()
    torch.save(module.state_dict(), weights)
    return config_digest(weights.getvalue(), dict(module.hparams), list(settings), __version__)


def reconstruct_files(cfg: Any, input_path: Path, output: Path, model_uri: str | None = None,
                      method: str = "model", views: int | None = None,
                      save_reference: bool = False, series: str | None = None,
                      data_consistency: bool = False,
                      prior: PriorMap | None = None, runtime: str = "torch",
                      export_dir: Path | None = None,
                      options: dict[str, Any] | None = None,
                      prior_scan: Path | None = None,
                      segmenter: Path | None = None, jobs: int = 1,
                      threads: int | None = None, devices: int | None = None,
                      num_nodes: int = 1) -> list[Path]:
    """``sparsect reconstruct``: ``model_uri`` (default: the ``sg_unet`` champion for
    ``views``) applied to ``input_path`` (``series``: the DICOM series to take from a
    folder holding several), with the settings of ``cfg``; ``data_consistency``: the
    model's data-consistency step after it (the ``+dc`` method); ``prior``: the label
    map an oracle-prior model reads; ``runtime``: what runs the network (torch, or the
    ONNX graph of :mod:`sparsect.deploy`'s export in ``export_dir``, by default the one
    logged to the registry version); ``options``: a classical method's settings, by default
    the tuned ones the registry version records. With ``prior_scan`` and neither a model
    nor a method, the model is the champion of the first of ``followup.model.variants``
    (a model that reads the earlier scan; its organ map from ``segmenter``, by default
    the pipeline's)."""
    from sparsect.deploy import runtime_module
    from sparsect.registry import champion_uri, registered_baselines, resolve_model_uri

    if model_uri is None and prior_scan is not None and method == "model":
        model_uri = champion_uri(cfg, views, str(cfg.followup.model.variants[0]))
    uri = model_uri or champion_uri(cfg, views)
    module = resolve_model_uri(cfg, uri)
    if method == "model":
        module = runtime_module(cfg, module, runtime, uri, export_dir)
    elif options is None:
        options = registered_baselines(cfg, uri).get(method)
        if options is None and method == "piccs":
            options = tuned_piccs(Path("reports/followup"), module)
    scan = None
    if prior_scan is not None:
        from omegaconf import OmegaConf

        scan = PriorScan(Path(prior_scan), dict(OmegaConf.to_container(
            cfg.followup.registration, resolve=True)),
            Path(segmenter or DEFAULT_SEGMENTER) / "segmenter.ckpt")
    return run(input_path, output, module, method, views, save_reference,
               str(cfg.physics.device), options, series, data_consistency, prior,
               int(cfg.seed), workers_from_cfg(cfg), scan, jobs, threads, devices, num_nodes)


def tuned_piccs(folder: Path, module) -> dict[str, Any] | None:
    """The PICCS settings ``followup@<views>`` chose on the validation pairs for the model's
    view count (``folder/<views>/metrics.json``), or None where it has not run."""
    import json

    views = Acquisition.of_module(module).geometry.views
    path = Path(folder) / str(views) / "metrics.json"
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text())["_followup"]["tuning"]["piccs"])
