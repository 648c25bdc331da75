"""Photon-counting noise on line integrals (monochromatic Beer-Lambert model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

# Counts are floored here before the log: a bin that detects no photon (photon
# starvation behind metal or at very low dose) would otherwise give an infinite
# line integral. 0.1 photon, as in LoDoPaB-CT (Leuschner et al., Sci. Data 8, 2021),
# caps the line integral at log(10 * i0) instead of -log(1 / i0) and so biases
# starved bins less than a floor of 1.
COUNT_FLOOR = 0.1


@dataclass(frozen=True)
class NoiseModel:
    """Poisson photon noise plus optional Gaussian electronic noise.

    Attributes:
        i0: Incident (unattenuated) photons per detector bin per view; ``math.inf``
            gives noiseless data.
        electronic_std: Standard deviation of additive Gaussian detector noise, in
            photon counts.

    The variance of the noisy line integral is about ``exp(p) / i0`` for a true
    line integral ``p`` (delta method), so a 10x lower ``i0`` means ~3.2x more
    noise.

    >>> rng = np.random.default_rng(0)
    >>> noisy = NoiseModel(i0=1e5).apply(np.full((2, 3), 2.0, np.float32), rng)
    >>> noisy.shape, noisy.dtype
    ((2, 3), dtype('float32'))
    """

    i0: float = 1e5
    electronic_std: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.i0, Real) and self.i0 > 0):  # NaN fails '> 0'
            raise ValueError(f"NoiseModel.i0 must be a positive number of photons or inf, "
                             f"got {self.i0!r}.")
        if not (isinstance(self.electronic_std, Real)
                and math.isfinite(self.electronic_std) and self.electronic_std >= 0):
            raise ValueError(f"NoiseModel.electronic_std must be a finite number >= 0, "
                             f"got {self.electronic_std!r}.")

    @property
    def noiseless(self) -> bool:
        """True when ``i0`` is infinite."""
        return math.isinf(self.i0)

    def apply(self, sinogram: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draws noisy line integrals ``-log(counts / i0)``.

        Args:
            sinogram: Line integrals of any shape (dimensionless).
            rng: Source of randomness (seed it for reproducible data).

        Returns:
            Array of the same shape: float32, or an unchanged copy of the input
            when ``i0`` is infinite.
        """
        sinogram = np.asarray(sinogram)
        if self.noiseless:
            return sinogram.copy()
        expected = self.i0 * np.exp(-sinogram.astype(np.float64))
        counts = rng.poisson(expected).astype(np.float64)
        if self.electronic_std > 0:
            counts += rng.normal(0.0, self.electronic_std, size=counts.shape)
        counts = np.maximum(counts, COUNT_FLOOR)
        return (-np.log(counts / self.i0)).astype(np.float32)
