"""MLflow model registry: register trained models, promote a champion.

One registered model per geometry, view count and architecture, named
``sparsect-<beam>-<views>v-<model>`` (e.g. ``sparsect-parallel-60v-sg_unet``).
Each version is a pyfunc model holding the checkpoint, loadable with
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
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from omegaconf import DictConfig

from sparsect.errors import InputError
from sparsect.tracking import CHECKPOINT_TAG, provenance_tags, sha256_file, tracking_uri

ALIAS = "champion"

try:  # the pyfunc wrapper needs mlflow; the rest of the package does not
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency of the pipeline
    _PythonModel = object


def model_name(geometry: dict[str, Any], model: str) -> str:
    return f"sparsect-{geometry['beam']}-{geometry['views']}v-{model}"


def split_hash(prepared_dir: Path, split: str) -> str:
    """Identity of a frozen split: its reference slices and their index."""
    folder = Path(prepared_dir) / split
    parts = sha256_file(folder / "hu.npy") + sha256_file(folder / "index.json")
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


class ReconstructionModel(_PythonModel):
    """pyfunc wrapper: FBP slices or sinograms in, HU ``(N, H, W)`` out.

    ``predict(x)`` with ``params={"input": "fbp"}`` (the default) takes ``x`` as FBP
    slices in HU, ``(N, H, W)`` float32; with ``params={"input": "sinogram"}`` it takes
    the measured sinograms ``(N, views, bins)`` (line integrals, on the geometry the
    model records) and makes their FBP with the model's filter first, as ``sparsect
    reconstruct`` does. Either way the slices are consecutive axial slices of one volume
    (2.5D models read neighbours from it), and
    :func:`sparsect.models.predict.predict` applies the model exactly as ``evaluate``
    scored it. Models that read the measurements (``operator`` in the variant table)
    need the sinogram input (or, called from Python, ``{"fbp": ..., "sinogram": ...}``).

    Served with ``mlflow models serve``, the request is
    ``{"inputs": <nested list>, "params": {"input": "sinogram"}}`` and the answer
    ``{"predictions": <(N, H, W) nested list>}``."""

    def load_context(self, context: Any) -> None:
        from sparsect.models.checkpoint import load_module

        self.module = load_module(Path(context.artifacts["checkpoint"]))

    # The np.ndarray hint tells MLflow not to derive a schema from hints (the
    # signature is given at registration); without a hint it warns on every import.
    def predict(self, context, model_input: np.ndarray, params=None):  # noqa: ANN001, ANN201
        from sparsect.models.predict import predict

        kind = str((params or {}).get("input", "fbp"))
        if kind not in INPUTS:
            raise InputError(f"params input '{kind}' is unknown: use one of "
                             f"{', '.join(INPUTS)}.")
        sinogram = None
        if isinstance(model_input, dict):
            sinogram = model_input.get("sinogram")
            model_input = model_input.get("fbp")
        elif kind == "sinogram":
            sinogram, model_input = _slices(model_input, "sinograms (N, views, bins)"), None
        if self.module.needs_operator and sinogram is None:
            raise InputError("This model reads the measured sinogram: send the sinograms "
                             "with params {\"input\": \"sinogram\"}.")
        if sinogram is not None:
            sinogram = self._check_sinogram(sinogram)
        fbp = self._fbp(sinogram) if model_input is None else _slices(
            model_input, "FBP slices in HU as (N, H, W), consecutive axial slices of one volume")
        return predict(self.module, fbp, sinogram=sinogram).images

    def _check_sinogram(self, sinogram: np.ndarray) -> np.ndarray:
        geometry = self.module.hparams.geometry
        expected = (int(geometry["views"]), _detectors(geometry))
        if sinogram.shape[1:] != expected:
            raise InputError(f"Sinogram input has shape {sinogram.shape}: this model was "
                             f"trained for (N, {expected[0]}, {expected[1]}) (views, bins).")
        return sinogram

    def _fbp(self, sinogram: np.ndarray) -> np.ndarray:
        """The FBP in HU the model's inputs were made with (its recorded filter)."""
        from sparsect.physics import Geometry, mu_to_hu
        from sparsect.physics.reconstruct import reconstruct_stack

        geometry = Geometry.from_dict(dict(self.module.hparams.geometry))
        return mu_to_hu(reconstruct_stack("fbp", geometry, sinogram, device="auto",
                                          filter=str(self.module.hparams.acquisition["filter"])))


