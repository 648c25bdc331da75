"""Stage ``followup_train@V``: trains the models that read an earlier scan of the patient
(``prior: scan`` variants, ``followup.model.variants``) at ``V`` views.

They learn from the follow-up **training pairs** (``followup_cohort``'s ``train/``: the
data set's training subjects, made as the test cohort is, with every change but the
lobulated lesions), acquired as ``followup@V`` acquires the test cohort: the follow-up
sparse at the pipeline's noise (lesion-present, ``followup.model.realisations`` noise
realisations, so that an epoch holds as many slices as ``sg_unet``'s), the baseline at
full views and full dose with its own kernel. The baseline is registered to the
follow-up's FBP (``followup.model.fixed``) by the same registration, so the prior is
as imperfect as at test; its organ map is the fixed segmenter's classes of the
registered baseline. The checkpoint is chosen by PSNR on the validation pairs, made
the same way; everything else (epochs, crops, batch, loss, learning rate) is
``trainer``'s, as for ``sg_unet``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sparsect.data.datamodule import ArrayDataModule, neighbour_table
from sparsect.data.store import atomic_dir, atomic_write_json
from sparsect.errors import InputError
from sparsect.models.variants import known_variant, variant_table
from sparsect.priors.masks import tissue_masks_from_labels
from sparsect.priors.organs import ORGAN_TO_TISSUE
from sparsect.settings import workers_from_cfg
from sparsect.stages.followup import (
    PRESENT,
    Pairs,
    Scans,
    acquire,
    load_pairs,
    registered_priors,
)
from sparsect.stages.train import train_model, work_dir_for

FINGERPRINT_KEYS = ("followup",)
"""Config sections beside the training's own that shape a prior model's run."""


def training_slices(pairs: Pairs, scans: Scans, priors: dict[str, Any], context: int
                    ) -> dict[str, np.ndarray]:
    """The lesion-present follow-ups of every realisation of ``scans`` as the keyword
    arguments of :class:`~sparsect.data.datamodule.SliceDataset`: FBP, reference, tissue
    classes of the reference, 2.5D neighbours within each (realisation, subject), and
    the registered prior with its organ map (one per subject, for every realisation)."""
    fbp = scans.fbp[PRESENT]  # (K, S, Z, H, W)
    k, s, z = fbp.shape[:3]
    shape = fbp.shape

    def each(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(array, shape).reshape(-1, *shape[-2:]))

    index = [(f"{r}/{i}", j) for r in range(k) for i in range(s) for j in range(z)]
    masks = tissue_masks_from_labels(pairs.followup_labels, ORGAN_TO_TISSUE)
    return {"fbp_hu": fbp.reshape(-1, *shape[-2:]),
            "target_hu": each(pairs.followup_hu + pairs.new_hu),
            "masks": each(masks), "neighbours": neighbour_table(index, context),
            "prior_scan": each(priors["prior"]), "prior_organs": each(priors["organs"])}


TRAINABLE_PRIORS = ("scan", "none", "predicted")
"""Priors a variant trained on the pairs may have: the earlier scan, or (a control: the
same pairs without it) none or its own predicted classes."""


def prior_variants(cfg: DictConfig, names: list[str] | None = None) -> list[str]:
    """``followup.model.variants`` (or ``names``), each checked to be trainable on the pairs
    (:data:`TRAINABLE_PRIORS`, image-domain)."""
    table = variant_table(cfg)
    names = list(names if names is not None else cfg.followup.model.variants)
    for name in names:
        variant = known_variant(table, name)
        if variant.prior not in TRAINABLE_PRIORS or variant.operator:
            raise InputError(f"followup.model.variants lists '{name}' (prior "
                             f"'{variant.prior}'{', operator' if variant.operator else ''}): "
                             "list image-domain variants whose prior is one of "
                             f"{', '.join(TRAINABLE_PRIORS)}.")
    return names


def followup_train(cfg: DictConfig, cohort_dir: Path, segmenter_dir: Path, views: int,
                   out_dir: Path, seeds: list[int] | None = None,
                   models: list[str] | None = None) -> Path:
    """Trains ``models`` (default ``followup.model.variants``) at every seed of ``seeds``
    (default ``followup.model.seeds``); writes ``<model>.ckpt`` for the first seed and
    ``<model>-seed<k>.ckpt`` for the others, ``summary.json`` (the first seed's models, as
    ``train`` writes it), ``seeds.json`` (every seed's) and ``data.json``."""
    spec = cfg.followup.model
    names = prior_variants(cfg, models)
    seeds = [int(s) for s in (seeds if seeds is not None else spec.seeds)]
    if not seeds:
        raise InputError("followup.model.seeds is empty: give at least one seed.")
    if str(spec.fixed) != "fbp":
        raise InputError(f"followup.model.fixed is '{spec.fixed}': only fbp is offered for "
                         "training (a TV of every training slice costs more than the "
                         "training).")
    segmenter = Path(segmenter_dir) / "segmenter.ckpt"
    if not segmenter.is_file():
        raise InputError(f"'{segmenter_dir}' holds no segmenter.ckpt: run `sparsect "
                         "segmenter` (or `dvc repro segmenter`) first.")
    workers = workers_from_cfg(cfg)
    context = int(cfg.model.context_slices)
    data, registration = {}, {}
    for split, realisations in (("train", int(spec.realisations)), ("val", 1)):
        pairs = load_pairs(cohort_dir, split)
        scans = acquire(cfg, pairs, views, realisations, split)
        priors = registered_priors(cfg, pairs, scans, scans.fbp[PRESENT, 0], segmenter, workers)
        data[split] = training_slices(pairs, scans, priors, context)
        registration[split] = {"subjects": pairs.subjects, "realisations": realisations,
                               "slices": len(data[split]["fbp_hu"]), "tre_mm": priors["tre_mm"]}
    work = work_dir_for(out_dir)
    trainer = cfg.trainer
    every: dict[str, Any] = {}
    for seed in seeds:
        seeded = OmegaConf.merge(cfg, {"seed": seed})
        for name in names:
            datamodule = ArrayDataModule(
                data["train"], data["val"], batch_size=int(trainer.batch_size),
                num_workers=int(trainer.num_workers), augment=bool(trainer.augment),
                crop=None if trainer.crop is None else int(trainer.crop), seed=seed)
            result, is_zero = train_model(seeded, name, views, None, None, None,
                                          work / f"seed{seed}", datamodule=datamodule,
                                          fingerprint_keys=FINGERPRINT_KEYS)
            if not is_zero:
                return Path(out_dir)
            key = name if seed == seeds[0] else f"{name}-seed{seed}"
            every[key] = {**result, "checkpoint": f"{key}.ckpt", "seed": seed,
                          "variant": name}
    with atomic_dir(Path(out_dir)) as tmp:
        for info in every.values():
            shutil.copy2(work / f"seed{info['seed']}" / info["variant"] / "selected.ckpt",
                         tmp / info["checkpoint"])
        atomic_write_json(tmp / "summary.json", {k: v for k, v in every.items()
                                                 if v["seed"] == seeds[0]})
        atomic_write_json(tmp / "seeds.json", every)
        atomic_write_json(tmp / "data.json", {
            "views": int(views), "fixed": str(spec.fixed), "pairs": registration})
    shutil.rmtree(work, ignore_errors=True)
    return Path(out_dir)
