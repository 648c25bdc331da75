"""Stage ``simulate@<views>``: sparse-view sinograms (with noise) and their FBP.

Each slice gets its own seed, derived from ``(seed, views, split, slice)``, so
the output does not depend on how slices are spread over worker processes or
cluster shards, and an interrupted run reproduces exactly. ``--shard k/N``
simulates the subjects whose rank is k-1 modulo N (for array jobs);
``sparsect merge-shards`` assembles the shards into the full output, identical
to an unsharded run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sparsect.data.split import SPLITS
from sparsect.data.store import (
    atomic_dir,
    atomic_write_json,
    load_array,
    open_array,
    read_json,
    save_array,
)
from sparsect.errors import InputError
from sparsect.priors.masks import tissue_masks_from_hu
from sparsect.settings import acquisition_from_cfg, workers_from_cfg

ARRAYS = ("sinogram", "fbp", "threshold_masks")


def slice_key(split: str, index: int) -> tuple[int, int]:
    """The key of one prepared slice in the acquisition's seed rule."""
    return SPLITS.index(split), index


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"k/N"`` -> ``(k, N)`` with ``1 <= k <= N``."""
    if text is None:
        return None
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise InputError(f"Shard '{text}' is not of the form k/N with 1 <= k <= N: e.g. 2/8.")
    return k, n


def _shard_slices(prepared_split: Path, shard: tuple[int, int] | None) -> list[int]:
    index = read_json(prepared_split / "index.json")
    if shard is None:
        return list(range(len(index)))
    k, n = shard
    subjects = sorted({subject for subject, _ in index})
    mine = {s for rank, s in enumerate(subjects) if rank % n == k - 1}
    return [i for i, (subject, _) in enumerate(index) if subject in mine]


_CHUNK = 32
"""Slices whose threshold masks are made at once."""


def simulate(cfg: DictConfig, prepared_dir: Path, out_dir: Path, views: int | None = None,
             workers: int | None = None, shard: str | None = None) -> Path:
    """Simulates every split at ``views`` (default ``geometry.views``).

    Writes ``out_dir/<split>/sinogram.npy`` (``(N, views, detectors)`` line
    integrals), ``fbp.npy`` (``(N, H, W)`` HU), ``threshold_masks.npy`` (classical
    tissue masks of the FBP, the ``threshold`` prior), ``slices.json`` (which
    prepared slices these are) and ``out_dir/geometry.json`` (geometry, noise,
    physics settings: recorded with every sinogram).
    """
    acquisition = acquisition_from_cfg(cfg, views)
    workers = workers_from_cfg(cfg, workers)
    shard_spec = parse_shard(shard)
    with atomic_dir(Path(out_dir)) as tmp:
        for split in SPLITS:
            split_dir = Path(prepared_dir) / split
            selected = _shard_slices(split_dir, shard_spec)
            hu = load_array(split_dir, "hu")
            # written into the output files as they come (memory maps): the memory stays
            # a few slices', whatever the cohort; a shard reads only its slices
            (tmp / split).mkdir()
            count = len(selected)
            geometry = acquisition.geometry
            sinogram = open_array(tmp / split, "sinogram", (count, *geometry.sinogram_shape),
                                  np.float32)
            fbp = open_array(tmp / split, "fbp", (count, *geometry.image_shape), np.float32)
            whole = selected == list(range(len(hu)))
            acquisition.simulate(hu if whole else [hu[i] for i in selected],
                                 [slice_key(split, i) for i in selected], workers,
                                 progress=f"simulate@{geometry.views} {split}",
                                 out=(sinogram, fbp))
            masks = open_array(tmp / split, "threshold_masks", fbp.shape, np.uint8)
            for start in range(0, count, _CHUNK):
                masks[start:start + _CHUNK] = tissue_masks_from_hu(fbp[start:start + _CHUNK])
            for array in (sinogram, fbp, masks):
                array.flush()
            del sinogram, fbp, masks
            atomic_write_json(tmp / split / "slices.json", selected)
        atomic_write_json(tmp / "geometry.json", {
            **acquisition.describe(),
            "shard": None if shard_spec is None else list(shard_spec)})
    return Path(out_dir)


def merge_shards(shard_dirs: list[Path], out_dir: Path) -> Path:
    """Assembles shard outputs into one simulate output (identical to an unsharded run).

    Raises:
        InputError: if shards disagree on the geometry or do not cover every slice once.
    """
    if not shard_dirs:
        raise InputError("No shard folders given: pass the outputs of `simulate --shard k/N`.")
    headers = [read_json(Path(d) / "geometry.json") for d in shard_dirs]
    for header, folder in zip(headers, shard_dirs, strict=True):
        if {k: v for k, v in header.items() if k != "shard"} != \
                {k: v for k, v in headers[0].items() if k != "shard"}:
            raise InputError(f"Shard '{folder}' was simulated with other settings than "
                             f"'{shard_dirs[0]}': re-run it with the same config.")
    with atomic_dir(Path(out_dir)) as tmp:
        for split in SPLITS:
            parts = [(json.loads((Path(d) / split / "slices.json").read_text()), Path(d) / split)
                     for d in shard_dirs]
            indices = sorted(i for selected, _ in parts for i in selected)
            if indices != list(range(len(indices))):
                raise InputError(f"Shards {[str(d) for d in shard_dirs]} do not cover every "
                                 f"{split} slice exactly once: run the missing shards.")
            (tmp / split).mkdir()
            for name in ARRAYS:
                first = load_array(parts[0][1], name)
                merged = np.empty((len(indices), *first.shape[1:]), first.dtype)
                for selected, folder in parts:
                    merged[selected] = load_array(folder, name)
                save_array(tmp / split, name, merged)
            atomic_write_json(tmp / split / "slices.json", indices)
        atomic_write_json(tmp / "geometry.json", {**headers[0], "shard": None})
    return Path(out_dir)
