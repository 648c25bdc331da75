"""MLflow tracking: URI resolution and the provenance tags every run carries."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from omegaconf import DictConfig


def tracking_uri(cfg: DictConfig) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``logger.tracking_uri`` (sqlite by default,
    because the model registry needs a database store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.logger.tracking_uri)


def git_commit(root: Path = Path(".")) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def file_hash(path: Path) -> str:
    """md5 of a small provenance file (``data.dvc``, ``dvc.lock``), or 'missing'."""
    path = Path(path)
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def provenance_tags(root: Path = Path(".")) -> dict[str, str]:
    root = Path(root)
    return {
        "git_commit": git_commit(root),
        "data_dvc_md5": file_hash(root / "data.dvc"),
        "dvc_lock_md5": file_hash(root / "dvc.lock"),
    }


def flatten(payload: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> ``{"a.b": value}`` for MLflow params."""
    flat: dict[str, object] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
