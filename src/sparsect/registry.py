"""MLflow model registry: register trained models, promote a champion.

One registered model per geometry, view count and architecture, named
``sparsect-<beam>-<views>v-<model>`` (e.g. ``sparsect-parallel-60v-sg_unet``).
Each version is a pyfunc model holding the checkpoint (the served model of
:mod:`sparsect.serving`), loadable with
``mlflow.pyfunc.load_model("models:/NAME@champion")``; its tags carry what is
needed to rebuild and judge it: geometry, noise, intensity normalisation,
training-data hash, git commit, the hash of the frozen test set and the test
metrics.

Promotion moves the alias ``champion`` to a candidate only when it beats the
current champion on the *same* frozen selection set by at least
``registry.margin_db`` PSNR; ties and regressions keep the champion, and the
reason is written on the candidate version. The selection set is the
validation split, not the test split: choosing the champion by its test score
would make the reported test numbers optimistic (test metrics are recorded on
the version for information only). A version is identified by its checkpoint's hash, so
registering the same checkpoint again reuses its version: promote is
idempotent, and racing promotions are serialised by a file lock
(:func:`registry_lock`). A version carries the sparsect package (``code_paths``)
and pinned requirements, so it loads where sparsect is not installed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sparsect.errors import InputError
from sparsect.serving import PACKAGE_DIR, ReconstructionModel, model_requirements, pyfunc_signature
from sparsect.tracking import (
    CHECKPOINT_TAG,
    LOCK_FOLDER,
    lock_folder,
    provenance_tags,
    sha256_file,
    tracking_uri,
)

# Versions already registered hold their pyfunc model pickled (by cloudpickle) as
# ``sparsect.registry.ReconstructionModel``: the name must stay importable from here for
# them to load.
__all__ = [
    "ALIAS",
    "BASELINES_TAG",
    "LOCK_FOLDER",
    "LOCK_TIMEOUT_S",
    "ReconstructionModel",
    "champion_uri",
    "lock_path",
    "model_name",
    "model_version",
    "promote",
    "register",
    "registered_baselines",
    "registry_lock",
    "resolve_model_uri",
    "split_hash",
]

ALIAS = "champion"


def model_name(geometry: dict[str, Any], model: str) -> str:
    return f"sparsect-{geometry['beam']}-{geometry['views']}v-{model}"


def split_hash(prepared_dir: Path, split: str) -> str:
    """Identity of a frozen split: its reference slices and their index."""
    folder = Path(prepared_dir) / split
    parts = sha256_file(folder / "hu.npy") + sha256_file(folder / "index.json")
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


def _client(cfg: DictConfig):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow.MlflowClient()


LOCK_TIMEOUT_S = 600.0


def lock_path(uri: str, name: str, lock_dir: str | None = None) -> Path:
    """The lock file guarding registered model ``name`` in the store at ``uri``.

    ``lock_dir`` when given; for an sqlite store ``<dir>/mlflow.db``, the folder
    ``<dir>/.sparsect-locks/`` (ignored by git, so a run leaves the checkout clean);
    otherwise the temp folder.
    """
    key = hashlib.md5(uri.encode()).hexdigest()[:12]
    folder = Path(lock_dir) if lock_dir is not None else lock_folder(uri)
    return folder / f".sparsect-registry-{key}-{name}.lock"


@contextmanager
def registry_lock(cfg: DictConfig, name: str) -> Iterator[None]:
    """Serialises read-compare-write on one registered model across processes.

    MLflow has no compare-and-set for aliases: two promotions that both read the
    old champion would both move the alias, and the last writer wins even when
    it is the worse model. Under this lock each promotion sees the previous
    one's result. The lock is an OS file lock (``flock``), so a killed process
    releases it.

    Raises:
        InputError: if another process holds the lock for ``LOCK_TIMEOUT_S``.
    """
    from filelock import FileLock, Timeout

    path = lock_path(tracking_uri(cfg), name, cfg.registry.get("lock_dir"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path, timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise InputError(
            f"Registry lock '{path}' has been held by another process for "
            f"{LOCK_TIMEOUT_S:.0f} s: wait for the other `sparsect promote` to finish."
        ) from None


def _find_version(client, name: str, checkpoint_hash: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get(CHECKPOINT_TAG) == checkpoint_hash:
            return version
    return None


def register(cfg: DictConfig, model: str, checkpoint: Path, run_id: str | None,
             selection_psnr: float, selection_set: str, test_metrics: dict[str, Any],
             baselines: dict[str, dict[str, Any]] | None = None):
    """Registers ``checkpoint`` (or finds its existing version); returns the version.

    ``selection_psnr`` is the validation PSNR promotion compares, on the split
    identified by ``selection_set``; ``test_metrics`` are recorded, never compared;
    ``baselines`` (method -> settings, chosen on validation at the model's view count)
    are stored on the version (tag :data:`BASELINES_TAG`, also added to a version found
    without it), so ``sparsect reconstruct --method tv`` runs them as they were scored."""
    from sparsect.models.checkpoint import load_module
    from sparsect.physics.acquisition import Acquisition

    client = _client(cfg)
    module = load_module(checkpoint)
    name = model_name(Acquisition.of_module(module).geometry.to_dict(), model)
    with registry_lock(cfg, name):  # two processes must not register one checkpoint twice
        checkpoint_hash = sha256_file(checkpoint)
        existing = _find_version(client, name, checkpoint_hash)
        if existing is None:
            existing = _register(model, checkpoint, checkpoint_hash, module, name, run_id,
                                 selection_psnr, selection_set, test_metrics)
        if baselines and BASELINES_TAG not in (existing.tags or {}):
            client.set_model_version_tag(name, existing.version, BASELINES_TAG,
                                         json.dumps(baselines, sort_keys=True))
        return existing


def _register(model: str, checkpoint: Path, checkpoint_hash: str, module, name: str,
              run_id: str | None, selection_psnr: float, selection_set: str,
              test_metrics: dict[str, Any]):
    import mlflow

    signature, example = pyfunc_signature(module)
    with mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(
            run_name=f"register {name}"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ReconstructionModel(),
            artifacts={"checkpoint": str(checkpoint)}, input_example=example,
            signature=signature, pip_requirements=model_requirements(),
            code_paths=[str(PACKAGE_DIR)],
        )
    from sparsect.physics.acquisition import Acquisition

    acquisition = Acquisition.of_module(module)
    geometry, noise = acquisition.geometry.to_dict(), asdict(acquisition.noise)
    tags = {
        **provenance_tags(),
        CHECKPOINT_TAG: checkpoint_hash,
        "selection_set": selection_set,
        "selection_psnr": f"{selection_psnr:.6f}",
        "model": model,
        "prior": str(module.hparams.prior),
        "geometry": json.dumps(geometry, sort_keys=True),
        "noise": json.dumps(noise, sort_keys=True),
        "intensity": f"network units = HU / {module.hparams.hu_scale}",
        **{f"test_{key}": f"{value:.6f}" for key, value in test_metrics.items()
           if isinstance(value, float)},
    }
    return mlflow.register_model(info.model_uri, name, tags=tags)


BASELINES_TAG = "baselines"
"""Version tag holding the classical methods' tuned settings at the model's view count."""


def model_version(uri: str):  # noqa: ANN201 - an mlflow ModelVersion
    """The registry version a ``models:/NAME@ALIAS`` or ``models:/NAME/N`` URI names (in the
    tracking store already set).

    Raises:
        InputError: no such version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    path = uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    try:
        if "@" in path:
            name, alias = path.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = path.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as error:
        raise InputError(f"Model '{uri}' is not in the registry "
                         f"({str(error).splitlines()[0]}): check it with `mlflow models` or "
                         "run `sparsect promote`.") from None


def registered_baselines(cfg: DictConfig, uri: str) -> dict[str, dict[str, Any]]:
    """The classical methods' tuned settings stored on registry version ``uri`` (empty for
    a run, a checkpoint, or a version registered before they were stored)."""
    if not uri.startswith("models:/"):
        return {}
    _client(cfg)
    return json.loads(model_version(uri).tags.get(BASELINES_TAG) or "{}")


def promote(cfg: DictConfig, version, margin_db: float) -> dict[str, Any]:
    """Moves the champion alias to ``version`` if it wins; records why either way.

    The comparison and the move happen under :func:`registry_lock`, so racing
    promotions leave exactly one champion, the best of them by the margin rule."""
    with registry_lock(cfg, version.name):
        return _promote(cfg, version, margin_db)


def _promote(cfg: DictConfig, version, margin_db: float) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    name = version.name
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        champion = None
    candidate_psnr = float(version.tags["selection_psnr"])
    if champion is None:
        decision, reason = True, f"first model: validation PSNR {candidate_psnr:.2f} dB"
    elif champion.version == version.version:
        return {"name": name, "champion": version.version, "changed": False,
                "reason": "candidate is already the champion"}
    elif champion.tags.get("selection_set") != version.tags["selection_set"]:
        decision, reason = False, (
            f"kept v{champion.version}: validation sets differ "
            f"({champion.tags.get('selection_set')} vs {version.tags['selection_set']}), "
            "not comparable")
    else:
        champion_psnr = float(champion.tags["selection_psnr"])
        decision = candidate_psnr >= champion_psnr + margin_db
        verb = "beats" if decision else "does not beat"
        reason = (f"validation PSNR {candidate_psnr:.2f} dB {verb} champion "
                  f"v{champion.version} ({champion_psnr:.2f} dB) by the margin of "
                  f"{margin_db} dB")
    client.set_model_version_tag(name, version.version, "promotion", reason)
    if decision:
        client.set_registered_model_alias(name, ALIAS, version.version)
    current = version.version if decision else champion.version
    return {"name": name, "champion": current, "changed": decision, "reason": reason}


def champion_uri(cfg: DictConfig, views: int | None = None, model: str = "sg_unet") -> str:
    """``models:/<name>@champion`` of ``model`` for the configured geometry at ``views``."""
    from sparsect.settings import geometry_from_cfg

    return f"models:/{model_name(geometry_from_cfg(cfg, views).to_dict(), model)}@{ALIAS}"


def resolve_model_uri(cfg: DictConfig, uri: str):
    """``models:/...``, ``runs:/...`` (from ``cfg``'s tracking store) or a checkpoint
    path -> a loaded ReconModule."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        mlflow.set_tracking_uri(tracking_uri(cfg))
        try:
            loaded = mlflow.pyfunc.load_model(uri)
        except MlflowException as error:
            raise InputError(
                f"Model '{uri}' cannot be loaded from the registry ({str(error).splitlines()[0]}): "
                "check the name and alias with `mlflow models` or run `sparsect promote`."
            ) from None
        return loaded.unwrap_python_model().module
    from sparsect.models.checkpoint import load_module

    return load_module(Path(uri))
