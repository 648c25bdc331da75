"""Stage ``baselines@<views>``: classical iterative reconstructions of the test split.

SIRT and TV (Chambolle-Pock) run on the measured sparse sinograms with the
acquisition's own operator on the reconstruction grid; the learned models are
judged against them. Separate from ``evaluate`` so that retraining a network
does not recompute them.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json, save_array
from sparsect.physics import Geometry, Projector, mu_to_hu, reconstruct

_WORKER: dict = {}


def _init_worker(geometry: dict, device: str, sinogram_dir: str) -> None:
    _WORKER["projector"] = Projector(Geometry.from_dict(geometry), device)
    _WORKER["sinogram"] = load_array(Path(sinogram_dir), "sinogram")


def _reconstruct_one(job: tuple[int, str, dict]) -> tuple[int, np.ndarray]:
    index, method, options = job
    sinogram = np.asarray(_WORKER["sinogram"][index])
    return index, mu_to_hu(reconstruct(method, _WORKER["projector"], sinogram, **options))


def reconstruct_all(geometry: dict, device: str, sinogram_dir: Path, methods: dict,
                    workers: int, desc: str = "") -> dict[str, np.ndarray]:
    """Every method of ``methods`` (name -> options) on every sinogram of
    ``sinogram_dir/sinogram.npy``, in ``workers`` processes: name -> ``(N, H, W)`` HU."""
    count = len(load_array(Path(sinogram_dir), "sinogram"))
    size = geometry["image_size"]
    out = {}
    with ProcessPoolExecutor(min(workers, max(1, count)), initializer=_init_worker,
                             initargs=(geometry, device, str(sinogram_dir))) as pool:
        for method, options in methods.items():
            images = np.empty((count, size, size), np.float32)
            jobs = [(i, method, dict(options or {})) for i in range(count)]
            for index, image in tqdm(pool.map(_reconstruct_one, jobs), total=count,
                                     unit="slice", desc=f"{method} {desc}".strip()):
                images[index] = image
            out[method] = images
    return out


def baselines(cfg: DictConfig, sim_dir: Path, out_dir: Path, workers: int | None = None,
              split: str = "test") -> Path:
    """Writes ``out_dir/<method>.npy`` (``(N, H, W)`` HU) for each method in ``cfg.baselines``."""
    header = read_json(Path(sim_dir) / "geometry.json")
    workers = workers or cfg.physics.get("workers") or os.cpu_count() or 1
    methods = OmegaConf.to_container(cfg.baselines, resolve=True)
    with atomic_dir(Path(out_dir)) as tmp:
        images = reconstruct_all(header["geometry"], str(cfg.physics.device),
                                 Path(sim_dir) / split, methods, workers, split)
        for method, stack in images.items():
            save_array(tmp, method, stack)
        atomic_write_json(tmp / "settings.json", {"split": split, "methods": methods,
                                                  "geometry": header["geometry"]})
    return Path(out_dir)
