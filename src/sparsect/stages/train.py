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
import io
import json
import os
import shutil
import sys
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.strategies import DDPStrategy, Strategy

from sparsect.data.datamodule import SliceDataModule, SplitPaths
from sparsect.data.store import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    load_array,
    read_json,
)
from sparsect.errors import InputError
from sparsect.methods.case import Case
from sparsect.methods.learned import Learned
from sparsect.models.callbacks import AtomicCheckpointIO, EpochSummary
from sparsect.models.checkpoint import load_module, save_portable
from sparsect.models.consistency import tune
from sparsect.models.module import ReconModule
from sparsect.models.variants import PRIORS, known_variant, net_spec, variant_table
from sparsect.physics.acquisition import Acquisition
from sparsect.settings import acquisition_from_cfg
from sparsect.tracking import (
    CHECKPOINT_TAG,
    ensure_experiment,
    flatten,
    provenance_tags,
    sha256_file,
    tracking_uri,
)

# The config the resume fingerprint hashes: everything that shapes a training run.
# dvc.yaml's `train` params list the same sections (a test checks it); the
# trainer keys in HARDWARE_KEYS change how, not what, is trained, so a run may
# resume on other hardware.
TRAINING_KEYS = ("seed", "model", "prior", "variants", "trainer", "evaluate", "data",
                 "geometry", "noise", "physics")
HARDWARE_KEYS = ("devices", "num_nodes", "strategy", "timeout_s", "accelerator",
                 "num_workers")


_SCAN_MODELS = ("models that read an earlier scan (prior: scan) train on the follow-up pairs: "
                "run `sparsect followup-train` (dvc repro followup_train@<views>).")


def default_models(cfg: DictConfig) -> tuple[str, ...]:
    """``sweep.models`` if set, else the FBPConvNet baseline ``unet`` and every
    image-domain variant whose prior is ``cfg.prior.variant`` (variants that need the
    CT operator train only when listed: they cost far more per step)."""
    table = variant_table(cfg)
    listed = (cfg.get("sweep") or {}).get("models")
    if listed:
        return tuple(str(name) for name in listed)
    wanted = str(cfg.prior.variant)
    if wanted not in PRIORS:
        raise InputError(f"prior.variant '{wanted}' is unknown: use one of {', '.join(PRIORS)}.")
    if wanted == "scan":
        raise InputError(_SCAN_MODELS)
    return tuple(dict.fromkeys(["unet", *(name for name, v in table.items()
                                          if v.prior == wanted and not v.operator)]))


def module_from_cfg(cfg: DictConfig, name: str, views: int) -> ReconModule:
    """The untrained module of variant ``name`` at ``views``, recording everything
    inference needs (network spec, prior, intensity scale, acquisition).

    Widening a variant to another's parameter count (``match_params``) builds
    networks: call this after seeding, as ``train`` does."""
    table = variant_table(cfg)
    variant = known_variant(table, name)
    acquisition = acquisition_from_cfg(cfg, views)
    return ReconModule(
        net=net_spec(variant, cfg.model, table),
        prior=variant.prior,
        variant=name,
        lr=float(cfg.trainer.lr),
        weight_decay=float(cfg.trainer.weight_decay),
        loss=OmegaConf.to_container(cfg.trainer.loss),
        region_weights=tuple(float(w) for w in cfg.trainer.region_weights),
        hu_min=float(cfg.evaluate.hu_min),
        hu_max=float(cfg.evaluate.hu_max),
        geometry=acquisition.geometry.to_dict(),
        noise=asdict(acquisition.noise),
        acquisition=acquisition.record(),
    )


def datamodule_from_cfg(cfg: DictConfig, prior: str, prepared_dir: Path, sim_dir: Path,
                        masks_dir: Path, sinograms: bool = False) -> SliceDataModule:
    """Train and validation slices of the stage outputs, as ``cfg.trainer`` asks."""
    train, val = (SplitPaths(*(Path(folder) / split for folder in (prepared_dir, sim_dir,
                                                                   masks_dir)))
                  for split in ("train", "val"))
    trainer = cfg.trainer
    return SliceDataModule(train, val, prior,
                           batch_size=int(trainer.batch_size),
                           num_workers=int(trainer.num_workers),
                           augment=bool(trainer.augment),
                           crop=None if trainer.crop is None else int(trainer.crop),
                           context=int(cfg.model.context_slices), seed=int(cfg.seed),
                           sinograms=sinograms)


