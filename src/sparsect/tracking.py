"""MLflow tracking: URI resolution and the provenance tags every run carries."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from sparsect.errors import InputError


def tracking_uri(cfg: DictConfig) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``logger.tracking_uri`` (sqlite by default,
    because the model registry needs a database store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.logger.tracking_uri)
    check_reachable(uri)
    return uri


LOCK_FOLDER = ".sparsect-locks"  # beside an sqlite store; ignored by git


def lock_folder(uri: str) -> Path:
    """Where the locks guarding the store at ``uri`` live: for an sqlite store
    ``<dir>/mlflow.db``, ``<dir>/.sparsect-locks/`` (ignored by git, so a run leaves the
    checkout clean; on a shared file system every machine sees it); otherwise the
    temp folder."""
    if urlparse(uri).scheme == "sqlite":
        return Path(uri.removeprefix("sqlite:///")).parent / LOCK_FOLDER
    return Path(tempfile.gettempdir())


def ensure_experiment(uri: str, experiment: str) -> None:
    """Creates an sqlite store's tables and ``experiment`` if missing, one process at a
    time. Processes that start together on a new store (a sweep's jobs, the ranks
    torchrun starts at once) would otherwise race to create them, and MLflow's schema
    migration fails in all but one. A server store creates its own."""
    if urlparse(uri).scheme != "sqlite":
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    key = hashlib.md5(uri.encode()).hexdigest()[:12]
    path = lock_folder(uri) / f".sparsect-store-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, timeout=600):
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fails fast, in ``timeout_s``, when an HTTP tracking server does not answer.

    MLflow's client retries a dead server with back-off for minutes; a batch job
    should stop at once with a clear message instead.

    Raises:
        InputError: naming the URI and what to do.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return
    except OSError as error:
        raise InputError(
            f"MLflow tracking server '{uri}' is unreachable ({error.strerror or error}): start "
            "it, or unset MLFLOW_TRACKING_URI to track into the local sqlite:///mlflow.db."
        ) from None


def git_commit(root: Path = Path(".")) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


CHECKPOINT_TAG = "checkpoint_sha256"
"""Tag linking an MLflow run (and a registered version) to the checkpoint it made."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def training_run_id(uri: str, checkpoint: Path) -> str | None:
    """The MLflow run that trained ``checkpoint``, found by its content hash, or None.

    Stage outputs hold no run ids: a run id is new on every run, so it would make
    DVC see a new output (and a new ``dvc.lock``) when the weights are the same.
    """
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, f"tags.{CHECKPOINT_TAG} = '{sha256_file(checkpoint)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


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
