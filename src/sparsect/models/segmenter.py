"""The downstream organ segmenter: a fixed task model that scores reconstructions.

A plain 2D UNet (the :mod:`sparsect.models.unet` encoder and decoder with a
``num_classes`` head) segments HU slices into the classes of
:func:`sparsect.priors.organs.segmenter_classes`: background, the rest of the
body and the organs of :data:`~sparsect.priors.organs.DOWNSTREAM_ORGANS`. It is
trained once on full-dose reference slices (never on reconstructions) and then
frozen: every method's reconstruction is segmented by the same weights, so the
differences in organ Dice are differences between the reconstructions.

Training (:func:`fit`): intensities ``hu / 1000``, cross-entropy plus soft Dice,
random left-right flips, whole slices or random crops; the epoch with the highest
mean organ Dice on the validation slices is kept. Inference (:func:`segment`):
batched, without gradients, in eval mode, deterministic.

Only torch, Lightning and numpy are needed here (no hydra, mlflow or ASTRA).
"""

from __future__ import annotations

import io
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sparsect.errors import InputError
from sparsect.models.losses import soft_dice_loss
from sparsect.models.unet import CHANNELS_LAST, Decoder, Encoder, _channels_last
from sparsect.priors.organs import DOWNSTREAM_ORGANS, segmenter_class_names

__all__ = ["SegUNet", "SegmenterModule", "class_names", "fit", "load_segmenter", "save_segmenter",
           "segment"]

HU_SCALE = 1000.0
"""Network intensities are ``hu / HU_SCALE``: water 0, air -1."""
KIND = "sparsect-segmenter"
"""Tag in a segmenter checkpoint, telling it from a reconstruction model's."""


class SegUNet(nn.Module):
    """2D UNet with a ``num_classes`` logit head.

    >>> net = SegUNet(num_classes=4, channels=4, depth=3)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 4, 32, 32])
    """

    def __init__(self, num_classes: int, channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder(1, channels, depth)
        self.decoder = Decoder(self.encoder.widths)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        _channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x.contiguous(memory_format=CHANNELS_LAST))
        return self.head(self.decoder(features)).contiguous()