def fingerprint(cfg: DictConfig, name: str, views: int, keys: tuple[str, ...] = ()) -> str:
    """Hash of everything that shapes a training run (resuming needs the same); ``keys``:
    further config sections that shape it (e.g. the follow-up pairs a model learns from)."""
    everything = OmegaConf.to_container(cfg, resolve=True)
    payload = {key: everything.get(key) for key in (*TRAINING_KEYS, *keys)}
    for key in HARDWARE_KEYS:
        payload["trainer"].pop(key, None)
    payload.update(model_name=name, views=views)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_model(cfg: DictConfig, name: str, views: int, prepared_dir: Path | None,
                sim_dir: Path | None, masks_dir: Path | None, work_dir: Path,
                datamodule: pl.LightningDataModule | None = None,
                fingerprint_keys: tuple[str, ...] = ()) -> tuple[dict[str, Any], bool]:
    """Trains (or resumes) one model on the stage outputs (or on ``datamodule``, whose
    data ``fingerprint_keys`` name, without a data-consistency step); returns (summary,
    is_global_zero)."""
    work = work_dir / name
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    stamp = fingerprint(cfg, name, views, fingerprint_keys)
    # Every rank runs this function: under torchrun or srun all start at once, so only
    # global rank 0 changes the work folder and talks to MLflow; the others read it.
    zero = launched_as_rank_zero()
    if state.get("fingerprint") != stamp:
        if zero:
            shutil.rmtree(work, ignore_errors=True)  # stale: another config; start afresh
        state = {}
    if zero:
        work.mkdir(parents=True, exist_ok=True)
    if state.get("summary"):  # finished before an interruption of a later model
        return (state["summary"], True) if zero else ({}, False)

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = module_from_cfg(cfg, name, views)
    prior = str(module.hparams.prior)
    if datamodule is None:
        datamodule = datamodule_from_cfg(cfg, prior, prepared_dir, sim_dir, masks_dir,
                                         sinograms=module.needs_operator)
    logger = MLFlowLogger(
        experiment_name=str(cfg.logger.experiment), tracking_uri=tracking_uri(cfg),
        run_name=f"{name}@{views}", run_id=state.get("mlflow_run_id"),
        tags={**provenance_tags(), "model": name, "prior": prior, "views": str(views),
              "upper_bound": str(known_variant(variant_table(cfg), name).upper_bound).lower()},
    ) if zero else False
    checkpoint = ModelCheckpoint(dirpath=work, filename="best", monitor="val/psnr",
                                 mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=int(cfg.trainer.max_epochs), accelerator=str(cfg.trainer.accelerator),
        devices=cfg.trainer.devices, num_nodes=int(cfg.trainer.get("num_nodes", 1)),
        strategy=strategy(cfg),
        precision=str(cfg.trainer.precision), logger=logger,
        callbacks=[checkpoint, EpochSummary(f"{name}@{views}")],
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
        log_every_n_steps=10, deterministic=True,
    )
    if trainer.is_global_zero != zero:
        raise RuntimeError(f"rank {trainer.global_rank} disagrees with its launcher's "
                           "environment: launch with torchrun or srun, which set RANK")
    last = work / "last.ckpt"
    resuming = _readable(last, remove=zero)
    if trainer.is_global_zero:
        if not resuming:
            logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True), "cfg."))
        atomic_write_json(state_file, {"fingerprint": stamp, "mlflow_run_id": logger.run_id})
    with warnings.catch_warnings():
        # Lightning's notes that say nothing about the user's input: the work folder
        # holds state.json by design (resume), and Lightning calls a torch API that
        # torch has deprecated.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
        trainer.fit(module, datamodule, ckpt_path=str(last) if resuming else None)
    if not trainer.is_global_zero:
        return {}, False
    selected = save_portable(Path(checkpoint.best_model_path), work / "selected.ckpt")
    dc = (None if prepared_dir is None
          else choose_consistency(cfg, selected, prepared_dir, sim_dir, masks_dir))
    if dc is not None:
        logger.experiment.log_param(logger.run_id, "dc_lambda", dc["lambda"])
        logger.experiment.log_param(logger.run_id, "dc_steps", dc["steps"])
        logger.experiment.log_metric(logger.run_id, "val/dc_psnr", dc["psnr"])
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
        **({} if dc is None else {"dc": dc}),
    }
    atomic_write_json(state_file, {"fingerprint": stamp, "mlflow_run_id": logger.run_id,
                                   "summary": summary})
    return summary, True


