"""The learned prior model's endpoint, as docs/evaluation/followup.md states it and
``followup.endpoint`` fixes it: committed before the model's first training.

At ``endpoint.views`` on the whole follow-up test cohort, the model (``endpoint.model``,
trained by :func:`~sparsect.stages.followup_train.followup_train` at every seed of
``endpoint.seeds``) against the comparator (``endpoint.comparator``, trained by
:func:`~sparsect.stages.train.train` at the same seeds on the pipeline's data; the
pipeline's own checkpoint stands for the seed it was trained at):

- efficacy: body PSNR, model - comparator, per subject and seed;
- safety: the new lesions' d' and |CR - 1| (model - comparator), the resolved lesions'
  ghost contrast (the model's own);
- each interval by a bootstrap that resamples subjects and seeds independently with
  replacement (seeds paired by index), ``endpoint.resamples`` times, its 2.5 and 97.5
  percentiles; a criterion is *met*, *failed* or *not shown* (:func:`decide`).

The lobulated lesions (no training pair holds one) are scored apart, per seed.

A control beside the endpoint (reported as secondary, added after it was fixed): the
comparator's variant trained on the same follow-up training pairs as the model, without
the earlier scan (``<comparator> on pairs``). The model's gain over it is what the
earlier scan adds; its gain over the comparator also holds what training on pairs of the
cohort's own kind adds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sparsect.data.cohort import Cohort
from sparsect.data.store import atomic_dir, atomic_write_json, read_json
from sparsect.errors import InputError
from sparsect.evaluation import task
from sparsect.methods.learned import Learned
from sparsect.models.checkpoint import load_module
from sparsect.settings import workers_from_cfg
from sparsect.stages.followup import (
    PRESENT,
    _reconstruct,
    _scores,
    acquire,
    ghost_values,
    load_pairs,
    subject_psnr,
)
from sparsect.stages.study import lesion_measures

CRITERIA = ("efficacy", "d_prime", "abs_cr_minus_1", "ghost")


def decide(interval: list[float], margin: float, side: str, width_rule: bool,
           strict: bool = False) -> str:
    """``met`` when the interval's bound lies on the safe side of ``margin`` (``side``
    ``lower``: the lower bound at least the margin, above it when ``strict``; ``upper``:
    the upper bound at most the margin) and, with ``width_rule``, the interval is no
    wider than ``|margin|``; ``failed`` when the whole interval lies beyond the margin;
    ``not shown`` otherwise.

    >>> decide([0.2, 0.9], 0.0, "lower", False), decide([-0.3, 0.4], 0.0, "lower", False)
    ('met', 'not shown')
    >>> decide([0.01, 0.04], 0.10, "upper", True), decide([0.01, 0.3], 0.10, "upper", True)
    ('met', 'not shown')
    """
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not shown"
    if side == "lower":
        safe, beyond = (low > margin if strict else low >= margin), high < margin
    elif side == "upper":
        safe, beyond = high <= margin, low > margin
    else:
        raise ValueError(f"side must be lower or upper, got {side}")
    if beyond:
        return "failed"
    if safe and (not width_rule or high - low <= abs(margin)):
        return "met"
    return "not shown"


def _interval(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def _table_bootstrap(table: np.ndarray, resamples: int) -> dict[str, Any]:
    """Mean and interval of a ``(subjects, seeds)`` table (NaN: a subject without the
    lesions a measure needs), by :func:`~sparsect.evaluation.task.two_way_bootstrap`."""
    boot = task.two_way_bootstrap(table, resamples, seed=0)
    return {"mean": float(np.nanmean(table)), "ci95": _interval(boot),
            "per_seed": [float(np.nanmean(table[:, j])) for j in range(table.shape[1])]}


def d_prime_bootstrap(model: list[dict], comparator: list[dict], subjects: int,
                      resamples: int) -> dict[str, Any]:
    """``d'(model) - d'(comparator)`` (the CHO's pooled test scores, per seed, averaged
    over seeds) with the same two-way bootstrap: each resample draws subjects and seeds
    with replacement and pools the scores of the drawn subjects' lesions."""
    groups = model[0]["groups"]
    members = [np.flatnonzero(groups == s) for s in range(subjects)]

    def difference(rows: np.ndarray, cols: np.ndarray) -> float:
        index = np.concatenate([members[s] for s in rows])
        if index.size < 2:
            return float("nan")
        return float(np.mean([task.d_prime(model[j]["score_p"][index], model[j]["score_a"][index])
                              - task.d_prime(comparator[j]["score_p"][index],
                                             comparator[j]["score_a"][index]) for j in cols]))

    seeds = len(model)
    rng = np.random.default_rng(0)
    boot = np.array([difference(rng.integers(0, subjects, subjects),
                                rng.integers(0, seeds, seeds)) for _ in range(resamples)])
    every = np.arange(subjects)
    return {"mean": difference(every, np.arange(seeds)), "ci95": _interval(boot),
            "per_seed": [difference(every, np.array([j])) for j in range(seeds)]}


