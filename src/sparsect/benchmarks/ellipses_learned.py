"""FBP+U-Net and Learned Primal-Dual on the ellipses benchmark, trained with Lightning.

Both go through :class:`sparsect.models.module.ReconModule`, the module the pipeline
trains, on whole 128 x 128 images in the images' own [0, 1] units (``hu_scale = 1``):

* inputs: the FBP of each split (the window and frequency scaling of
  ``ellipses.<method>.fbp_filter`` / ``fbp_frequency_scaling``; dival's U-Net reads a
  Hann FBP at scaling 1) and, for the LPD, the noisy sinogram, which is already ``A x``
  of the image in mm (``acquisition.sinogram = "linear"``, no conversion);
* loss: the mean squared error alone (dival trains both with MSE; PSNR is a monotone
  function of it);
* selection: the checkpoint with the best ``val/psnr`` on the validation split
  (``ReconModule``'s window [0, 1], i.e. dival's data range for these images, whose
  background is 0 and maximum 1), never the test split.

Training is deterministic (``pl.Trainer(deterministic=True)``, seeded initialisation
and shuffling), on the CPU threads torch is given.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sparsect.benchmarks.ellipses_data import Split, fbp, reco_geometry
from sparsect.benchmarks.ellipses_settings import EllipsesSettings

MSE_ONLY = {"l1": 0.0, "mse": 1.0, "ssim": 0.0, "ce": 0.0, "dice": 0.0, "region": 0.0}


class _Pairs(Dataset):
    """``fbp``, ``target``, ``sinogram`` and (unused, prior ``none``) ``masks`` per image."""

    def __init__(self, fbp: np.ndarray, split: Split) -> None:
        self.fbp = torch.from_numpy(np.ascontiguousarray(fbp, np.float32)).unsqueeze(1)
        self.target = torch.from_numpy(np.ascontiguousarray(split.images)).unsqueeze(1)
        self.sinogram = torch.from_numpy(np.ascontiguousarray(split.sinograms))
        self.masks = torch.zeros(split.images.shape[1:], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "fbp": self.fbp[index],
            "target": self.target[index],
            "sinogram": self.sinogram[index],
            "masks": self.masks,
        }


def train_and_test(
    name: str,
    s: EllipsesSettings,
    train: Split,
    validation: Split,
    test: Split,
    work_dir: Path,
    checkpoint: Path,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Trains ``name`` (``unet`` or ``lpd``) on ``train``, keeps the epoch with the best
    validation PSNR, writes it to ``checkpoint`` and reconstructs ``test``.

    Returns the ``(N, H, W)`` test reconstructions and what ``metrics.json`` records
    about the method (settings, how the checkpoint was chosen, training budget)."""
    # Lightning and the sparsect modules built on it take seconds to import: only a run
    # with a learned method pays for them.
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from sparsect.methods.case import Case
    from sparsect.methods.learned import Learned
    from sparsect.models.callbacks import EpochSummary
    from sparsect.models.checkpoint import load_module, save_portable
    from sparsect.models.module import ReconModule

    t = s.unet if name == "unet" else s.lpd
    if t is None:
        raise ValueError(f"no training settings for {name!r}")
    geometry = reco_geometry(s)
    if t.train_samples is not None:
        train = Split(
            train.name, train.images[: t.train_samples], train.sinograms[: t.train_samples]
        )
    wall, cpu = time.perf_counter(), time.process_time()
    inputs = {
        split.name: fbp(split.sinograms, geometry, t.fbp_filter, t.fbp_frequency_scaling)
        for split in (train, validation, test)
    }

    pl.seed_everything(s.seed, workers=True, verbose=False)
    module = ReconModule(
        net=dict(t.net),
        prior="none",
        variant=name,
        lr=t.lr,
        loss=MSE_ONLY,
        hu_scale=1.0,
        hu_min=0.0,
        hu_max=1.0,
        geometry=geometry.to_dict(),
        acquisition={
            "sinogram": "linear",
            "filter": t.fbp_filter,
            "frequency_scaling": t.fbp_frequency_scaling,
            "benchmark": "ellipses",
            "noise": s.noise,
        },
    )
    shuffle = torch.Generator().manual_seed(s.seed)
    train_loader = DataLoader(
        _Pairs(inputs["train"], train),
        batch_size=t.batch_size,
        shuffle=True,
        generator=shuffle,
        drop_last=len(train) > t.batch_size,
    )
    val_loader = DataLoader(
        _Pairs(inputs["validation"], validation), batch_size=max(t.batch_size, 16)
    )
    work_dir = Path(work_dir)
    selector = ModelCheckpoint(
        dirpath=work_dir, filename="best", monitor="val/psnr", mode="max", save_last=False
    )
    trainer = pl.Trainer(
        max_epochs=t.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[selector, EpochSummary(f"ellipses {name}")],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    with warnings.catch_warnings():
        # Lightning's advice on loader workers: the tensors are in memory, workers would
        # only copy them
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated")
        trainer.fit(module, train_loader, val_loader)
    train_seconds, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    best = Path(selector.best_model_path)
    best_epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]) + 1
    save_portable(best, Path(checkpoint))
    shutil.rmtree(work_dir, ignore_errors=True)

    model = load_module(Path(checkpoint))
    # dival's numbers are single-pass: no mirror average; the benchmark's own FBP and
    # sinograms in the images' units (no acquisition of the pipeline's kind)
    method = Learned(name, model, batch_size=32, mirror_average=False)
    recon = method.reconstruct(Case(inputs["test"], test.sinograms, None))
    info = {
        "settings": {
            "net": dict(t.net),
            "lr": t.lr,
            "batch_size": t.batch_size,
            "epochs": t.epochs,
            "loss": "mse",
            "optimizer": "AdamW, one-cycle cosine",
            "input_fbp": {"filter": t.fbp_filter, "frequency_scaling": t.fbp_frequency_scaling},
        },
        "chosen_by": "the epoch with the best validation PSNR (val/psnr); no test data",
        "training": {
            "samples": len(train),
            "epochs": t.epochs,
            "best_epoch": best_epoch,
            "batch_size": t.batch_size,
            "steps": int(trainer.global_step),
            "best_validation_psnr": float(selector.best_model_score),
            "parameters": int(sum(p.numel() for p in module.parameters())),
            "seconds": round(train_seconds, 1),
            "cpu_seconds": round(train_cpu, 1),
        },
    }
    log(
        f"{name}: trained {t.epochs} epochs on {len(train)} images in {train_seconds:.0f} s, "
        f"best epoch {best_epoch} (validation {info['training']['best_validation_psnr']:.2f} dB)"
    )
    return recon, info
