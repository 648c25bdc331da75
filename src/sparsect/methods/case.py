"""What a method reads (:class:`Case`) and what it returns (:class:`Output`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsect.physics.acquisition import Acquisition


@dataclass
class Case:
    """A stack of slices as every method sees it.

    Attributes:
        fbp: ``(N, H, W)`` float32 FBP in HU made with the acquisition's filter (the
            learned methods' input).
        sinograms: ``(N, views, detectors)`` line integrals the FBP was made from (None
            where only images are at hand: methods that read the sinogram refuse).
        acquisition: How the data were made (geometry, noise, filter, device); None
            for images of unknown origin (only image-domain models can read them).
        index: ``(subject, z)`` of every slice: 2.5D neighbours stay inside a subject
            (None: the slices are one volume, in axial order).
        slices: Reconstruct only these rows (None: all); neighbours still come from the
            whole stack.
        full_dose_classes: ``(N, H, W)`` full-dose tissue classes, handed only to a model
            that reads them (an oracle, an upper bound, never a deployable result).
    """

    fbp: np.ndarray
    sinograms: np.ndarray | None
    acquisition: Acquisition | None
    index: list | None = None
    slices: np.ndarray | None = None
    full_dose_classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.fbp = np.asarray(self.fbp, np.float32)
        if self.fbp.ndim != 3:
            raise ValueError(f"a case's FBP must be (N, H, W), got shape {self.fbp.shape}")
        if self.sinograms is not None and len(self.sinograms) != len(self.fbp):
            raise ValueError(f"{len(self.sinograms)} sinograms for {len(self.fbp)} FBP slices")

    @property
    def picks(self) -> np.ndarray:
        """The rows reconstructed, in output order."""
        return np.arange(len(self.fbp)) if self.slices is None else np.asarray(self.slices)


@dataclass
class Output:
    """One named result of a method: ``images`` ``(len(picks), H, W)`` float32 HU, what the
    report records beside its metrics (``extra``: prior, upper bound, data-consistency
    step), and tissue classes the method predicted (None without)."""

    images: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    classes: np.ndarray | None = None
