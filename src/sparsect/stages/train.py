"""Stage ``train@<views>``: the residual UNet and the semantically-guided UNet.

Model selection uses the validation split only (checkpoint with the best
``val/psnr``); the test split is not even loaded. Each model is one MLflow
run holding the parameters, the per-epoch ``train/*`` and ``val/*`` metrics
and the selected checkpoint.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from sparsect.data.datamodule import SliceDataModule, SplitPaths
from sparsect.data.store import atomic_dir, atomic_write_json
from sparsect.models.callbacks import EpochSummary
from sparsect.models.module import ReconModule
from sparsect.settings import geometry_from_cfg, noise_from_cfg
from sparsect.tracking import flatten, provenance_tags, tracking_uri

MODELS = {"unet": "none", "sg_unet": None}  # model name -> prior variant (None: cfg.prior)


def build_module(cfg: DictConfig, prior: str, views: int) -> ReconModule:
    from dataclasses import asdict

    return ReconModule(
        prior=prior,
        channels=int(cfg.model.channels),
        depth=int(cfg.model.depth),
        seg_channels=int(cfg.model.seg_channels),
        lr=float(cfg.trainer.lr),
        weight_decay=float(cfg.trainer.weight_decay),
        loss=OmegaConf.to_container(cfg.trainer.loss),
        hu_min=float(cfg.evaluate.hu_min),
        hu_max=float(cfg.evaluate.hu_max),
        geometry=geometry_from_cfg(cfg, views).to_dict(),
        noise=asdict(noise_from_cfg(cfg)),
    )


def train_model(cfg: DictConfig, name: str, views: int, prepared_dir: Path, sim_dir: Path,
                masks_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Trains one model; returns its summary (best val metrics, run id, checkpoint path)."""
    prior = MODELS.get(name) or str(cfg.prior.variant)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg, prior, views)

    def paths(split: str) -> SplitPaths:
        return SplitPaths(Path(prepared_dir) / split, Path(sim_dir) / split,
                          Path(masks_dir) / split)

    datamodule = SliceDataModule(paths("train"), paths("val"), prior,
                                 batch_size=int(cfg.trainer.batch_size),
                                 num_workers=int(cfg.trainer.num_workers),
                                 augment=bool(cfg.trainer.augment),
                                 crop=None if cfg.trainer.crop is None else int(cfg.trainer.crop),
                                 seed=int(cfg.seed))
    logger = MLFlowLogger(
        experiment_name=str(cfg.logger.experiment), tracking_uri=tracking_uri(cfg),
        run_name=f"{name}@{views}",
        tags={**provenance_tags(), "model": name, "prior": prior, "views": str(views),
              "upper_bound": str(prior == "oracle").lower()},
    )
    checkpoint = ModelCheckpoint(dirpath=work_dir / name, filename="best", monitor="val/psnr",
                                 mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=int(cfg.trainer.max_epochs), accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices, strategy=str(cfg.trainer.strategy),
        precision=str(cfg.trainer.precision), logger=logger,
        callbacks=[checkpoint, EpochSummary(f"{name}@{views}")],
        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=10, deterministic=True,
    )
    logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True), "cfg."))
    trainer.fit(module, datamodule)
    best = Path(checkpoint.best_model_path)
    if trainer.is_global_zero:
        logger.experiment.log_artifact(logger.run_id, str(best), artifact_path="checkpoints")
    return {
        "prior": prior,
        "best_val_psnr": float(checkpoint.best_model_score),
        "epochs": int(trainer.current_epoch),
        "mlflow_run_id": logger.run_id,
        "checkpoint": f"{name}.ckpt",
        "_best_path": best,
    }


def train(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path, out_dir: Path,
          views: int | None = None, models: tuple[str, ...] = tuple(MODELS)) -> Path:
    """Trains ``models`` at ``views``; writes ``out_dir/<model>.ckpt`` and ``summary.json``."""
    views = int(views if views is not None else cfg.geometry.views)
    summary = {}
    with atomic_dir(Path(out_dir)) as tmp:
        work = tmp / "work"
        for name in models:
            result = train_model(cfg, name, views, prepared_dir, sim_dir, masks_dir, work)
            shutil.copy2(result.pop("_best_path"), tmp / f"{name}.ckpt")
            summary[name] = result
        shutil.rmtree(work)
        atomic_write_json(tmp / "summary.json", summary)
    return Path(out_dir)
