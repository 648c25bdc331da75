"""Hounsfield units <-> linear attenuation coefficients (the only place they are converted).

Images on disk are in HU; all physics (projection, noise, reconstruction) works in
linear attenuation ``mu`` in 1/mm, and sinograms hold dimensionless line integrals
``sum(mu * path length in mm)``.
"""

from __future__ import annotations

import numpy as np

# Water at the ~70 keV effective energy of a 120 kVp spectrum: mass attenuation
# 0.1929 cm^2/g (NIST XCOM, 70 keV) times 1.0 g/cm^3 = 0.1929 1/cm = 0.0193 1/mm.
MU_WATER_PER_MM = 0.0193

# Intensity unit of the networks: they see ``hu / HU_SCALE``, so water is 0 and air -1.
HU_SCALE = 1000.0


def hu_to_mu(hu: np.ndarray | float, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Converts Hounsfield units to linear attenuation, ``mu = mu_water * (1 + hu / 1000)``.

    Values below -1000 HU give negative ``mu``; they are kept (the conversion is
    exactly invertible) and only the simulation clips them to 0.

    Args:
        hu: Image of any shape in HU.
        mu_water: Attenuation of water in 1/mm.

    Returns:
        ``mu`` in 1/mm, same shape, float32 for float32 input else float64.

    >>> float(hu_to_mu(0.0)) == MU_WATER_PER_MM
    True
    """
    hu = np.asarray(hu)
    dtype = np.float32 if hu.dtype == np.float32 else np.float64
    return (mu_water * (1.0 + hu.astype(dtype) / 1000.0)).astype(dtype)


def mu_to_hu(mu: np.ndarray | float, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Converts linear attenuation in 1/mm to Hounsfield units (inverse of :func:`hu_to_mu`).

    >>> float(mu_to_hu(0.0))
    -1000.0
    """
    mu = np.asarray(mu)
    dtype = np.float32 if mu.dtype == np.float32 else np.float64
    return (1000.0 * (mu.astype(dtype) / mu_water - 1.0)).astype(dtype)