def strategy(cfg: DictConfig) -> str | Strategy:
    """``trainer.strategy``; plain ``ddp`` gets ``trainer.timeout_s`` as its process-group
    timeout, so that a rank whose peer is gone fails instead of waiting 30 minutes."""
    name = str(cfg.trainer.strategy)
    timeout = cfg.trainer.get("timeout_s")
    if name != "ddp" or timeout is None:
        return name
    if not float(timeout) > 0:
        raise InputError(f"trainer.timeout_s is {timeout}: give a positive number of seconds "
                         "(how long a rank waits on the others).")
    return DDPStrategy(timeout=timedelta(seconds=float(timeout)))


def choose_consistency(cfg: DictConfig, checkpoint: Path, prepared_dir: Path, sim_dir: Path,
                       masks_dir: Path) -> dict[str, Any] | None:
    """Chooses the model's data-consistency step on the validation split
    (:func:`sparsect.models.consistency.tune`, ``model.dc_lambdas`` x ``model.dc_steps``)
    and records ``{"lambda", "steps"}`` in ``checkpoint``; None when ``model.dc_steps``
    is empty. Returns the choice with the validation figures of every trial."""
    steps = [int(k) for k in (cfg.model.get("dc_steps") or [])]
    if not steps:
        return None
    lambdas = [float(v) for v in (cfg.model.get("dc_lambdas") or [])]
    if not lambdas or min(lambdas) <= 0 or min(steps) < 1:
        raise InputError("model.dc_lambdas must list positive weights and model.dc_steps "
                         f"positive step counts (got {lambdas} and {steps}): fix them, or set "
                         "model.dc_steps: [] to skip the data-consistency step.")
    module = load_module(checkpoint)
    val = {name: Path(folder) / "val" for name, folder in
           (("prepared", prepared_dir), ("sim", sim_dir), ("masks", masks_dir))}
    fbp, sinograms = load_array(val["sim"], "fbp"), load_array(val["sim"], "sinogram")
    case = Case(fbp, sinograms, Acquisition.of_module(module),
                index=read_json(val["prepared"] / "index.json"),
                full_dose_classes=load_array(val["masks"], "masks"))
    images = Learned(module.hparams.get("variant") or "model", module).reconstruct(case)
    dc = tune(module, images, sinograms, load_array(val["prepared"], "hu"), lambdas, steps)
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["hyper_parameters"]["dc"] = {"lambda": dc["lambda"], "steps": dc["steps"]}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(checkpoint), buffer.getvalue())
    return {"split": "val", **dc}


def _readable(checkpoint: Path, remove: bool = True) -> bool:
    """A checkpoint cut short by a kill mid-write is not resumable: start afresh (and
    remove it, when ``remove``)."""
    if not checkpoint.is_file():
        return False
    try:
        torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - truncated zip, bad pickle, ...
        if remove:
            checkpoint.unlink(missing_ok=True)
        return False
    return True


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0 as its launcher set it, known before
    Lightning starts: torchrun's ``RANK``, SLURM's ``SLURM_PROCID`` (several tasks), or
    Lightning's own DDP launcher's ``NODE_RANK`` and ``LOCAL_RANK``; True when nothing
    launched it."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def work_dir_for(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.work"


def train(cfg: DictConfig, prepared_dir: Path, sim_dir: Path, masks_dir: Path, out_dir: Path,
          views: int | None = None, models: tuple[str, ...] | None = None) -> Path:
    """Trains ``models`` (default: :func:`default_models`) at ``views``; writes
    ``out_dir/<model>.ckpt`` and ``summary.json``."""
    views = int(views if views is not None else cfg.geometry.views)
    models = models or default_models(cfg)
    table = variant_table(cfg)
    for name in models:
        if known_variant(table, name).prior == "scan":
            raise InputError(f"Model '{name}': {_SCAN_MODELS}")
    uri = tracking_uri(cfg)  # an unreachable server fails here, before any work
    if launched_as_rank_zero():
        ensure_experiment(uri, str(cfg.logger.experiment))
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
