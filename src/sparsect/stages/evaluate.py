"""Stage ``evaluate@<views>``: the test-split report for every method.

This is the only stage that reads the test split's reconstructions, and it
selects nothing: checkpoints were chosen on validation data by ``train``.
Every method is scored on the same test slices:

- PSNR, SSIM (fixed HU window and data range) and RMSE in HU, whole image and
  per region of the full-dose masks (lung, soft tissue, bone, inside the body);
- a 95% bootstrap CI over slices, and one resampling whole subjects;
- data consistency: ``||A x - y|| / ||y||`` against the measured sparse sinogram
  (the full-dose reference's own residual is the floor set by noise and the
  finer simulation grid: a network far above it disagrees with the measurements);
- Dice of predicted tissue masks.

Every model whose checkpoint records a data-consistency step (chosen on validation
after training, :mod:`sparsect.models.consistency`) is also scored after it, as
``<model>+dc``: each slice's step stops at that slice's own residual floor, estimated
from its sinogram (:mod:`sparsect.physics.noisefloor`).

The oracle, if trained, is marked ``upper_bound``: it reads full-dose masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json
from sparsect.evaluation.figures import panel, residual_panel
from sparsect.evaluation.metrics import mean_dice, psnr_hu, rmse_hu, ssim_hu
from sparsect.evaluation.statistics import per_slice_region_metrics, region_masks, summarise
from sparsect.methods.case import Case, Output
from sparsect.methods.classical import Classical
from sparsect.methods.loading import load_methods, write_images
from sparsect.physics import Geometry, hu_to_mu
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.operator import ct_operator
from sparsect.priors.classes import NUM_TISSUE_CLASSES


def image_metrics(pred: np.ndarray, target: np.ndarray, hu_min: float, hu_max: float
                  ) -> dict[str, np.ndarray]:
    """Per-slice PSNR, SSIM, RMSE (arrays of length N)."""
    pred_t, target_t = torch.from_numpy(np.asarray(pred)), torch.from_numpy(np.asarray(target))
    return {
        "psnr": psnr_hu(pred_t, target_t, hu_min, hu_max).numpy(),
        "ssim": ssim_hu(pred_t, target_t, hu_min, hu_max).numpy(),
        "rmse_hu": rmse_hu(pred_t, target_t).numpy(),
    }


def residuals(images_hu: np.ndarray, sinograms: np.ndarray, geometry: Geometry
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice ``||A x - y|| / ||y||`` and the residual sinograms ``A x - y`` (``A``: the
    CPU projector's matrix, projecting the whole stack at once)."""
    mu = torch.from_numpy(np.maximum(hu_to_mu(np.asarray(images_hu, np.float32)), 0.0))
    with torch.no_grad():
        maps = ct_operator(geometry, "cpu").forward(mu).numpy() - sinograms
    norms = np.linalg.norm(maps.reshape(len(maps), -1), axis=1)
    return norms / np.linalg.norm(sinograms.reshape(len(maps), -1), axis=1), maps


def _summary(per_slice: dict[str, np.ndarray], subjects: np.ndarray) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, values in per_slice.items():
        stats = summarise(values, subjects)
        out[name] = stats.pop("mean")
        out.setdefault("ci95", {})[name] = stats["ci95"]
        out.setdefault("ci95_by_subject", {})[name] = stats["ci95_by_subject"]
        out.setdefault("by_subject", {})[name] = stats["by_subject"]
    return out


