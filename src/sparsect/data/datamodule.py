"""Slices for training: FBP input, full-dose target, tissue masks, optional prior.

Everything is read from memory-mapped ``.npy`` files written by the stages, so
a DataLoader worker (or a DDP rank) touches only the slices it serves.

Randomness is a pure function of ``(seed, epoch, slice)``: :class:`EpochSampler`
shuffles by ``(seed, epoch)`` and hands the dataset keys that carry the epoch,
from which each sample draws its crop and flips. No random state carries over
from one epoch to the next, so a training resumed from ``last.ckpt`` repeats
exactly what the uninterrupted run would have done (a test checks the weights
agree), whatever the number of DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sparsect.data.store import load_array, read_json
from sparsect.physics.units import HU_SCALE
from sparsect.priors.classes import NUM_TISSUE_CLASSES
from sparsect.priors.organs import scan_prior


def neighbour_table(index: list[list], context: int) -> np.ndarray:
    """``(N, context)`` slice indices of each slice's axial neighbours (2.5D input).

    Neighbours never cross into another subject: at a volume's ends the edge
    slice is repeated. ``context`` must be odd; 1 gives plain 2D input.

    >>> neighbour_table([["a", 0], ["a", 1], ["b", 0]], 3).tolist()
    [[0, 0, 1], [0, 1, 1], [2, 2, 2]]
    """
    if context < 1 or context % 2 == 0:
        raise ValueError(f"model.context_slices must be odd and >= 1, got {context}")
    half = context // 2
    rows = {}
    for row, (subject, z) in enumerate(index):
        rows[(subject, int(z))] = row
    table = np.empty((len(index), context), dtype=np.int64)
    for row, (subject, z) in enumerate(index):
        for offset in range(-half, half + 1):
            neighbour = int(z) + offset
            while (subject, neighbour) not in rows:
                neighbour += 1 if offset < 0 else -1
            table[row, offset + half] = rows[(subject, neighbour)]
    return table


class SliceDataset(Dataset):
    """Dataset of slices.

    Args:
        fbp_hu: ``(N, H, W)`` sparse-view FBP in HU.
        target_hu: ``(N, H, W)`` full-dose reference in HU.
        masks: ``(N, H, W)`` tissue classes of the full-dose reference (training target).
        prior_classes: ``(N, H, W)`` class map given to the network as its prior
            (threshold masks of the FBP, or the full-dose masks for the oracle), or None.
        augment: random horizontal/vertical flips, applied to all arrays alike.
        crop: train on random ``crop x crop`` patches (None: whole slices). The
            networks are fully convolutional, so patches cut the cost per step
            while inference still runs on whole slices.
        neighbours: ``(N, k)`` from :func:`neighbour_table` for 2.5D input (k
            FBP slices as channels; target and masks are the centre slice's).
        prior_scan, prior_organs: ``(N, H, W)`` the earlier scan registered to each slice
            (HU) and its organ classes, for ``prior: scan`` networks (their input
            ``prior_probs``, :func:`~sparsect.priors.organs.scan_prior`).
        sinograms: ``(N, views, bins)`` measurements, for networks that read them
            through the CT operator. Those train on whole slices without flips: a crop
            or a flip of the image is not the image of that sinogram.
    """

    def __init__(self, fbp_hu: np.ndarray, target_hu: np.ndarray, masks: np.ndarray,
                 prior_classes: np.ndarray | None = None, augment: bool = False,
                 crop: int | None = None, neighbours: np.ndarray | None = None,
                 seed: int = 0, sinograms: np.ndarray | None = None,
                 prior_scan: np.ndarray | None = None,
                 prior_organs: np.ndarray | None = None) -> None:
        if not (len(fbp_hu) == len(target_hu) == len(masks)):
            raise ValueError(
                f"slice counts differ: fbp {len(fbp_hu)}, target {len(target_hu)}, "
                f"masks {len(masks)}"
            )
        self.fbp_hu, self.target_hu, self.masks = fbp_hu, target_hu, masks
        if sinograms is not None and len(sinograms) != len(fbp_hu):
            raise ValueError(f"slice counts differ: fbp {len(fbp_hu)}, sinograms "
                             f"{len(sinograms)}")
        self.prior_classes = prior_classes
        if (prior_scan is None) != (prior_organs is None) or (
                prior_scan is not None and not len(prior_scan) == len(prior_organs) == len(fbp_hu)):
            raise ValueError("a prior scan needs its organ map, one per slice")
        self.prior_scan, self.prior_organs = prior_scan, prior_organs
        self.sinograms = sinograms
        self.augment = augment and sinograms is None
        self.crop = crop if sinograms is None else None
        self.neighbours = neighbours
        self.seed = seed

    def __len__(self) -> int:
        return len(self.fbp_hu)

    def _window(self, rng: np.random.Generator) -> tuple[slice, slice]:
        height, width = self.fbp_hu.shape[-2:]
        if self.crop is None or self.crop >= min(height, width):
            return slice(None), slice(None)
        top = int(rng.integers(0, height - self.crop + 1))
        left = int(rng.integers(0, width - self.crop + 1))
        return slice(top, top + self.crop), slice(left, left + self.crop)

    def _fbp(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        if self.neighbours is None:
            return np.asarray(self.fbp_hu[index, rows, cols], dtype=np.float32)[None]
        return np.stack([np.asarray(self.fbp_hu[i, rows, cols], dtype=np.float32)
                         for i in self.neighbours[index]])

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        """``key = epoch * len(self) + index`` (see :class:`EpochSampler`); a plain index
        is epoch 0. Crop and flips come from a generator seeded by (seed, epoch, index)."""
        epoch, index = divmod(int(key), len(self))
        rng = np.random.default_rng([self.seed, epoch, index])
        rows, cols = self._window(rng)
        arrays = {
            "fbp": self._fbp(index, rows, cols) / HU_SCALE,
            "target": np.asarray(self.target_hu[index, rows, cols], np.float32)[None] / HU_SCALE,
            "masks": np.asarray(self.masks[index, rows, cols], dtype=np.int64),
        }
        if self.prior_classes is not None:
            classes = np.asarray(self.prior_classes[index, rows, cols], dtype=np.int64)
            arrays["prior_probs"] = np.eye(NUM_TISSUE_CLASSES, dtype=np.float32)[classes]
            arrays["prior_probs"] = np.moveaxis(arrays["prior_probs"], -1, 0)
        if self.prior_scan is not None:
            arrays["prior_probs"] = scan_prior(self.prior_scan[index, rows, cols][None],
                                               self.prior_organs[index, rows, cols][None])[0]
        if self.sinograms is not None:
            arrays["sinogram"] = np.asarray(self.sinograms[index], np.float32)
        if self.augment:
            for axis in (-1, -2):
                if rng.random() < 0.5:
                    arrays = {k: np.flip(v, axis=axis) for k, v in arrays.items()}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


class EpochSampler(DistributedSampler):
    """Shuffles by ``(seed, epoch)`` and yields ``epoch * len(dataset) + index``.

    A ``DistributedSampler`` (one replica when not distributed), so Lightning
    calls :meth:`set_epoch` on it every epoch and does not replace it under DDP,
    where it shards the permutation across ranks as usual.
    """

    def __iter__(self):
        size = len(self.dataset)  # type: ignore[arg-type]
        return (self.epoch * size + index for index in super().__iter__())


@dataclass
class SplitPaths:
    """Where one split's arrays live (folders written by the stages)."""

    prepared: Path
    simulated: Path
    masks: Path


def load_split(paths: SplitPaths, prior: str, context: int = 1, sinograms: bool = False
               ) -> dict[str, np.ndarray | None]:
    """Memory-maps one split's arrays; ``prior`` picks the prior-class array,
    ``context`` > 1 adds the 2.5D neighbour table and ``sinograms`` the measurements."""
    arrays: dict[str, np.ndarray | None] = {
        "fbp_hu": load_array(paths.simulated, "fbp"),
        "target_hu": load_array(paths.prepared, "hu"),
        "masks": load_array(paths.masks, "masks"),
        "prior_classes": None,
    }
    if prior == "oracle":
        arrays["prior_classes"] = arrays["masks"]
    elif prior == "threshold":
        arrays["prior_classes"] = load_array(paths.simulated, "threshold_masks")
    arrays["sinograms"] = load_array(paths.simulated, "sinogram") if sinograms else None
    arrays["neighbours"] = None
    if context > 1:
        arrays["neighbours"] = neighbour_table(read_json(paths.prepared / "index.json"), context)
    return arrays


class SliceDataModule(pl.LightningDataModule):
    """Train/val loaders over the stage outputs. The test split is never loaded here:
    model selection (checkpointing, early stopping) sees only train and val."""

    def __init__(self, train: SplitPaths, val: SplitPaths, prior: str, batch_size: int = 8,
                 num_workers: int = 0, augment: bool = True, crop: int | None = None,
                 context: int = 1, seed: int = 0, sinograms: bool = False) -> None:
        super().__init__()
        self.sinograms = sinograms
        self.paths = {"train": train, "val": val}
        self.prior, self.batch_size, self.num_workers = prior, batch_size, num_workers
        self.augment, self.crop, self.context, self.seed = augment, crop, context, seed
        self.datasets: dict[str, SliceDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split, paths in self.paths.items():
            self.datasets[split] = SliceDataset(
                **load_split(paths, self.prior, self.context, self.sinograms),
                augment=self.augment and split == "train",
                crop=self.crop if split == "train" else None,
                seed=self.seed,
            )

    def _loader(self, split: str, sampler: DistributedSampler | None = None) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochSampler(self.datasets["train"], num_replicas=replicas, rank=rank,
                               shuffle=True, seed=self.seed)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


class ArrayDataModule(SliceDataModule):
    """Train/val loaders over slices held in memory: ``train`` and ``val`` are the keyword
    arguments of :class:`SliceDataset` (e.g. the follow-up pairs a ``prior: scan`` model
    learns from), cropped, flipped and sampled as :class:`SliceDataModule` does."""

    def __init__(self, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
                 batch_size: int = 8, num_workers: int = 0, augment: bool = True,
                 crop: int | None = None, seed: int = 0) -> None:
        super().__init__(None, None, "scan", batch_size=batch_size, num_workers=num_workers,
                         augment=augment, crop=crop, seed=seed)
        self.arrays = {"train": train, "val": val}

    def setup(self, stage: str | None = None) -> None:
        for split, arrays in self.arrays.items():
            self.datasets[split] = SliceDataset(
                **arrays, augment=self.augment and split == "train",
                crop=self.crop if split == "train" else None, seed=self.seed)
