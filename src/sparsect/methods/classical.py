"""Classical methods: FBP, SIRT, CGLS, TV (and SART) with their settings."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from sparsect.errors import InputError
from sparsect.physics import mu_to_hu
from sparsect.physics.reconstruct import (
    DEFAULT_MAX_MIB,
    check_options,
    method_defaults,
    reconstruct_stack,
)

from .case import Case, Output
from .names import CLASSICAL

DISCREPANCY = "discrepancy"
"""The TV ``weight`` that chooses each slice's weight by the discrepancy principle."""

DISCREPANCY_WEIGHTS: tuple[float, ...] = tuple(
    float(f"{w:.3g}") for w in np.geomspace(1e-4, 0.5, 13))
"""The TV weights ``weight: discrepancy`` chooses from: geometric from 1e-4 to 0.5, a factor
of about 2 apart (13 TV runs per stack). A measurement on the real scans found the choice
from the tuning grid (0.00125 to 0.08) capped at its largest weight, 0.08, so this grid
goes on well past it (and down to 1e-4 for quiet scans)."""


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

    ``tv`` with ``weight: discrepancy`` chooses each slice's weight among
    :data:`DISCREPANCY_WEIGHTS` by the discrepancy principle: the largest whose residual
    ``||A x - y|| / ||y||`` is at most the slice's floor, estimated from its own sinogram
    (:func:`sparsect.physics.noisefloor.residual_floor`; no reference). Its output records
    the weights chosen and the floors, per picked slice (``extra["weights"]``,
    ``extra["floors"]``).
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
        options = self.options or {}
        weight = options.get("weight")
        if self.name == "tv" and "weight" in options and weight != DISCREPANCY \
                and not isinstance(weight, Real):
            raise InputError(f"Option 'weight' of 'tv' is {weight!r}: use a number (e.g. "
                             f"weight=0.03) or weight={DISCREPANCY} (each slice's weight "
                             "chosen by the discrepancy principle).")

    @property
    def by_discrepancy(self) -> bool:
        """Whether each slice's TV weight is chosen by the discrepancy principle."""
        return self.name == "tv" and (self.options or {}).get("weight") == DISCREPANCY

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
        if self.by_discrepancy:
            return {self.name: self._by_discrepancy(case)}
        images = mu_to_hu(reconstruct_stack(self.name, case.acquisition.geometry,
                                            case.sinograms[picks],
                                            device=case.acquisition.device,
                                            max_mib=self.max_mib, workers=self.workers,
                                            **(self.options or {})))
        return {self.name: Output(images)}

    def _by_discrepancy(self, case: Case) -> Output:
        """TV with each picked slice's weight chosen against its own residual floor (the
        noise from its sinogram, the acquisition's ``I0`` where a stack has too few air
        bins, the mismatch of its simulation grid, as ``dc_floors`` estimates it)."""
        from sparsect.physics.noisefloor import residual_floor, tv_by_discrepancy

        acquisition = case.acquisition
        assert acquisition is not None and case.sinograms is not None
        if acquisition.sinogram != "attenuation":
            raise InputError(f"weight={DISCREPANCY} estimates the floor from line integrals, "
                             f"and these sinograms hold '{acquisition.sinogram}' values: "
                             "give TV a numeric weight instead.")
        options = dict(self.options or {})
        options.pop("weight")
        iterations = int(options.pop("iterations", method_defaults("tv")["iterations"]))
        sinograms = np.asarray(case.sinograms[case.picks], np.float32)
        floor = residual_floor(sinograms, acquisition.geometry, upsample=acquisition.upsample,
                               fallback_i0=acquisition.noise.i0,
                               device=acquisition.device).floor
        images, weights = tv_by_discrepancy(sinograms, acquisition.geometry, floor,
                                            DISCREPANCY_WEIGHTS, iterations,
                                            acquisition.device, max_mib=self.max_mib,
                                            workers=self.workers, **options)
        return Output(mu_to_hu(images), {"weights": [float(w) for w in weights],
                                         "floors": [float(f) for f in floor]})
