"""Classical methods: FBP, SIRT, CGLS, TV (and SART) with their settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsect.errors import InputError
from sparsect.physics import mu_to_hu
from sparsect.physics.reconstruct import DEFAULT_MAX_MIB, check_options, reconstruct_stack

from .case import Case, Output
from .names import CLASSICAL


@dataclass(frozen=True)
class Classical:
    """A classical reconstruction of the case's sinograms on its acquisition's geometry.

    ``fbp`` with ``options=None`` is the case's own FBP (the acquisition's filter: what
    the learned methods read); with options (a tuned filter) it is recomputed.

    Attributes:
        name: One of :data:`CLASSICAL`.
        options: The method's settings (e.g. ``{"weight": 0.03, "iterations": 200}``;
            None: the defaults, and for ``fbp`` the case's own).
        max_mib: Memory allowed to the batched torch operator (past it ASTRA runs slice
            by slice, same results).
        workers: Processes for that slice-by-slice fallback.
    """

    name: str
    options: dict[str, Any] | None = None
    max_mib: float = DEFAULT_MAX_MIB
    workers: int = 1

    def __post_init__(self) -> None:
        if self.name not in CLASSICAL:
            raise InputError(f"Method '{self.name}' is unknown: use one of "
                             f"{', '.join(CLASSICAL)}.")
        try:
            check_options(self.name, dict(self.options or {}))
        except ValueError as error:
            raise InputError(f"{str(error).rstrip('.')}: fix the settings of "
                             f"'{self.name}'.") from None

    @property
    def reads_case_fbp(self) -> bool:
        """Whether the result is the case's FBP itself (no reconstruction to run)."""
        return self.name == "fbp" and self.options is None

    def apply(self, case: Case) -> dict[str, Output]:
        """``{name: Output}`` for the case's picked slices."""
        picks = case.picks
        if self.reads_case_fbp:
            return {self.name: Output(case.fbp[picks])}
        if case.sinograms is None or case.acquisition is None:
            raise InputError(f"Method '{self.name}' reconstructs the sinogram: give the "
                             "sinograms and their acquisition, not only images.")
        images = mu_to_hu(reconstruct_stack(self.name, case.acquisition.geometry,
                                            case.sinograms[picks],
                                            device=case.acquisition.device,
                                            max_mib=self.max_mib, workers=self.workers,
                                            **(self.options or {})))
        return {self.name: Output(images)}
