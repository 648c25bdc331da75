"""Methods that read an earlier scan of the patient (:attr:`PriorCase.prior`): PICCS, and
the registered prior itself (what copying the earlier scan would score)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsect.errors import InputError
from sparsect.physics import hu_to_mu, mu_to_hu

from .case import Case, Output


@dataclass
class PriorCase(Case):
    """A :class:`Case` with an earlier scan of the same patient.

    Attributes:
        prior: ``(N, H, W)`` float32 HU: the earlier full-dose scan registered to the case's
            slices (its own acquisition, never their reference); read only by the
            prior-image methods.
        prior_organs: ``(N, H, W)`` the organ classes of ``prior`` (the fixed segmenter's,
            :func:`sparsect.priors.organs.segmenter_classes`), for learned models that read
            an earlier scan (``prior: scan``).
    """

    prior: np.ndarray | None = None
    prior_organs: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior is not None and np.shape(self.prior) != self.fbp.shape:
            raise ValueError(f"a case's prior must match its FBP {self.fbp.shape}, got "
                             f"{np.shape(self.prior)}")
        if self.prior_organs is not None and np.shape(self.prior_organs) != self.fbp.shape:
            raise ValueError(f"a case's prior organ map must match its FBP {self.fbp.shape}, "
                             f"got {np.shape(self.prior_organs)}")


PRIOR_METHODS = ("piccs", "prior")
"""``piccs``: prior image constrained compressed sensing
(:func:`~sparsect.physics.iterative.piccs`);
``prior``: the registered earlier scan, unchanged."""

PICCS_DEFAULTS: dict[str, Any] = {"weight": 0.0025, "alpha": 0.8, "iterations": 100}

_BATCH = 32  # slices per PICCS batch: the fastest per slice on 2 cores (128 x 128, 30 views)


@dataclass(frozen=True)
class PriorImage:
    """A prior-image method; its outputs are named ``name + suffix`` (e.g. a control's
    ``piccs (unregistered)``).

    Attributes:
        name: One of :data:`PRIOR_METHODS`.
        options: PICCS's ``weight``, ``alpha`` and ``iterations`` (None: the defaults).
        suffix: Appended to the output's name.
        device: Of the torch operator.
    """

    name: str
    options: dict[str, Any] | None = None
    suffix: str = ""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.name not in PRIOR_METHODS:
            raise InputError(f"Prior-image method '{self.name}' is unknown: use one of "
                             f"{', '.join(PRIOR_METHODS)}.")
        unknown = sorted(set(self.options or {}) - set(PICCS_DEFAULTS))
        if unknown:
            raise InputError(f"PICCS has no setting {unknown}: use {sorted(PICCS_DEFAULTS)}.")

    @property
    def settings(self) -> dict[str, Any]:
        return {**PICCS_DEFAULTS, **(self.options or {})} if self.name == "piccs" else {}

    def apply(self, case: Case) -> dict[str, Output]:
        """``{name: Output}`` for the case's picked slices."""
        if getattr(case, "prior", None) is None:
            raise InputError(f"Method '{self.name}' reads an earlier scan: give one "
                             "(--prior-scan).")
        picks = case.picks
        extra = {"prior": "earlier scan", **self.settings}
        if self.name == "prior":
            return {self.name + self.suffix: Output(np.asarray(case.prior[picks], np.float32),
                                                    extra)}
        if case.sinograms is None or case.acquisition is None:
            raise InputError("PICCS reconstructs the sinogram: give the sinograms and their "
                             "acquisition, not only images.")
        return {self.name + self.suffix: Output(self._piccs(case, picks), extra)}

    def _piccs(self, case: Case, picks: np.ndarray) -> np.ndarray:
        import torch

        from sparsect.physics.iterative import piccs
        from sparsect.physics.operator import ct_operator

        settings = self.settings
        op = ct_operator(case.acquisition.geometry, self.device)
        out = np.empty((len(picks), *case.fbp.shape[1:]), np.float32)
        for start in range(0, len(picks), _BATCH):
            rows = picks[start:start + _BATCH]
            result = piccs(op, torch.from_numpy(np.asarray(case.sinograms[rows], np.float32)),
                           torch.from_numpy(np.asarray(hu_to_mu(case.fbp[rows]), np.float32)),
                           torch.from_numpy(np.asarray(hu_to_mu(case.prior[rows]), np.float32)),
                           record=int(settings["iterations"]), weight=float(settings["weight"]),
                           alpha=float(settings["alpha"]))[int(settings["iterations"])]
            out[start:start + len(rows)] = mu_to_hu(result.cpu().numpy())
        return out
