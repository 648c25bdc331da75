"""Stage ``simulate@<views>``: sparse-view sinograms (with noise) and their FBP.

Each slice gets its own seed, derived from ``(seed, views, split, slice)``, so
the output does not depend on how the slices are spread over worker
processes, and an interrupted run reproduces exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from sparsect.data.split import SPLITS
from sparsect.data.store import atomic_dir, atomic_write_json, load_array, save_array
from sparsect.physics import Geometry, NoiseModel, Simulator
from sparsect.priors.masks import tissue_masks_from_hu
from sparsect.settings import geometry_from_cfg, noise_from_cfg

_WORKER: dict = {}


def slice_seed(seed: int, views: int, split: str, index: int) -> int:
    """Independent, order-free seed for one slice's noise."""
    sequence = np.random.SeedSequence([seed, views, SPLITS.index(split), index])
    return int(sequence.generate_state(1)[0])


def _init_worker(geometry: dict, noise: dict, upsample: int, device: str, filter_name: str,
                 prepared_split: str) -> None:
    # One Simulator (and its ASTRA projectors) per process, reused for every slice.
    _WORKER["simulator"] = Simulator(Geometry.from_dict(geometry), NoiseModel(**noise),
                                     upsample=upsample, device=device, filter=filter_name)
    _WORKER["hu"] = load_array(Path(prepared_split), "hu")


def _simulate_one(job: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    index, seed = job
    sinogram, fbp_hu = _WORKER["simulator"](np.asarray(_WORKER["hu"][index]), seed)
    return index, sinogram, fbp_hu


def simulate(cfg: DictConfig, prepared_dir: Path, out_dir: Path, views: int | None = None,
             workers: int | None = None) -> Path:
    """Simulates every split at ``views`` (default ``geometry.views``).

    Writes ``out_dir/<split>/sinogram.npy`` (``(N, views, detectors)`` line
    integrals), ``fbp.npy`` (``(N, H, W)`` HU), ``threshold_masks.npy`` (classical
    tissue masks of the FBP, the ``threshold`` prior) and ``out_dir/geometry.json``.
    """
    geometry = geometry_from_cfg(cfg, views)
    noise = noise_from_cfg(cfg)
    geo_cfg = cfg.geometry
    workers = workers or min(os.cpu_count() or 1, 8)
    with atomic_dir(Path(out_dir)) as tmp:
        for split in SPLITS:
            split_dir = Path(prepared_dir) / split
            count = len(load_array(split_dir, "hu"))
            fbp = np.empty((count, geometry.image_size, geometry.image_size), np.float32)
            sinogram = None
            jobs = [(i, slice_seed(int(cfg.seed), geometry.views, split, i)) for i in range(count)]
            init_args = (geometry.to_dict(), asdict(noise), int(geo_cfg.upsample),
                         str(geo_cfg.device), str(geo_cfg.filter), str(split_dir))
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as pool:
                results = pool.map(_simulate_one, jobs, chunksize=max(1, count // (4 * workers)))
                for index, sino, image in tqdm(results, total=count, unit="slice",
                                               desc=f"simulate@{geometry.views} {split}"):
                    if sinogram is None:
                        sinogram = np.empty((count, *sino.shape), np.float32)
                    sinogram[index], fbp[index] = sino, image
            (tmp / split).mkdir()
            save_array(tmp / split, "sinogram", sinogram)
            save_array(tmp / split, "fbp", fbp)
            save_array(tmp / split, "threshold_masks", tissue_masks_from_hu(fbp))
        atomic_write_json(tmp / "geometry.json", {
            "geometry": geometry.to_dict(), "noise": asdict(noise),
            "upsample": int(geo_cfg.upsample), "filter": str(geo_cfg.filter),
        })
    return Path(out_dir)