def _checkpoints(cfg: DictConfig, cohort_dir: Path, segmenter_dir: Path, prepared_dir: Path,
                 sim_dir: Path, masks_dir: Path, models_dir: Path | None, work_dir: Path
                 ) -> tuple[dict[int, Path], dict[int, Path], dict[int, Path]]:
    """The model's, the comparator's and the control's checkpoint per seed, trained where
    missing (an interrupted run resumes: finished trainings are kept in ``work_dir``)."""
    from sparsect.stages.followup_train import followup_train
    from sparsect.stages.train import train

    spec = cfg.followup.endpoint
    views, seeds = int(spec.views), [int(s) for s in spec.seeds]
    def on_pairs(folder: Path, variant: str) -> dict[int, Path]:
        """``variant`` trained on the follow-up pairs, a checkpoint per seed in ``folder``."""
        if not (folder / "seeds.json").is_file():
            followup_train(cfg, cohort_dir, segmenter_dir, views, folder, seeds, [variant])
        return {int(info["seed"]): folder / info["checkpoint"]
                for info in read_json(folder / "seeds.json").values()}

    model = on_pairs(Path(work_dir) / "model", str(spec.model))
    control = on_pairs(Path(work_dir) / "control", str(spec.comparator))
    comparator: dict[int, Path] = {}
    name = str(spec.comparator)
    for seed in seeds:
        if models_dir is not None and seed == int(cfg.seed) and \
                (Path(models_dir) / f"{name}.ckpt").is_file():
            comparator[seed] = Path(models_dir) / f"{name}.ckpt"
            continue
        folder = Path(work_dir) / "comparator" / f"seed{seed}"
        if not (folder / f"{name}.ckpt").is_file():
            train(OmegaConf.merge(cfg, {"seed": seed}), prepared_dir, sim_dir, masks_dir, folder,
                  views, (name,))
        comparator[seed] = folder / f"{name}.ckpt"
    return model, comparator, control