class SegmenterModule(pl.LightningModule):
    """Trains :class:`SegUNet`; the hyper-parameters rebuild it from a checkpoint."""

    def __init__(self, channels: int = 16, depth: int = 4, lr: float = 2e-3,
                 organs: tuple[str, ...] | list[str] = tuple(DOWNSTREAM_ORGANS),
                 hu_scale: float = HU_SCALE) -> None:
        super().__init__()
        organs = tuple(organs)
        self.save_hyperparameters({"channels": int(channels), "depth": int(depth),
                                   "lr": float(lr), "organs": list(organs),
                                   "hu_scale": float(hu_scale)})
        self.num_classes = 2 + len(organs)
        self.net = SegUNet(self.num_classes, int(channels), int(depth))
        self.history: list[dict[str, float]] = []
        self._train_sum, self._train_count = 0.0, 0
        self._overlap = torch.zeros(self.num_classes, dtype=torch.float64)
        self._total = torch.zeros(self.num_classes, dtype=torch.float64)
        self._val_dice = math.nan
        self._epoch_start = 0.0

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (one halving per level below the top)."""
        return 2 ** (int(self.hparams.depth) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` scaled intensities -> ``(B, num_classes, H, W)`` logits."""
        return self.net(images)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, classes = batch
        logits = self(images)
        return F.cross_entropy(logits, classes) + soft_dice_loss(logits, classes), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self._train_sum += float(loss.detach()) * batch[0].shape[0]
        self._train_count += batch[0].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._overlap.zero_()
        self._total.zero_()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        pred = F.one_hot(logits.argmax(dim=1), self.num_classes).flatten(0, 2).double()
        true = F.one_hot(batch[1], self.num_classes).flatten(0, 2).double()
        self._overlap += (pred * true).sum(dim=0).cpu()
        self._total += (pred.sum(dim=0) + true.sum(dim=0)).cpu()

    def on_validation_epoch_end(self) -> None:
        # Dice pooled over the whole validation split per organ: a per-slice mean would
        # weigh the few pixels of an organ's first and last slice like a whole slice.
        dice = torch.where(self._total > 0, 2 * self._overlap / self._total.clamp_min(1),
                           torch.nan)
        organs = dice[2:]
        self._val_dice = float(torch.nanmean(organs))
        self.log("val/dice", self._val_dice)
        for name, value in zip(self.hparams.organs, organs.tolist(), strict=True):
            self.log(f"val/dice_{name}", value)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        # here, not in a callback: Lightning runs the callbacks' epoch-end hooks before
        # the module's, when this epoch's validation Dice is not computed yet
        row = {"epoch": int(self.current_epoch) + 1,
               "train_loss": self._train_sum / max(1, self._train_count),
               "val_dice": self._val_dice}
        self.history.append(row)
        self._train_sum, self._train_count = 0.0, 0
        if self.trainer.is_global_zero:
            print(f"[segmenter] epoch {row['epoch']}/{self.trainer.max_epochs} "
                  f"{time.perf_counter() - self._epoch_start:.0f}s "
                  f"train/loss={row['train_loss']:.4g} val/dice={row['val_dice']:.4g}",
                  file=sys.stderr, flush=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr,
                                                        total_steps=total, pct_start=0.15)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _Slices(Dataset):
    """Slices ``(1, H, W)`` scaled and their classes ``(H, W)``; training draws a
    random crop and flip from torch's generator (seeded by :func:`fit`)."""

    def __init__(self, images_hu: np.ndarray, classes: np.ndarray, hu_scale: float,
                 train: bool, crop: int | None) -> None:
        self.images = torch.from_numpy(np.asarray(images_hu, dtype=np.float32) / hu_scale)
        self.classes = torch.from_numpy(np.asarray(classes, dtype=np.int64))
        self.train, self.crop = train, crop

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, classes = self.images[index], self.classes[index]
        if self.train and self.crop is not None:
            height, width = image.shape
            top = int(torch.randint(0, height - self.crop + 1, ()))
            left = int(torch.randint(0, width - self.crop + 1, ()))
            image = image[top:top + self.crop, left:left + self.crop]
            classes = classes[top:top + self.crop, left:left + self.crop]
        # Left-right only: the organs keep their look mirrored, while an up-down flip
        # would put the spine in front of the body, which no scan shows.
        if self.train and bool(torch.rand(()) < 0.5):
            image, classes = image.flip(-1), classes.flip(-1)
        return image.unsqueeze(0).contiguous(), classes.contiguous()


def fit(train_hu: np.ndarray, train_classes: np.ndarray, val_hu: np.ndarray,
        val_classes: np.ndarray, work_dir: Path, *, epochs: int, batch_size: int, lr: float,
        channels: int, depth: int, crop: int | None, seed: int,
        accelerator: str = "cpu") -> tuple[SegmenterModule, dict[str, Any]]:
    """Trains a segmenter on ``(N, H, W)`` HU slices and their segmenter classes; returns
    the module of the epoch with the highest validation organ Dice (eval mode) and
    ``{"epochs", "selected_epoch", "val_dice", "history"}``.

    ``work_dir`` receives Lightning's checkpoints. Same inputs and seed, same weights
    (on one machine kind)."""
    module_args = {"channels": channels, "depth": depth, "lr": lr}
    pl.seed_everything(int(seed), workers=True, verbose=False)
    module = SegmenterModule(**module_args)
    if crop is not None and (crop % module.multiple or crop > min(train_hu.shape[1:])):
        raise InputError(f"segmenter.crop {crop} must be a multiple of {module.multiple} "
                         f"(2**(depth-1)) no larger than the slices {train_hu.shape[1:]}: "
                         "fix it or set it to null.")
    if train_hu.shape[1] % module.multiple or train_hu.shape[2] % module.multiple:
        raise InputError(f"slices of {train_hu.shape[1:]} pixels do not halve {depth - 1} "
                         "times: lower segmenter.depth.")
    scale = float(module.hparams.hu_scale)
    train_loader = DataLoader(_Slices(train_hu, train_classes, scale, True, crop),
                              batch_size=int(batch_size), shuffle=True, num_workers=0,
                              drop_last=len(train_hu) > int(batch_size))
    val_loader = DataLoader(_Slices(val_hu, val_classes, scale, False, None),
                            batch_size=int(batch_size), shuffle=False, num_workers=0)
    checkpoint = ModelCheckpoint(dirpath=Path(work_dir), filename="selected",
                                 monitor="val/dice", mode="max", save_last=False)
    trainer = pl.Trainer(max_epochs=int(epochs), accelerator=accelerator, devices=1,
                         logger=False, callbacks=[checkpoint],
                         enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
                         num_sanity_val_steps=0, deterministic=True)
    with warnings.catch_warnings():
        # Lightning's notes that say nothing about the input: one process on purpose
        # (the slices sit in memory), and a torch API it calls that torch deprecated.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        trainer.fit(module, train_loader, val_loader)
    history = module.history
    payload = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    selected = SegmenterModule(**module_args)
    selected.load_state_dict(payload["state_dict"])
    best = max(history, key=lambda row: -math.inf if math.isnan(row["val_dice"])
               else row["val_dice"])
    summary = {"epochs": int(trainer.current_epoch), "selected_epoch": best["epoch"],
               "val_dice": float(checkpoint.best_model_score), "history": history}
    return selected.eval(), summary


