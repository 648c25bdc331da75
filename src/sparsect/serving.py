"""The served model: the MLflow pyfunc wrapper every registered version holds.

:class:`ReconstructionModel` takes FBP slices or measured sinograms and answers the
reconstruction in HU; :func:`pyfunc_signature` gives its signature and input
example, :func:`model_requirements` the pinned packages that loading it imports, and
:data:`PACKAGE_DIR` the sparsect package logged beside it (``code_paths``), so a
version loads where sparsect is not installed. Registering and promoting versions is
:mod:`sparsect.registry`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sparsect.errors import InputError

try:  # the pyfunc wrapper needs mlflow; the rest of the package does not
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency of the pipeline
    _PythonModel = object

PACKAGE_DIR = Path(__file__).resolve().parent
"""The sparsect package folder, logged with every version (``code_paths``)."""


class ReconstructionModel(_PythonModel):
    """pyfunc wrapper: FBP slices or sinograms in, HU ``(N, H, W)`` out.

    ``predict(x)`` with ``params={"input": "fbp"}`` (the default) takes ``x`` as FBP
    slices in HU, ``(N, H, W)`` float32; with ``params={"input": "sinogram"}`` it takes
    the measured sinograms ``(N, views, bins)`` (line integrals, on the geometry the
    model records) and makes their FBP with the model's filter first, as ``sparsect
    reconstruct`` does. Either way the slices are consecutive axial slices of one volume
    (2.5D models read neighbours from it), and the method layer
    (:class:`sparsect.methods.learned.Learned`) applies the model exactly as ``evaluate``
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
        from sparsect.methods.case import Case
        from sparsect.methods.learned import Learned
        from sparsect.physics.acquisition import Acquisition

        kind = str((params or {}).get("input", "fbp"))
        if kind not in INPUTS:
            raise InputError(f"params input '{kind}' is unknown: use one of {', '.join(INPUTS)}.")
        sinogram = None
        if isinstance(model_input, dict):
            sinogram = model_input.get("sinogram")
            model_input = model_input.get("fbp")
        elif kind == "sinogram":
            sinogram, model_input = _slices(model_input, "sinograms (N, views, bins)"), None
        if self.module.needs_operator and sinogram is None:
            raise InputError(
                "This model reads the measured sinogram: send the sinograms "
                'with params {"input": "sinogram"}.'
            )
        acquisition = Acquisition.of_module(self.module)
        if sinogram is not None:
            sinogram = _check_sinogram(sinogram, acquisition.geometry.sinogram_shape)
        # a sinogram input gets the FBP the model's inputs were made with (its filter)
        fbp = (
            acquisition.fbp(sinogram)
            if model_input is None
            else _slices(
                model_input, "FBP slices in HU as (N, H, W), consecutive axial slices of one volume"
            )
        )
        name = self.module.hparams.get("variant") or "model"
        return Learned(name, self.module).reconstruct(Case(fbp, sinogram, acquisition))


def _check_sinogram(sinogram: np.ndarray, expected: tuple[int, int]) -> np.ndarray:
    if sinogram.shape[1:] != expected:
        raise InputError(
            f"Sinogram input has shape {sinogram.shape}: this model was "
            f"trained for (N, {expected[0]}, {expected[1]}) (views, bins)."
        )
    return sinogram


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


def pyfunc_signature(module) -> tuple[Any, Any]:  # noqa: ANN001 - a ReconModule
    """The served model's signature (any ``(N, A, B)`` float32 input, the ``input``
    parameter, ``(N, H, W)`` out) and an input example: an FBP slice of a water square,
    or for a model that reads the sinogram, that square's sinogram with
    ``{"input": "sinogram"}``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    from sparsect.physics.acquisition import Acquisition

    geometry = Acquisition.of_module(module).geometry
    size = geometry.image_size
    example = np.full((1, size, size), -1000.0, np.float32)
    example[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 40.0
    params = {"input": "fbp"}
    if module.needs_operator:  # with the sinogram of that example
        import torch

        from sparsect.physics import hu_to_mu
        from sparsect.physics.operator import ct_operator

        operator = ct_operator(geometry, "cpu")
        with torch.no_grad():
            example = operator.forward(torch.from_numpy(hu_to_mu(example))).numpy()
        params = {"input": "sinogram"}
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size))]),
        params=ParamSchema([ParamSpec("input", "string", "fbp")]),
    )
    return signature, (example, params) if module.needs_operator else example


# What loading a registered model imports (the checkpoint reader, the networks, the
# threshold prior); the sparsect package itself travels with the model (code_paths).
# ASTRA makes the FBP of a sinogram input (and is the CT operator of the models that
# read the sinogram).
MODEL_REQUIREMENTS = (
    "torch",
    "pytorch-lightning",
    "torchmetrics",
    "numpy",
    "scipy",
    "mlflow",
    "astra-toolbox",
)


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
