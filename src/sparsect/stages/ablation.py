"""The prior ablation: every variant of the table trained at one view count.

All variants train with the same budget (epochs, steps, data, seed) at
comparable parameter counts (the plain UNet is widened to the
semantically-guided one's, see ``match_params``; the external-prior variants
have no segmentation decoder), and are scored on the test split by the same
code as ``evaluate``. The report is keyed by variant name, each entry with its prior.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from sparsect.data.store import atomic_write_json
from sparsect.models.checkpoint import load_module
from sparsect.models.variants import count_parameters, variant_table
from sparsect.stages.evaluate import evaluate
from sparsect.stages.train import train


def ablation(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path,
             work_dir: Path, out_path: Path, views: int | None = None) -> Path:
    """Trains and scores every variant; writes ``{"<variant>": {...}}`` to ``out_path``."""
    views = int(views if views is not None else cfg.geometry.views)
    table = variant_table(cfg)
    models_dir = Path(work_dir) / "models"
    # the image-domain variants: those reading the sinogram have their own experiment
    table = {name: v for name, v in table.items() if not v.operator}
    train(cfg, prepared_dir, sim_dir, masks_dir, models_dir, views, tuple(table))
    evaluate(cfg, prepared_dir, sim_dir, masks_dir, models_dir, Path(work_dir) / "evaluation",
             views)
    metrics = json.loads((Path(work_dir) / "evaluation" / "metrics.json").read_text())
    summary = json.loads((models_dir / "summary.json").read_text())
    report = {"_fbp": metrics["fbp"]}
    for name, variant in table.items():
        module = load_module(models_dir / summary[name]["checkpoint"])
        report[name] = {
            "prior": variant.prior,
            **{k: metrics[name][k] for k in ("psnr", "ssim", "rmse_hu")},
            "dice": metrics[name].get("dice"),
            "parameters": count_parameters(module.net),
            "best_val_psnr": summary[name]["best_val_psnr"],
            "upper_bound": variant.upper_bound,
        }
    report["_settings"] = {"views": views, "epochs": int(cfg.trainer.max_epochs),
                           "split": "test", "hu_window": [float(cfg.evaluate.hu_min),
                                                          float(cfg.evaluate.hu_max)]}
    atomic_write_json(Path(out_path), report)
    return Path(out_path)