@dataclass
class HeldOut:
    """What ``evaluate`` reads of the held-out test split: references, measurements, masks."""

    target: np.ndarray
    index: list
    subjects: np.ndarray
    fbp: np.ndarray
    sinograms: np.ndarray
    geometry: Geometry
    true_masks: np.ndarray
    acquisition: dict
    """What ``simulate`` recorded: geometry, noise, simulation grid, FBP filter."""

    def case(self, seed: int = 0, device: str = "auto") -> Case:
        """The split as the methods read it (the method layer hands the full-dose masks to
        an oracle only)."""
        return Case(self.fbp, self.sinograms,
                    Acquisition.from_record(self.acquisition["geometry"],
                                            self.acquisition["noise"], self.acquisition,
                                            seed, device),
                    index=self.index, full_dose_classes=self.true_masks)

    @classmethod
    def load(cls, prepared_dir: Path, sim_dir: Path, masks_dir: Path) -> HeldOut:
        # copies in memory (the test split is small), writable as torch expects
        index = read_json(Path(prepared_dir) / "test" / "index.json")
        header = read_json(Path(sim_dir) / "geometry.json")
        return cls(
            target=np.array(load_array(Path(prepared_dir) / "test", "hu")),
            index=index,
            subjects=np.array([subject for subject, _ in index]),
            fbp=np.array(load_array(Path(sim_dir) / "test", "fbp")),
            sinograms=np.array(load_array(Path(sim_dir) / "test", "sinogram")),
            geometry=Geometry.from_dict(header["geometry"]),
            true_masks=np.array(load_array(Path(masks_dir) / "test", "masks")),
            acquisition=header,
        )


def reconstructions(cfg: DictConfig, split: HeldOut, models_dir: Path,
                    baselines_dir: Path | None, views: int) -> tuple[dict, dict, dict]:
    """Every method's test images, with per-model extras (prior, upper bound, Dice)
    and the tissue classes predicted by predicted-prior models.

    The classical baselines' test images are the ones ``baselines@<views>`` wrote: that
    stage ran these very methods, with these settings, on this split."""
    case = split.case(int(cfg.seed), str(cfg.physics.device))
    images: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    predicted_masks = {}
    for method in load_methods(cfg, views, models_dir, baselines_dir):
        if isinstance(method, Classical) and not method.reads_case_fbp:
            outputs = {method.name: Output(np.array(load_array(Path(baselines_dir),
                                                               method.name)))}
        else:
            outputs = method.apply(case)
        for name, output in outputs.items():
            images[name], extra[name] = output.images, dict(output.extra)
            if output.classes is not None and output.extra.get("prior") == "predicted":
                dice = mean_dice(torch.from_numpy(output.classes),
                                 torch.from_numpy(split.true_masks), NUM_TISSUE_CLASSES).numpy()
                extra[name]["dice"] = float(np.nanmean(dice))
                extra[name]["ci95_dice"] = summarise(dice, split.subjects)["ci95"]
                predicted_masks[f"{name} masks"] = output.classes
    return images, extra, predicted_masks


