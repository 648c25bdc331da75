"""The prior ablation: the variants of the table trained at each view count and seed of
``ablation``, scored by ``evaluate`` (test split and the whole task cohort), and the
pre-stated primary endpoint.

All variants train with the same budget (epochs, steps, data) at comparable parameter
counts (the plain UNet is widened to the semantically-guided one's, see
``match_params``; the external-prior variants have no segmentation decoder).

**Primary endpoint** (stated in the README before any run; docs/evaluation/ablation.md
now): at each view count of ``ablation.views``, the paired difference predicted - none
(``sg_unet`` - ``unet``) in mean-organ downstream Dice (the frozen segmenter on the
cohort's lesion-absent volumes), per cohort subject and training seed; its mean with
a CI from a bootstrap resampling subjects and seeds independently, and a bootstrap
p-value; Holm's correction over the view counts, each CI at its Holm level.
Everything else (PSNR, d', contrast recovery, structures) is secondary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sparsect.data.store import atomic_write_json
from sparsect.errors import InputError
from sparsect.evaluation import task
from sparsect.models.checkpoint import load_module
from sparsect.models.variants import count_parameters, variant_table
from sparsect.stages.evaluate import evaluate
from sparsect.stages.train import train

SECONDARY = ("psnr", "ssim", "rmse_hu")
RESAMPLES = 4000


def _prior_variant(table: dict, prior: str) -> str:
    names = [name for name, v in table.items() if v.prior == prior and not v.upper_bound]
    if not names:
        raise InputError(f"The ablation's endpoint needs a variant with prior '{prior}' in the "
                         "variants table and in ablation.variants: add one.")
    return names[0]


def _seed_record(metrics: dict, summary: dict, models_dir: Path, name: str, variant) -> dict:
    values = metrics[name]
    record = {k: values[k] for k in SECONDARY}
    record["psnr_by_subject"] = values["by_subject"]["psnr"]
    record["dice"] = values.get("dice")
    record["best_val_psnr"] = summary[name]["best_val_psnr"]
    record["parameters"] = count_parameters(load_module(models_dir / summary[name]["checkpoint"]
                                                        ).net)
    for key in ("lesion_contrast_recovery", "lesion_cnr", "detectability", "downstream_dice",
                "hallucinated", "lost"):
        if key in values:
            record[key] = values[key]
    return record


def paired(per_seed: dict[str, dict], a: str, b: str, level: float = 0.95) -> dict:
    """``a - b`` in mean-organ downstream Dice and in test PSNR, per subject and seed,
    with two-way (subjects x seeds) bootstrap CIs at ``level`` and a bootstrap p-value."""
    seeds = sorted(per_seed, key=int)
    out = {}
    for key, field in (("downstream_dice", "downstream_dice"), ("psnr", "psnr_by_subject")):
        def values(seed: str, name: str, field: str = field) -> dict:
            entry = per_seed[seed][name][field]
            return entry["by_subject"] if field == "downstream_dice" else entry
        subjects = sorted(values(seeds[0], a), key=str)
        table = np.array([[values(s, a)[k] - values(s, b)[k] for s in seeds] for k in subjects],
                         float)
        boot = task.two_way_bootstrap(table, RESAMPLES, seed=0)
        alpha = 1 - level
        p = 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))
        out[key] = {"mean": float(np.nanmean(table)),
                    "ci": [float(np.quantile(boot, alpha / 2)),
                           float(np.quantile(boot, 1 - alpha / 2))],
                    "level": level, "p": float(max(p, 1 / RESAMPLES)),
                    "per_seed": {s: float(np.nanmean(table[:, i])) for i, s in enumerate(seeds)},
                    "subjects": len(subjects), "seeds": len(seeds)}
    return out


def endpoint(results: dict[str, dict], predicted: str, none: str) -> dict:
    """The primary endpoint over the view counts, Holm-corrected, and the PSNR gap."""
    first = {views: paired(per_seed, predicted, none) for views, per_seed in results.items()}
    corrected = task.holm({views: r["downstream_dice"]["p"] for views, r in first.items()})
    out = {}
    for views, per_seed in results.items():
        level = corrected[views]["level"]
        again = paired(per_seed, predicted, none, level)
        out[views] = {
            "downstream_dice": {**again["downstream_dice"],
                                "p_holm": corrected[views]["p_adjusted"],
                                "excludes_zero": bool(again["downstream_dice"]["ci"][0] > 0
                                                      or again["downstream_dice"]["ci"][1] < 0)},
            "psnr": first[views]["psnr"]}
    gaps = [r["psnr"]["mean"] for r in out.values()]
    return {"comparison": f"{predicted} - {none}", "by_views": out,
            "mean_psnr_gain_db": float(np.mean(gaps)),
            "favours_predicted": all(r["downstream_dice"]["excludes_zero"]
                                     and r["downstream_dice"]["mean"] > 0 for r in out.values())}


def ablation(cfg: DictConfig, prepared_dir: Path, sim_root: Path, masks_dir: Path,
             work_dir: Path, out_path: Path, cohort_dir: Path | None = None,
             segmenter_dir: Path | None = None) -> Path:
    """Trains and scores the variants of ``ablation.variants`` at every view count and seed
    of ``ablation``; writes per-seed results, per-variant means and the endpoint."""
    from sparsect.stages.study import load_cohort, simulate_cohort

    settings = cfg.ablation
    views_list = [int(v) for v in settings.views]
    seeds = [int(s) for s in settings.seeds]
    table = {name: v for name, v in variant_table(cfg).items() if not v.operator}
    every = dict(table)
    if settings.get("variants"):
        unknown = sorted(set(settings.variants) - set(table))
        if unknown:
            raise InputError(f"ablation.variants names '{unknown[0]}', not an image-domain "
                             f"variant of the table: use some of {', '.join(table)}.")
        table = {name: table[name] for name in settings.variants}
    predicted, none = _prior_variant(table, "predicted"), _prior_variant(table, "none")
    results: dict[str, dict] = {}
    for views in views_list:
        sim_dir = Path(sim_root) / str(views)
        scans = None
        if cohort_dir is not None:
            scans = simulate_cohort(cfg, load_cohort(cohort_dir), views,
                                    int(cfg.study.realisations))
        for seed in seeds:
            run_cfg = OmegaConf.merge(cfg, {"seed": seed})
            folder = Path(work_dir) / str(views) / f"seed{seed}"
            # an interrupted ablation resumes: a seed whose models were all written is
            # not trained again (train's own work folder resumes a seed cut short)
            done = folder / "models" / "summary.json"
            if not (done.is_file() and set(table) <= set(json.loads(done.read_text()))):
                train(run_cfg, prepared_dir, sim_dir, masks_dir, folder / "models", views,
                      tuple(table))
            evaluate(run_cfg, prepared_dir, sim_dir, masks_dir, folder / "models",
                     folder / "evaluation", views, None, cohort_dir, segmenter_dir, None, scans)
            metrics = json.loads((folder / "evaluation" / "metrics.json").read_text())
            summary = json.loads((folder / "models" / "summary.json").read_text())
            # every variant this seed has (one trained by an earlier, wider run included)
            results.setdefault(str(views), {})[str(seed)] = {
                name: {"prior": v.prior, "upper_bound": v.upper_bound,
                       **_seed_record(metrics, summary, folder / "models", name, v)}
                for name, v in every.items() if name in summary}
            results[str(views)][str(seed)]["_fbp"] = {k: metrics["fbp"][k] for k in SECONDARY}
    report: dict = {"_settings": {"views": views_list, "seeds": seeds,
                                  "epochs": int(cfg.trainer.max_epochs),
                                  "variants": list(table), "split": "test (PSNR) and the "
                                  "whole task cohort (task metrics)",
                                  "hu_window": [float(cfg.evaluate.hu_min),
                                                float(cfg.evaluate.hu_max)]}}
    for views, per_seed in results.items():
        names = [name for name in every if any(name in r for r in per_seed.values())]
        report[views] = {"per_seed": per_seed, "mean": {
            name: {"seeds": [s for s in per_seed if name in per_seed[s]],
                   **{k: float(np.mean([r[name][k] for r in per_seed.values() if name in r]))
                      for k in (*SECONDARY, "best_val_psnr")}}
            for name in names}}
    if cohort_dir is not None and segmenter_dir is not None:
        report["endpoint"] = endpoint({v: {s: r for s, r in per.items()}
                                       for v, per in results.items()}, predicted, none)
    atomic_write_json(Path(out_path), report)
    return Path(out_path)
