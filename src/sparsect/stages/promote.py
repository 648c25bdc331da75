"""Stage ``promote``: register every deployable model of the grid and move champions.

Candidates are judged on the test-split metrics written by ``evaluate``; the
decision itself lives in :mod:`sparsect.registry`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sparsect.data.store import atomic_write_json, read_json
from sparsect.registry import DEPLOYABLE, promote, register, test_set_hash


def promote_all(cfg: DictConfig, prepared_dir: Path, models_root: Path, evaluations: Path,
                out_path: Path) -> Path:
    """Writes ``out_path``: one entry per registered model with its champion and the reason."""
    test_hash = test_set_hash(Path(prepared_dir))
    margin = float(cfg.registry.margin_db)
    decisions = []
    for views in cfg.sweep.views:
        summary = read_json(Path(models_root) / str(views) / "summary.json")
        metrics = read_json(Path(evaluations) / str(views) / "metrics.json")
        for model, info in summary.items():
            if model not in DEPLOYABLE:
                continue
            values = {k: v for k, v in metrics[model].items() if isinstance(v, float)}
            version = register(cfg, model, Path(models_root) / str(views) / info["checkpoint"],
                               info.get("mlflow_run_id"), values, test_hash)
            decision = promote(cfg, version, margin)
            decision.update(views=int(views), model=model, candidate=version.version)
            print(f"[promote] {decision['name']} v{version.version}: {decision['reason']}")
            decisions.append(decision)
    atomic_write_json(Path(out_path), {"test_set": test_hash, "decisions": decisions})
    return Path(out_path)
