"""Stage ``train@<views>``: the residual UNet and the semantically-guided UNet.

Model selection uses the validation split only (checkpoint with the best
``val/psnr``); the test split is not even loaded. Each model is one MLflow run
holding the parameters, the per-epoch ``train/*`` and ``val/*`` metrics and the
selected checkpoint.

Resume: checkpoints (``last.ckpt`` every epoch) and the MLflow run id live in a
work folder beside the output (``.<out>.work``), keyed by a fingerprint of the
training config. Re-running an interrupted stage with the same config resumes
each model from its ``last.ckpt`` into the same MLflow run and ends at the same
epoch count; a finished model is not retrained. The work folder is removed
once the output is complete.

Distributed: under DDP (``trainer.strategy=ddp``, ``trainer.devices=N``)
Lightning re-launches this command once per rank; only global rank 0 logs to
MLflow and writes outputs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from sparsect.data.datamodule import SliceDataModule, SplitPaths
from sparsect.data.store import atomic_dir, atomic_write_json
from sparsect.errors import InputError
from sparsect.models.callbacks import AtomicCheckpointIO, EpochSummary
from sparsect.models.checkpoint import save_portable
from sparsect.models.module import ReconModule
from sparsect.settings import geometry_from_cfg, noise_from_cfg
from sparsect.tracking import CHECKPOINT_TAG, flatten, provenance_tags, sha256_file, tracking_uri

# model name -> prior variant
MODELS = {"unet": "none", "sg_unet": "predicted", "sg_threshold": "threshold",
          "sg_oracle": "oracle"}
MODEL_OF_PRIOR = {prior: name for name, prior in MODELS.items()}
TRAINING_KEYS = ("seed", "model", "prior", "trainer", "evaluate", "data", "geometry", "noise",
                 "physics")


def default_models(cfg: DictConfig) -> tuple[str, ...]:
    """The FBPConvNet baseline and the semantically-guided model of ``cfg.prior``."""
    variant = str(cfg.prior.variant)
    if variant not in MODEL_OF_PRIOR:
        raise InputError(f"prior.variant '{variant}' is unknown: use one of "
                         f"{', '.join(MODEL_OF_PRIOR)}.")
    return tuple(dict.fromkeys(("unet", MODEL_OF_PRIOR[variant])))


def build_module(cfg: DictConfig, prior: str, views: int) -> ReconModule:
    return ReconModule(
        prior=prior,
        channels=int(cfg.model.channels),
        depth=int(cfg.model.depth),
        seg_channels=int(cfg.model.seg_channels),
        in_channels=int(cfg.model.context_slices),
        lr=float(cfg.trainer.lr),
        weight_decay=float(cfg.trainer.weight_decay),
        loss=OmegaConf.to_container(cfg.trainer.loss),
        region_weights=tuple(float(w) for w in cfg.trainer.region_weights),
        hu_min=float(cfg.evaluate.hu_min),
        hu_max=float(cfg.evaluate.hu_max),
        geometry=geometry_from_cfg(cfg, views).to_dict(),
        noise=asdict(noise_from_cfg(cfg)),
    )


def fingerprint(cfg: DictConfig, name: str, views: int) -> str:
    """Hash of everything that shapes a training run (resuming needs the same)."""
    everything = OmegaConf.to_container(cfg, resolve=True)
    payload = {key: everything.get(key) for key in TRAINING_KEYS}
    # devices/strategy change how, not what, is trained: a run may resume on other hardware
    for key in ("devices", "strategy", "accelerator", "num_workers"):
        payload["trainer"].pop(key, None)
    payload.update(model_name=name, views=views)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_model(cfg: DictConfig, name: str, views: int, prepared_dir: Path, sim_dir: Path,
                masks_dir: Path, work_dir: Path) -> tuple[dict[str, Any], bool]:
    """Trains (or resumes) one model; returns (summary, is_global_zero)."""
    prior = MODELS[name]
    work = work_dir / name
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("fingerprint") != fingerprint(cfg, name, views):
        shutil.rmtree(work, ignore_errors=True)  # stale: another config; start afresh
        state = {}
    work.mkdir(parents=True, exist_ok=True)
    if state.get("summary"):  # finished before an interruption of a later model
        return state["summary"], True

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
                                 context=int(cfg.model.context_slices), seed=int(cfg.seed))
    logger = MLFlowLogger(
        experiment_name=str(cfg.logger.experiment), tracking_uri=tracking_uri(cfg),
        run_name=f"{name}@{views}", run_id=state.get("mlflow_run_id"),
        tags={**provenance_tags(), "model": name, "prior": prior, "views": str(views),
              "upper_bound": str(prior == "oracle").lower()},
    )
    checkpoint = ModelCheckpoint(dirpath=work, filename="best", monitor="val/psnr",
                                 mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=int(cfg.trainer.max_epochs), accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices, strategy=str(cfg.trainer.strategy),
        precision=str(cfg.trainer.precision), logger=logger,
        callbacks=[checkpoint, EpochSummary(f"{name}@{views}")],
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=10, deterministic=True,
    )
    last = work / "last.ckpt"
    resuming = _readable(last)
    if trainer.is_global_zero:
        if not resuming:
            logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True), "cfg."))
        atomic_write_json(state_file, {"fingerprint": fingerprint(cfg, name, views),
                                       "mlflow_run_id": logger.run_id})
    trainer.fit(module, datamodule, ckpt_path=str(last) if resuming else None)
    if not trainer.is_global_zero:
        return {}, False
    selected = save_portable(Path(checkpoint.best_model_path), work / "selected.ckpt")
    logger.experiment.log_artifact(logger.run_id, str(selected), artifact_path="checkpoints")
    # The run is found again by the checkpoint's content (evaluate, promote): the
    # stage output holds no run id, which would differ on every run of equal weights.
    logger.experiment.set_tag(logger.run_id, CHECKPOINT_TAG, sha256_file(selected))
    summary = {
        "prior": prior,
        "best_val_psnr": float(checkpoint.best_model_score),
        "epochs": int(trainer.current_epoch),
        "resumed": resuming,
        "checkpoint": f"{name}.ckpt",
    }
    atomic_write_json(state_file, {"fingerprint": fingerprint(cfg, name, views),
                                   "mlflow_run_id": logger.run_id, "summary": summary})
    return summary, True


def _readable(checkpoint: Path) -> bool:
    """A checkpoint cut short by a kill mid-write is not resumable: start afresh."""
    if not checkpoint.is_file():
        return False
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated zip, bad pickle, ...
        checkpoint.unlink()
        return False
    return True


def work_dir_for(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.work"


def train(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path, out_dir: Path,
          views: int | None = None, models: tuple[str, ...] | None = None) -> Path:
    """Trains ``models`` (default: :func:`default_models`) at ``views``; writes
    ``out_dir/<model>.ckpt`` and ``summary.json``."""
    views = int(views if views is not None else cfg.geometry.views)
    models = models or default_models(cfg)
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise InputError(f"Unknown model(s) {unknown}: choose from {', '.join(MODELS)}.")
    tracking_uri(cfg)  # an unreachable server fails here, before any work
    work = work_dir_for(out_dir)
    summary, is_zero = {}, True
    for name in models:
        summary[name], is_zero = train_model(cfg, name, views, prepared_dir, sim_dir, masks_dir,
                                             work)
    if not is_zero:
        return Path(out_dir)  # other ranks write nothing
    with atomic_dir(Path(out_dir)) as tmp:
        for name in models:
            shutil.copy2(work / name / "selected.ckpt", tmp / f"{name}.ckpt")
        atomic_write_json(tmp / "summary.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    return Path(out_dir)