INPUTS = ("fbp", "sinogram")
"""What the pyfunc model's input is (its ``params["input"]``)."""


def _slices(values: Any, what: str) -> np.ndarray:
    """``values`` as a float32 ``(N, A, B)`` array (one slice ``(A, B)`` and ``(N, 1, A, B)``
    accepted)."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"Model input has shape {array.shape}: give {what}.")
    return array


def _detectors(geometry: dict[str, Any]) -> int:
    from sparsect.physics import Geometry

    return Geometry.from_dict(dict(geometry)).detector_count


# What loading a registered model imports (the checkpoint reader, the networks, the
# threshold prior); the sparsect package itself travels with the model (code_paths).
# ASTRA makes the FBP of a sinogram input (and is the CT operator of the models that
# read the sinogram).
MODEL_REQUIREMENTS = ("torch", "pytorch-lightning", "torchmetrics", "numpy", "scipy", "mlflow",
                      "astra-toolbox")


def model_requirements() -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to this environment. Given explicitly because
    MLflow's inference of them loads the model in a subprocess: ~20 s per model."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")  # no local tag (+cpu)
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _client(cfg: DictConfig):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow.MlflowClient()


LOCK_TIMEOUT_S = 600.0
LOCK_FOLDER = ".sparsect-locks"  # beside an sqlite store; ignored by git


def lock_path(uri: str, name: str, lock_dir: str | None = None) -> Path:
    """The lock file guarding registered model ``name`` in the store at ``uri``.

    ``lock_dir`` when given; for an sqlite store ``<dir>/mlflow.db``, the folder
    ``<dir>/.sparsect-locks/`` (ignored by git, so a run leaves the checkout clean);
    otherwise the temp folder.
    """
    key = hashlib.md5(uri.encode()).hexdigest()[:12]
    if lock_dir is not None:
        folder = Path(lock_dir)
    elif urlparse(uri).scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent / LOCK_FOLDER
    else:
        folder = Path(tempfile.gettempdir())
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
             selection_psnr: float, selection_set: str, test_metrics: dict[str, Any]):
    """Registers ``checkpoint`` (or finds its existing version); returns the version.

    ``selection_psnr`` is the validation PSNR promotion compares, on the split
    identified by ``selection_set``; ``test_metrics`` are recorded, never compared."""
    from sparsect.models.checkpoint import load_module

    client = _client(cfg)
    module = load_module(checkpoint)
    geometry = dict(module.hparams.geometry)
    name = model_name(geometry, model)
    with registry_lock(cfg, name):  # two processes must not register one checkpoint twice
        checkpoint_hash = sha256_file(checkpoint)
        existing = _find_version(client, name, checkpoint_hash)
        if existing is not None:
            return existing
        return _register(model, checkpoint, checkpoint_hash, module, name, run_id,
                         selection_psnr, selection_set, test_metrics)


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
            code_paths=[str(Path(__file__).resolve().parent)],
        )
    geometry, noise = dict(module.hparams.geometry), dict(module.hparams.noise)
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


def pyfunc_signature(module) -> tuple[Any, Any]:  # noqa: ANN001 - a ReconModule
    """The served model's signature (any ``(N, A, B)`` float32 input, the ``input``
    parameter, ``(N, H, W)`` out) and an input example: an FBP slice of a water square,
    or for a model that reads the sinogram, that square's sinogram with
    ``{"input": "sinogram"}``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    size = int(module.hparams.geometry["image_size"])
    example = np.full((1, size, size), -1000.0, np.float32)
    example[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 40.0
    params = {"input": "fbp"}
    if module.needs_operator:  # with the sinogram of that example
        import torch

        from sparsect.physics import Geometry, hu_to_mu
        from sparsect.physics.operator import ct_operator

        operator = ct_operator(Geometry.from_dict(dict(module.hparams.geometry)), "cpu")
        with torch.no_grad():
            example = operator.forward(torch.from_numpy(hu_to_mu(example))).numpy()
        params = {"input": "sinogram"}
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size))]),
        params=ParamSchema([ParamSpec("input", "string", "fbp")]))
    return signature, (example, params) if module.needs_operator else example


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
