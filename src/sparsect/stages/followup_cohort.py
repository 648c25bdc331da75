"""Stage ``followup_cohort``: the follow-up pairs (:mod:`sparsect.data.followup`): the test
cohort (its own seed, never trained or tuned on), and pairs made the same way from the
data set's training and validation subjects: a prior model learns from the training
pairs, and every setting of ``followup@V`` and of its training is chosen on the
validation pairs. The lobulated lesions (a change type no model learns) are in the test
cohort only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sparsect.data.followup import ARRAYS, FollowupSpec, build_pairs
from sparsect.data.store import atomic_dir, atomic_write_json, save_array
from sparsect.errors import InputError
from sparsect.settings import workers_from_cfg


def followup_spec(cfg: DictConfig) -> FollowupSpec:
    """``followup.cohort`` as a :class:`FollowupSpec`."""
    settings = {key: tuple(value) if isinstance(value, list) else value
                for key, value in OmegaConf.to_container(cfg.followup.cohort, resolve=True).items()}
    try:
        return FollowupSpec(**settings)
    except (TypeError, ValueError) as error:
        raise InputError(f"followup.cohort is invalid ({error}): fix it in conf/config.yaml."
                         ) from None


def data_subjects(cfg: DictConfig, split: str) -> list[int]:
    """The data set's subjects of ``split`` (the split ``prepare`` makes of the phantoms)."""
    from sparsect.data.split import split_subjects

    names = [f"subject_{i:03d}" for i in range(int(cfg.data.phantom.subjects))]
    parts = split_subjects(names, dict(cfg.data.split), int(cfg.data.split.seed))
    return sorted(int(name.split("_")[1]) for name in parts[split])


def validation_subjects(cfg: DictConfig) -> list[int]:
    """The data set's validation subjects."""
    return data_subjects(cfg, "val")


def followup_cohort(cfg: DictConfig, out_dir: Path, workers: int | None = None) -> Path:
    """Writes ``test/``, ``train/`` and ``val/`` (each the arrays of :data:`ARRAYS`,
    ``(S, Z, ...)``, ``lesions.json``, ``motion.json``) and ``cohort.json`` into
    ``out_dir``."""
    from sparsect.stages.make_data import phantom_config

    spec = followup_spec(cfg)
    data = cfg.data
    common = (phantom_config(data.phantom), int(data.image_size), float(data.pixel_size_mm),
              tuple(data.hu_clip))
    workers = workers_from_cfg(cfg, workers)
    learned = dataclasses.replace(spec, lesions={**spec.lesions, "lobulated": 0})
    parts = {"test": build_pairs(spec, *common, workers=workers),
             **{split: build_pairs(learned, *common, subjects=data_subjects(cfg, split),
                                   seed=int(data.phantom.seed), workers=workers)
                for split in ("train", "val")}}
    new = sum(x["kind"] == "new" for pair in parts["test"] for x in pair.lesions)
    if new < spec.min_new_lesions:
        raise InputError(f"followup.cohort: the test subjects hold {new} new lesions, fewer "
                         f"than min_new_lesions={spec.min_new_lesions}: add subjects.")
    header: dict[str, Any] = {"spec": OmegaConf.to_container(cfg.followup.cohort),
                              "slice_mm": float(data.phantom.spacing_mm[2]),
                              "pixel_size_mm": float(data.pixel_size_mm)}
    with atomic_dir(Path(out_dir)) as tmp:
        for split, pairs in parts.items():
            folder = tmp / split
            folder.mkdir()
            for name in ARRAYS:
                save_array(folder, name, np.stack([getattr(p, name) for p in pairs]))
            atomic_write_json(folder / "lesions.json", [x for p in pairs for x in p.lesions])
            atomic_write_json(folder / "motion.json", [p.motion for p in pairs])
            kinds = [x["kind"] for p in pairs for x in p.lesions]
            header[split] = {"subjects": len(pairs),
                             "lesions": {k: kinds.count(k) for k in sorted(set(kinds))}}
        for split in ("train", "val"):
            header[split]["from"] = (f"data.phantom seed {int(data.phantom.seed)}, {split} "
                                     f"subjects {data_subjects(cfg, split)}")
        atomic_write_json(tmp / "cohort.json", header)
    return Path(out_dir)
