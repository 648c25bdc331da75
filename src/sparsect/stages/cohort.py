"""Stage ``cohort``: the task study's lesion-free subjects and their lesions
(:mod:`sparsect.data.cohort`), generated once and scored at every view count."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sparsect.data.cohort import CohortSpec, build_cohort
from sparsect.data.store import atomic_dir, atomic_write_json, save_array
from sparsect.errors import InputError
from sparsect.stages.make_data import phantom_config


def cohort_spec(cfg: DictConfig) -> CohortSpec:
    """``study.cohort`` as a :class:`CohortSpec`.

    Raises:
        InputError: an unknown key or a value the spec refuses.
    """
    settings = {key: tuple(value) if isinstance(value, list) else value
                for key, value in OmegaConf.to_container(cfg.study.cohort, resolve=True).items()}
    try:
        return CohortSpec(**settings)
    except (TypeError, ValueError) as error:
        raise InputError(f"study.cohort is invalid ({error}): fix it in conf/config.yaml."
                         ) from None


def cohort(cfg: DictConfig, out_dir: Path, workers: int | None = None) -> Path:
    """Writes ``hu.npy``, ``labels.npy``, ``lesion_hu.npy`` (``(S, Z, H, W)``),
    ``lesions.json`` and ``cohort.json`` into ``out_dir``."""
    spec = cohort_spec(cfg)
    data = cfg.data
    try:
        built = build_cohort(spec, phantom_config(data.phantom), int(data.image_size),
                             float(data.pixel_size_mm), tuple(data.hu_clip),
                             workers or cfg.physics.get("workers") or os.cpu_count() or 1)
    except ValueError as error:
        raise InputError(f"study.cohort: {error}.") from None
    with atomic_dir(Path(out_dir)) as tmp:
        save_array(tmp, "hu", built.hu)
        save_array(tmp, "labels", built.labels)
        save_array(tmp, "lesion_hu", built.lesion_hu)
        atomic_write_json(tmp / "lesions.json", built.lesions)
        atomic_write_json(tmp / "cohort.json", {
            "subjects": int(built.hu.shape[0]), "slices": int(built.hu.shape[1]),
            "lesions": len(built.lesions), "pixel_size_mm": built.pixel_size_mm,
            "slice_mm": built.slice_mm, "spec": OmegaConf.to_container(cfg.study.cohort)})
    return Path(out_dir)
