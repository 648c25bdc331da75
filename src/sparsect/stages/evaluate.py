"""Stage ``evaluate@<views>``: test-split metrics for FBP and the trained models.

This is the only stage that reads the test split's reconstructions, and it
selects nothing: checkpoints were chosen on validation data by ``train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sparsect.data.datamodule import neighbour_table
from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json
from sparsect.evaluation.figures import panel
from sparsect.evaluation.metrics import mean_dice, psnr_hu, rmse_hu, ssim_hu
from sparsect.models.checkpoint import load_module
from sparsect.priors.classes import NUM_TISSUE_CLASSES
from sparsect.priors.masks import one_hot

BATCH = 16


@torch.no_grad()
def run_model(checkpoint: Path, fbp_hu: np.ndarray, prior_classes: np.ndarray | None,
              index: list | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs a checkpoint on ``(N, H, W)`` FBP slices -> (HU images, predicted classes | None).

    ``index`` (subject, z of every slice) is needed for 2.5D models."""
    module = load_module(checkpoint)
    context = int(module.hparams.in_channels)
    neighbours = None if context == 1 else neighbour_table(index, context)
    images, classes = [], []
    for start in range(0, len(fbp_hu), BATCH):
        stop = min(start + BATCH, len(fbp_hu))
        if neighbours is None:
            fbp = torch.from_numpy(np.asarray(fbp_hu[start:stop], np.float32))[:, None]
        else:
            fbp = torch.from_numpy(np.asarray(fbp_hu, np.float32)[neighbours[start:stop]])
        prior = None
        if prior_classes is not None:
            prior = torch.from_numpy(one_hot(np.asarray(prior_classes[start:start + BATCH])))
        recon, probs = module.reconstruct_hu(fbp, prior)
        images.append(recon[:, 0].numpy())
        if probs is not None:
            classes.append(probs.argmax(dim=1).numpy().astype(np.uint8))
    return np.concatenate(images), (np.concatenate(classes) if classes else None)


def image_metrics(pred: np.ndarray, target: np.ndarray, hu_min: float, hu_max: float
                  ) -> dict[str, float]:
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(np.asarray(target))
    return {
        "psnr": float(psnr_hu(pred_t, target_t, hu_min, hu_max).mean()),
        "ssim": float(ssim_hu(pred_t, target_t, hu_min, hu_max).mean()),
        "rmse_hu": float(rmse_hu(pred_t, target_t).mean()),
    }


def evaluate(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path,
             models_dir: Path, out_dir: Path, views: int | None = None,
             baselines_dir: Path | None = None) -> Path:
    """Writes ``out_dir/metrics.json`` (method -> metrics) and ``out_dir/panel.png``.

    Methods: ``fbp``, the classical baselines found in ``baselines_dir`` (e.g.
    ``sirt``, ``tv``) and every model in ``models_dir``."""
    views = int(views if views is not None else cfg.geometry.views)
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    target = np.asarray(load_array(Path(prepared_dir) / "test", "hu"))
    fbp = np.asarray(load_array(Path(sim_dir) / "test", "fbp"))
    true_masks = np.asarray(load_array(Path(masks_dir) / "test", "masks"))
    summary = json.loads((Path(models_dir) / "summary.json").read_text())

    images = {"fbp": fbp}
    if baselines_dir is not None:
        for method in read_json(Path(baselines_dir) / "settings.json")["methods"]:
            images[method] = np.asarray(load_array(Path(baselines_dir), method))
    metrics = {name: image_metrics(image, target, lo, hi) for name, image in images.items()}
    predicted_masks = {}
    for name, info in summary.items():
        prior = info["prior"]
        # Only the oracle is given full-dose masks; every other prior comes from the FBP.
        prior_classes = {"oracle": true_masks,
                         "threshold": load_array(Path(sim_dir) / "test", "threshold_masks")
                         }.get(prior)
        recon, classes = run_model(Path(models_dir) / info["checkpoint"], fbp, prior_classes,
                                   read_json(Path(prepared_dir) / "test" / "index.json"))
        images[name] = recon
        metrics[name] = image_metrics(recon, target, lo, hi)
        metrics[name]["prior"] = prior
        if classes is not None and prior == "predicted":
            dice = mean_dice(torch.from_numpy(classes), torch.from_numpy(true_masks),
                             NUM_TISSUE_CLASSES)
            metrics[name]["dice"] = float(torch.nanmean(dice))
            predicted_masks[f"{name} masks"] = classes

    # Panel slices: evenly spaced through the test set, chosen without looking at results.
    count = int(cfg.evaluate.panel_slices)
    picks = np.linspace(0, len(target) - 1, count + 2)[1:-1].round().astype(int)
    with atomic_dir(Path(out_dir)) as tmp:
        atomic_write_json(tmp / "metrics.json", metrics)
        panel(tmp / "panel.png", target[picks], {k: v[picks] for k, v in images.items()},
              {"full-dose masks": true_masks[picks],
               **{k: v[picks] for k, v in predicted_masks.items()}},
              title=f"{views} views, test split")
    return Path(out_dir)


def collect(report_dirs: dict[int, Path], out_path: Path) -> Path:
    """Merges per-view ``metrics.json`` into ``{"<views>": {"<method>": {...}}}``."""
    merged = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
              for views, folder in sorted(report_dirs.items())}
    atomic_write_json(Path(out_path), merged)
    return Path(out_path)
