"""Stage ``external@<views>``: every method scored on real scans (external validation).

The phantom test split says how a method does on the anatomy it was trained on;
real CT says whether it transfers. This stage takes the real scans kept in the
repository (``realct/``, never trained on), puts them on the reconstruction grid as
``prepare`` does, simulates the sparse acquisition exactly as ``simulate`` does (same
geometry, noise, simulation grid and FBP filter; each slice's noise seeded from
``(seed, views, scan, slice)``), and scores FBP, the classical baselines (with the
settings ``baselines@<views>`` chose on the validation split) and every trained model
on them, as ``evaluate`` does:

- PSNR, SSIM and RMSE on ``evaluate``'s HU window and data range, over the whole image
  and inside the body (the body mask of the reference: outside it both are air, and
  whole-image numbers reward clean air);
- per tissue region where the scan has a label map;
- the data-consistency residual ``||A x - y|| / ||y||``, and the reference's own;
- every model after its data-consistency step too (``<model>+dc``), where its
  checkpoint records one, stopped at each slice's own residual floor (estimated from
  its sinogram, :mod:`sparsect.physics.noisefloor`; the phantoms' floor lies below the
  real scans');
- the noise of the reference (:func:`~sparsect.evaluation.statistics.reference_noise_sd`):
  a real reference is a noisy image, which caps every method's PSNR and penalises
  denoising; it is stated beside every result;
- one panel per scan.

At most ``external.max_slices`` slices of each scan are scored (evenly spaced, the same
for every method); the models still read each scored slice's axial neighbours from the
whole volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sparsect.data.io import axial_slices, find_scans, load_subject, standardise
from sparsect.data.store import atomic_dir, atomic_write_json, save_array
from sparsect.errors import InputError
from sparsect.evaluation.figures import panel
from sparsect.evaluation.statistics import (
    per_slice_region_metrics,
    reference_noise_sd,
    region_masks,
)
from sparsect.methods.case import Case
from sparsect.methods.loading import load_methods, run_methods, tuned_settings, write_images
from sparsect.physics.acquisition import scan_key
from sparsect.priors.labels import label_table
from sparsect.priors.masks import body_mask, tissue_masks_from_hu, tissue_masks_from_labels_and_hu
from sparsect.settings import acquisition_from_cfg, workers_from_cfg
from sparsect.stages.evaluate import image_metrics, residuals


def scored_slices(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` slice indices of ``count``, evenly spaced, ends included.

    >>> scored_slices(112, 4).tolist(), scored_slices(3, 16).tolist()
    ([0, 37, 74, 111], [0, 1, 2])
    """
    if limit < 1:
        raise InputError(f"external.max_slices is {limit}: set it to 1 or more.")
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))


@dataclass
class RealScan:
    """One real scan on the reconstruction grid: display-convention slices in HU, its
    tissue classes (from its label map where it has one, else from HU) and body masks."""

    name: str
    source: str
    hu: np.ndarray
    classes: np.ndarray
    body: np.ndarray
    labelled: bool

    @classmethod
    def load(cls, cfg: DictConfig, entry) -> RealScan:
        data = cfg.data
        subject = standardise(load_subject(entry), int(data.image_size),
                              float(data.pixel_size_mm), tuple(data.hu_clip))
        hu = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
        min_pixels = int(cfg.masks.min_component_voxels)
        labelled = "labels" in subject
        if labelled:
            labels = axial_slices(subject["labels"].data[0].numpy()).astype(np.int64)
            table = label_table(cfg.external.label_table, "external.label_table")
            classes = tissue_masks_from_labels_and_hu(labels, hu, table, min_pixels)
        else:
            classes = tissue_masks_from_hu(hu, min_pixels)
        body = np.stack([body_mask(image) for image in hu])
        return cls(entry.subject, str(entry.scan), hu, classes, body, labelled)


