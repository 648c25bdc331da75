"""Stage ``promote``: register every deployable model of the grid and move champions.

Candidates are judged on their validation PSNR (the frozen validation split);
test metrics from ``evaluate`` are attached to each version for information.
The models that read an earlier scan (``followup_train@V``) are judged the same way on
the validation follow-up pairs (their own frozen selection set), with ``followup@V``'s
test metrics attached. The decision itself lives in :mod:`sparsect.registry`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from sparsect.data.store import atomic_write_json, read_json
from sparsect.errors import InputError
from sparsect.models.variants import known_variant, variant_table
from sparsect.registry import promote, register, split_hash
from sparsect.tracking import sha256_file, tracking_uri, training_run_id


def followup_selection_set(cohort_dir: Path) -> str:
    """Identity of the validation follow-up pairs: their follow-ups, baselines and lesions."""
    folder = Path(cohort_dir) / "val"
    parts = "".join(sha256_file(folder / name) for name in
                    ("followup_hu.npy", "baseline_hu.npy", "new_hu.npy", "lesions.json"))
    return "followup-val:" + hashlib.sha256(parts.encode()).hexdigest()[:16]


def promote_all(cfg: DictConfig, prepared_dir: Path, models_root: Path, evaluations: Path,
                out_path: Path, followup_models: Path | None = None,
                followup_cohort: Path | None = None,
                followup_reports: Path | None = None) -> Path:
    """Writes ``out_path``: one entry per registered model with its champion and the reason
    (with ``followup_models``, also the models that read an earlier scan, at each view
    count of ``followup.views`` where they were trained)."""
    val_hash = split_hash(Path(prepared_dir), "val")
    margin = float(cfg.registry.margin_db)
    uri = tracking_uri(cfg)
    table = variant_table(cfg)
    decisions = []
    for views in cfg.sweep.views:
        summary = read_json(Path(models_root) / str(views) / "summary.json")
        metrics = read_json(Path(evaluations) / str(views) / "metrics.json")
        for model, info in summary.items():
            if not known_variant(table, model).deployable:  # never an upper bound
                continue
            test_values = {k: v for k, v in metrics[model].items() if isinstance(v, float)}
            checkpoint = Path(models_root) / str(views) / info["checkpoint"]
            version = register(cfg, model, checkpoint, training_run_id(uri, checkpoint),
                               float(info["best_val_psnr"]), val_hash, test_values,
                               metrics.get("_baselines", {}).get("methods"))
            decision = promote(cfg, version, margin)
            decision.update(views=int(views), model=model, candidate=version.version)
            print(f"[promote] {decision['name']} v{version.version}: {decision['reason']}")
            decisions.append(decision)
    if followup_models is not None:
        if followup_cohort is None or followup_reports is None:
            raise InputError("--followup-models needs --followup-cohort (the validation pairs "
                             "they are judged on) and --followup-reports (followup@<views>).")
        selection = followup_selection_set(followup_cohort)
        for views in cfg.followup.views:
            summary = read_json(Path(followup_models) / str(views) / "summary.json")
            metrics = read_json(Path(followup_reports) / str(views) / "metrics.json")
            for model, info in summary.items():
                test_values = {k: v for k, v in metrics.get(model, {}).items()
                               if isinstance(v, float)}
                checkpoint = Path(followup_models) / str(views) / info["checkpoint"]
                version = register(cfg, model, checkpoint, training_run_id(uri, checkpoint),
                                   float(info["best_val_psnr"]), selection, test_values)
                decision = promote(cfg, version, margin)
                decision.update(views=int(views), model=model, candidate=version.version,
                                selection_set=selection)
                print(f"[promote] {decision['name']} v{version.version}: {decision['reason']}")
                decisions.append(decision)
    atomic_write_json(Path(out_path), {"selection_set": val_hash, "decisions": decisions})
    return Path(out_path)