def score(images: dict[str, np.ndarray], extra: dict[str, dict], split: HeldOut,
          lo: float, hi: float) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Metrics of every method (whole image, per region, residual) and residual maps."""
    regions = region_masks(split.true_masks)
    metrics: dict[str, dict] = {}
    residual_maps = {}
    for name, image in images.items():
        per_slice = image_metrics(image, split.target, lo, hi)
        per_slice["residual"], residual_maps[name] = residuals(image, split.sinograms,
                                                               split.geometry)
        metrics[name] = {**_summary(per_slice, split.subjects), **extra[name]}
        by_region = per_slice_region_metrics(image, split.target, regions, lo, hi)
        metrics[name]["regions"] = {
            region: {k: float(np.nanmean(v)) for k, v in values.items()}
            for region, values in by_region.items()}
        metrics[name]["regions_ci95"] = {
            region: {k: summarise(v, split.subjects)["ci95"] for k, v in values.items()}
            for region, values in by_region.items()}
    return metrics, residual_maps


def evaluate(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path,
             models_dir: Path, out_dir: Path, views: int | None = None,
             baselines_dir: Path | None = None, cohort_dir: Path | None = None,
             segmenter_dir: Path | None = None, study_subjects: int | None = -1,
             scans=None,  # noqa: ANN001 - sparsect.stages.study.Scans
             images_dir: Path | None = None) -> Path:
    """Writes ``out_dir/metrics.json`` (method -> metrics), ``panel.png`` and ``residuals.png``.

    Methods: ``fbp``, the classical baselines found in ``baselines_dir`` (e.g.
    ``sirt``, ``tv``, and ``fbp`` with its tuned filter, which replaces the network
    input's) and every model in ``models_dir``; ``_baselines`` records their settings.

    With ``cohort_dir``, each method also gets the task study's scores
    (:mod:`sparsect.stages.study`: lesion contrast recovery, CNR, detectability,
    invented and lost structure, and with ``segmenter_dir`` downstream Dice) on the
    cohort's first ``study_subjects`` subjects (-1: ``study.subjects``; None: all);
    ``scans`` is the cohort already simulated at this view count. With ``images_dir``,
    every method's images are written there: ``test/<method>.npy``, and the study's
    ``study/<method>.npy`` (``(2, K, S, Z, H, W)``, see :func:`sparsect.stages.study.study`)."""
    views = int(views if views is not None else cfg.geometry.views)
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    split = HeldOut.load(prepared_dir, sim_dir, masks_dir)
    images, extra, predicted_masks = reconstructions(cfg, split, models_dir, baselines_dir,
                                                     views)
    metrics, residual_maps = score(images, extra, split, lo, hi)
    reference_residual, _ = residuals(split.target, split.sinograms, split.geometry)
    metrics["_reference"] = {"residual": float(reference_residual.mean()),
                             "note": "full-dose reference: residual floor from noise and the "
                                     "finer simulation grid"}
    if baselines_dir is not None:  # which settings the baselines used, chosen on validation
        chosen = read_json(Path(baselines_dir) / "settings.json")
        metrics["_baselines"] = {key: chosen.get(key) for key in ("methods", "defaults", "tuning")}
    metrics["_settings"] = {"views": views, "split": "test", "slices": int(len(split.target)),
                            "subjects": sorted(set(split.subjects.tolist())),
                            "hu_window": [lo, hi], "data_range_hu": hi - lo}
    if cohort_dir is not None:
        from sparsect.stages.study import study

        subjects = cfg.study.get("subjects") if study_subjects == -1 else study_subjects
        scores = study(cfg, Path(cohort_dir), Path(models_dir), baselines_dir, views,
                       segmenter_dir, subjects, scans,
                       None if images_dir is None else Path(images_dir) / "study")
        for name, values in scores.items():
            if name.startswith("_"):
                metrics[f"_task{name}"] = values
            elif name in metrics:
                metrics[name].update({k: v for k, v in values.items() if k not in metrics[name]})

    count = int(cfg.evaluate.panel_slices)
    picks = np.linspace(0, len(split.target) - 1, count + 2)[1:-1].round().astype(int)
    with atomic_dir(Path(out_dir)) as tmp:
        atomic_write_json(tmp / "metrics.json", metrics)
        panel(tmp / "panel.png", split.target[picks], {k: v[picks] for k, v in images.items()},
              {"full-dose masks": split.true_masks[picks],
               **{k: v[picks] for k, v in predicted_masks.items()}},
              title=f"{views} views, test split")
        residual_panel(tmp / "residuals.png", {k: v[picks] for k, v in residual_maps.items()},
                       title=f"{views} views: A x - y, measured sparse sinogram")
    if images_dir is not None:
        write_images(Path(images_dir) / "test", images)
    log_figures(cfg, read_json(Path(models_dir) / "summary.json"), Path(models_dir),
                Path(out_dir))
    return Path(out_dir)


def log_figures(cfg: DictConfig, summary: dict, models_dir: Path, folder: Path) -> None:
    """Attaches the report files to each model's MLflow run (skipped when no run of
    this tracking store trained the checkpoint)."""
    import mlflow

    from sparsect.tracking import tracking_uri, training_run_id

    uri = tracking_uri(cfg)
    client = mlflow.MlflowClient(uri)
    for info in summary.values():
        run_id = training_run_id(uri, Path(models_dir) / info["checkpoint"])
        if not run_id:
            continue
        for name in ("metrics.json", "panel.png", "residuals.png"):
            client.log_artifact(run_id, str(folder / name), artifact_path="evaluation")