def save_segmenter(module: SegmenterModule) -> bytes:
    """The checkpoint bytes of ``module``: its weights and hyper-parameters only (equal
    weights, equal bytes), to write with :func:`sparsect.data.store.atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save({"kind": KIND, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, buffer)
    return buffer.getvalue()


def load_segmenter(path: Path) -> SegmenterModule:
    """Rebuilds the segmenter of a checkpoint written by ``sparsect segmenter``, in eval mode
    (read with ``weights_only=True``: a crafted file cannot run code).

    Raises:
        InputError: if the file is missing, unreadable or not a segmenter checkpoint.
    """
    path = Path(path)
    fix = "run `sparsect segmenter` (dvc repro segmenter) or fix the path"
    if not path.is_file():
        raise InputError(f"Segmenter checkpoint '{path}' does not exist: {fix}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors have many types
        raise InputError(f"Segmenter checkpoint '{path}' cannot be loaded "
                         f"({type(error).__name__}): {fix}.") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise InputError(f"'{path}' is not a segmenter checkpoint: {fix}.")
    try:
        module = SegmenterModule(**dict(payload["hyper_parameters"]))
        module.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"Segmenter checkpoint '{path}' does not match this version "
                         f"({str(error).splitlines()[0]}): {fix}.") from None
    return module.eval()


@torch.no_grad()
def segment(module_or_path: SegmenterModule | Path | str, images_hu: np.ndarray,
            batch_size: int = 16) -> np.ndarray:
    """Segmenter classes ``(N, H, W)`` uint8 of HU slices ``(N, H, W)``.

    Slices whose sides are not multiples of ``2**(depth-1)`` are padded with air and
    cropped back. Runs on the CPU, in float32, one batch at a time.

    Raises:
        InputError: if a checkpoint path is missing or not a segmenter checkpoint.
    """
    module = (module_or_path if isinstance(module_or_path, SegmenterModule)
              else load_segmenter(Path(module_or_path)))
    module = module.to("cpu").eval()
    images = np.asarray(images_hu, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"images_hu must be (N, H, W), got shape {images.shape}")
    count, height, width = images.shape
    multiple = module.multiple
    pad_h, pad_w = -height % multiple, -width % multiple
    out = np.empty((count, height, width), dtype=np.uint8)
    scale = float(module.hparams.hu_scale)
    for start in range(0, count, int(batch_size)):
        batch = torch.from_numpy(images[start:start + int(batch_size)] / scale).unsqueeze(1)
        if pad_h or pad_w:
            batch = F.pad(batch, (0, pad_w, 0, pad_h), value=-1000.0 / scale)
        classes = module(batch).argmax(dim=1)[:, :height, :width]
        out[start:start + len(classes)] = classes.numpy().astype(np.uint8)
    return out


def class_names(module: SegmenterModule) -> tuple[str, ...]:
    """Class names of a segmenter by index (background, body, its organs)."""
    organs = tuple(module.hparams.organs)
    return segmenter_class_names()[:2] + organs
