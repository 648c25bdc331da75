"""Stage ``promote``: register every deployable model of the grid and move champions.

Candidates are judged on their validation PSNR (the frozen validation split);
test metrics from ``evaluate`` are attached to each version for information.
The decision itself lives in :mod:`sparsect.registry`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sparsect.data.store import atomic_write_json, read_json
from sparsect.models.variants import known_variant, variant_table
from sparsect.registry import promote, register, split_hash
from sparsect.tracking import tracking_uri, training_run_id


def promote_all(cfg: DictConfig, prepared_dir: Path, models_root: Path, evaluations: Path,
                out_path: Path) -> Path:
    """Writes ``out_path``: one entry per registered model with its champion and the reason."""
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
    atomic_write_json(Path(out_path), {"selection_set": val_hash, "decisions": decisions})
    return Path(out_path)
