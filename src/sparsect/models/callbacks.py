"""Training callbacks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class EpochSummary(pl.Callback):
    """One line per epoch on rank 0 (stage logs under `dvc repro` are not a terminal,
    so a progress bar would be noise there)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"{name}={float(metrics[name]):.4g}" for name in
                 ("train/loss", "val/loss", "val/psnr", "val/ssim", "val/dice") if name in metrics]
        print(f"[{self.label}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
              f"{time.perf_counter() - self._start:.0f}s " + " ".join(parts), file=sys.stderr,
              flush=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place, so a
    kill during a save leaves the previous ``last.ckpt`` intact and resumable."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