def followup_endpoint(cfg: DictConfig, cohort_dir: Path, segmenter_dir: Path,
                      prepared_dir: Path, sim_dir: Path, masks_dir: Path,
                      models_dir: Path | None, work_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Trains what is missing, scores both models at every seed on the whole test cohort,
    and writes ``endpoint.json`` (the decision, the intervals and every method's scores)
    into ``out_dir``."""
    from sparsect.models.segmenter import load_segmenter

    spec = cfg.followup.endpoint
    views, seeds = int(spec.views), [int(s) for s in spec.seeds]
    if int(cfg.geometry.views) != views and str(Path(sim_dir).name) != str(views):
        raise InputError(f"--sim must hold the simulation at {views} views "
                         "(followup.endpoint.views).")
    model_ckpt, comparator_ckpt, control_ckpt = _checkpoints(
        cfg, cohort_dir, segmenter_dir, prepared_dir, sim_dir, masks_dir, models_dir, work_dir)
    pairs = load_pairs(cohort_dir, "test")
    realisations = int(cfg.followup.realisations)
    scans = acquire(cfg, pairs, views, realisations, "test")
    names = {"model": str(spec.model), "comparator": str(spec.comparator),
             "control": f"{spec.comparator} on pairs"}
    plain = [Learned(f"{names[role]} seed{s}", load_module(paths[s]))
             for role, paths in (("comparator", comparator_ckpt), ("control", control_ckpt))
             for s in seeds]
    prior = {f"{names['model']} seed{s}": Learned(f"{names['model']} seed{s}",
                                                  load_module(model_ckpt[s])) for s in seeds}
    registration = dict(OmegaConf.to_container(cfg.followup.registration, resolve=True))
    registration.pop("fixed")
    fixed = str(cfg.followup.model.fixed)
    segmenter = load_segmenter(Path(segmenter_dir) / "segmenter.ckpt")
    result = _reconstruct(cfg, pairs, scans, plain, prior, fixed, registration,
                          workers_from_cfg(cfg), {"registered"}, wrong_patient=False,
                          segmenter=segmenter, kinds=("registered",))
    window = (float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max))
    channels = task.laguerre_gauss_channels(int(cfg.followup.cohort.roi_px),
                                            float(cfg.study.channel_width_px),
                                            int(cfg.study.channels))
    new = Cohort(pairs.followup_hu, pairs.followup_labels, pairs.new_hu, pairs.kind("new"),
                 pairs.spacing[1], pairs.spacing[0])
    s_count = pairs.subjects
    per: dict[str, dict[str, list]] = {role: {"psnr": [], "cr": [], "ghost": [], "observer": []}
                                       for role in names}
    for seed in seeds:
        for role, name in names.items():
            image = result.images[f"{name} seed{seed}"]
            measures = lesion_measures(image, new, channels, int(cfg.followup.cohort.roi_px))
            per[role]["psnr"].append(subject_psnr(image[PRESENT, 0], pairs, window))
            per[role]["cr"].append(_per_subject(np.abs(measures["cr"] - 1),
                                                measures["subjects"], s_count))
            ghost, subjects = ghost_values(image[PRESENT, 0], result.ghost[f"{name} seed{seed}"],
                                           result.footprints)
            per[role]["ghost"].append(_per_subject(ghost, subjects, s_count))
            per[role]["observer"].append(measures)
    resamples = int(spec.resamples)

    def table(key: str, role: str | None = None, against: str = "comparator") -> np.ndarray:
        if role is not None:
            return np.stack(per[role][key], axis=1)
        return np.stack(per["model"][key], axis=1) - np.stack(per[against][key], axis=1)

    criteria = {
        "efficacy": {**_table_bootstrap(table("psnr"), resamples), "unit": "dB",
                     "measure": "body PSNR, model - comparator", "margin": float(
                         spec.efficacy_lower_above), "side": "lower",
                     "goal": float(spec.efficacy_goal_db)},
        "d_prime": {**d_prime_bootstrap(per["model"]["observer"], per["comparator"]["observer"],
                                        s_count, resamples),
                    "measure": "new lesions' d', model - comparator",
                    "margin": float(spec.d_prime_lower_at_least), "side": "lower"},
        "abs_cr_minus_1": {**_table_bootstrap(table("cr"), resamples),
                           "measure": "new lesions' |CR - 1| (per subject), model - comparator",
                           "margin": float(spec.abs_cr_upper_at_most), "side": "upper"},
        "ghost": {**_table_bootstrap(table("ghost", "model"), resamples),
                  "measure": "resolved lesions' ghost contrast (per subject), model",
                  "margin": float(spec.ghost_upper_at_most), "side": "upper"},
    }
    for key, entry in criteria.items():
        # efficacy: the lower bound strictly above 0; safety: also the width rule
        efficacy = key == "efficacy"
        entry["outcome"] = decide(entry["ci95"], entry["margin"], entry["side"],
                                  width_rule=not efficacy, strict=efficacy)
        entry["width"] = float(entry["ci95"][1] - entry["ci95"][0])
    control = {
        "efficacy": {**_table_bootstrap(table("psnr", against="control"), resamples),
                     "measure": "body PSNR, model - comparator trained on the pairs"},
        "d_prime": {**d_prime_bootstrap(per["model"]["observer"], per["control"]["observer"],
                                        s_count, resamples),
                    "measure": "new lesions' d', model - comparator trained on the pairs"},
        "abs_cr_minus_1": {**_table_bootstrap(table("cr", against="control"), resamples),
                           "measure": "new lesions' |CR - 1|, model - comparator trained on "
                                      "the pairs"},
        "comparator_on_pairs_minus_comparator_psnr": _table_bootstrap(
            np.stack(per["control"]["psnr"], axis=1) - np.stack(per["comparator"]["psnr"],
                                                                axis=1), resamples),
    }
    scores = _scores(cfg, pairs, result, observer=True)
    out = {
        "endpoint": criteria,
        "control": control,
        "settings": {**OmegaConf.to_container(spec, resolve=True), "subjects": s_count,
                     "realisations": realisations, "fixed": fixed,
                     "new_lesions": len(pairs.kind("new")),
                     "lobulated_lesions": len(pairs.kind("lobulated")),
                     "resolved_lesions": len(result.footprints),
                     "test_tre_mm": result.tre,
                     "checkpoints": {role: {s: str(p) for s, p in paths.items()}
                                     for role, paths in (("model", model_ckpt),
                                                         ("comparator", comparator_ckpt),
                                                         ("control", control_ckpt))}},
        "scores": scores,
    }
    out = json.loads(json.dumps(out, default=float))
    with atomic_dir(Path(out_dir)) as tmp:
        atomic_write_json(tmp / "endpoint.json", out)
    return out


def _per_subject(values: np.ndarray, subjects: np.ndarray, count: int) -> np.ndarray:
    """Mean of ``values`` per subject (NaN where a subject has none)."""
    out = np.full(count, np.nan)
    for s in range(count):
        picked = values[subjects == s]
        if picked.size:
            out[s] = float(np.mean(picked))
    return out
