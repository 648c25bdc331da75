"""Learned methods: a trained model applied through :func:`~sparsect.models.predict.predict`,
and its data-consistency form (``<model>+dc``).

This is the one caller of ``predict`` (tests and benchmarks aside), and the one place
that decides which model may read the full-dose classes: the one whose checkpoint says
its network reads them (``prior: oracle``, an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsect.errors import InputError
from sparsect.models.predict import BATCH_SIZE, MIRROR_AVERAGE, predict

from .case import Case, Output
from .names import DC_SUFFIX


@dataclass
class Learned:
    """A trained model (a ``ReconModule``, or anything with its interface such as an ONNX
    runtime module).

    Attributes:
        name: The method's name (the variant's, for the pipeline's models).
        module: The model.
        data_consistency: Also give ``<name>+dc``, the images after the data-consistency
            step the checkpoint records (chosen on validation after training).
        label: What the report records beside the model's metrics (its prior and whether
            it is an upper bound); by default read from the checkpoint.
        batch_size: Slices per network call.
        mirror_average: Average with the mirrored slices' output
            (:data:`~sparsect.models.predict.MIRROR_AVERAGE`); a benchmark that reproduces
            published single-pass numbers turns it off.
        dc_floor: Where the data-consistency step stops: ``"scan"`` (each slice at its own
            residual floor, estimated from its sinogram: noise and model mismatch,
            :func:`~sparsect.physics.noisefloor.residual_floor`), an array of floors (e.g.
            from measured counts), or None (the recorded step count for every slice, the
            rule before the per-scan floor, kept for comparison).
    """

    name: str
    module: Any
    data_consistency: bool = False
    label: dict[str, Any] | None = None
    batch_size: int = BATCH_SIZE
    mirror_average: bool = MIRROR_AVERAGE
    dc_floor: Any = "scan"

    def __post_init__(self) -> None:
        if self.data_consistency and not self.dc:
            raise InputError(f"Model '{self.name}' records no data-consistency step: retrain "
                             "it with model.dc_steps set, or reconstruct without it.")
        if self.label is None:
            self.label = {"prior": self.prior, "upper_bound": self.reads_full_dose}

    @property
    def prior(self) -> str:
        """What the network reads beside the FBP (``none``, ``predicted``, ``threshold``,
        ``oracle``, ``scan``), as its checkpoint records it."""
        return str(self.module.hparams.get("prior", "none"))

    @property
    def reads_full_dose(self) -> bool:
        """Whether the model reads the full-dose classes: the oracle rule, in one place."""
        return self.prior == "oracle"

    @property
    def dc(self) -> dict[str, Any] | None:
        """The data-consistency step the checkpoint records (None without one)."""
        step = self.module.hparams.get("dc")
        return dict(step) if step else None

    @property
    def reads_sinogram(self) -> bool:
        """Whether the method needs the case's sinograms."""
        return bool(self.module.needs_operator) or self.data_consistency

    def reconstruct(self, case: Case) -> np.ndarray:
        """The model's images of ``case`` (without the data-consistency step)."""
        return self.apply(case)[self.name].images

    def apply(self, case: Case) -> dict[str, Output]:
        """``{name: Output}``, and ``{name+dc: Output}`` with the data-consistency step."""
        scan = {}
        if self.prior == "scan":
            if getattr(case, "prior", None) is None or getattr(case, "prior_organs", None) is None:
                raise InputError(f"Model '{self.name}' reads an earlier scan of the patient: "
                                 "give one (--prior-scan).")
            scan = {"prior_scan": case.prior, "prior_organs": case.prior_organs}
        prediction = predict(
            self.module, case.fbp, index=case.index,
            full_dose_classes=case.full_dose_classes if self.reads_full_dose else None,
            sinogram=case.sinograms if self.reads_sinogram else None,
            geometry=None if case.acquisition is None else case.acquisition.geometry,
            slices=case.slices, batch_size=self.batch_size, mirror_average=self.mirror_average,
            data_consistency=self.data_consistency,
            dc_floor=self.dc_floor if self.data_consistency else None, **scan)
        label = dict(self.label or {})
        out = {self.name: Output(prediction.images, label, prediction.classes)}
        if prediction.consistent is not None:
            floor = self.dc_floor if isinstance(self.dc_floor, str | None) else "given"
            out[self.name + DC_SUFFIX] = Output(prediction.consistent,
                                                {**label, "data_consistency": self.dc,
                                                 "dc_floor": floor})
        return out