def _score(image: np.ndarray, scan: RealScan, picks: np.ndarray, sinograms: np.ndarray,
           geometry, lo: float, hi: float) -> dict:
    reference = scan.hu[picks]
    whole = image_metrics(image, reference, lo, hi)
    regions = region_masks(scan.classes[picks]) if scan.labelled else {}
    regions["body"] = scan.body[picks]
    by_region = per_slice_region_metrics(image, reference, regions, lo, hi)
    body = by_region.pop("body")
    residual, _ = residuals(image, sinograms, geometry)
    out = {"psnr_body": float(np.nanmean(body["psnr"])),
           "psnr": float(whole["psnr"].mean()),
           "ssim_body": float(np.nanmean(body["ssim"])),
           "ssim": float(whole["ssim"].mean()),
           "rmse_hu_body": float(np.nanmean(body["rmse_hu"])),
           "rmse_hu": float(whole["rmse_hu"].mean()),
           "residual": float(residual.mean())}
    if by_region:  # a region absent from every scored slice is left out
        out["regions"] = {name: {k: float(np.nanmean(v)) for k, v in values.items()}
                          for name, values in by_region.items()
                          if np.isfinite(values["psnr"]).any()}
    return out


def external(cfg: DictConfig, scans_dir: Path, models_dir: Path, baselines_dir: Path,
             out_dir: Path, views: int | None = None, workers: int | None = None,
             images_dir: Path | None = None) -> Path:
    """Writes ``out_dir/metrics.json`` (scan -> method -> metrics, and ``_reference``:
    the reference's noise and residual) and ``out_dir/<scan>/panel.png``; with
    ``images_dir``, every method's images of each scan as ``<scan>/<method>.npy`` there.

    Raises:
        InputError: ``scans_dir`` holds no scan or a corrupt one, or a setting is invalid.
    """
    acquisition = acquisition_from_cfg(cfg, views)
    geometry = acquisition.geometry
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    limit = int(cfg.external.max_slices)
    workers = workers_from_cfg(cfg, workers)
    entries = find_scans(Path(scans_dir))
    methods = load_methods(cfg, geometry.views, models_dir, baselines_dir, workers=workers)
    metrics: dict = {"_settings": {
        "views": geometry.views, "scans_dir": str(scans_dir), "hu_window": [lo, hi],
        "data_range_hu": hi - lo, "max_slices": limit,
        "noise": asdict(acquisition.noise),
        "baselines": tuned_settings(baselines_dir, geometry.views)}}
    with atomic_dir(Path(out_dir)) as tmp:
        simulated = {}
        for entry in entries:
            scan = RealScan.load(cfg, entry)
            keys = [(scan_key(scan.name), z) for z in range(len(scan.hu))]
            simulated[scan.name] = (scan, *acquisition.simulate(scan.hu, keys, workers))
        for name, (scan, sinograms, fbp) in simulated.items():
            picks = scored_slices(len(scan.hu), limit)
            folder = tmp / name
            folder.mkdir()
            save_array(folder, "sinogram", sinograms[picks])
            # the FBP baseline (its filter tuned) replaces the network input's FBP
            outputs = run_methods(methods, Case(fbp, sinograms, acquisition, slices=picks,
                                                full_dose_classes=scan.classes))
            images = {method: output.images for method, output in outputs.items()}
            extra = {method: output.extra for method, output in outputs.items()}
            if images_dir is not None:
                write_images(Path(images_dir) / name, images)
            reference_residual, _ = residuals(scan.hu[picks], sinograms[picks], geometry)
            result: dict = {"_reference": {
                "source": scan.source, "slices": int(len(picks)),
                "slices_in_scan": int(len(scan.hu)), "label_map": scan.labelled,
                "noise_sd_hu": reference_noise_sd(scan.hu[picks], scan.body[picks]),
                "residual": float(reference_residual.mean())}}
            for method, image in images.items():
                result[method] = {**_score(image, scan, picks, sinograms[picks], geometry,
                                           lo, hi), **extra[method]}
            metrics[name] = result
            middle = picks[len(picks) // 2: len(picks) // 2 + 1]
            panel(folder / "panel.png", scan.hu[middle],
                  {method: image[len(picks) // 2: len(picks) // 2 + 1]
                   for method, image in images.items()},
                  {"reference masks": scan.classes[middle]},
                  title=f"{name}, {geometry.views} views, slice {int(middle[0])}")
        atomic_write_json(tmp / "metrics.json", metrics)
    return Path(out_dir)
