"""CT physics: geometry, ASTRA projector, noise, classical reconstruction, simulation,
and measured counts -> line integrals.

Units: images are ``mu`` in 1/mm inside this package (HU only at its edges, via
:func:`hu_to_mu` / :func:`mu_to_hu`); sinograms are dimensionless line integrals.
"""

from .geometry import Geometry
from .measured import line_integrals_from_counts
from .noise import NoiseModel
from .projector import Projector
from .reconstruct import reconstruct
from .simulate import Simulator, simulate_slice
from .units import HU_SCALE, MU_WATER_PER_MM, hu_to_mu, mu_to_hu

__all__ = [
    "HU_SCALE",
    "MU_WATER_PER_MM",
    "Geometry",
    "NoiseModel",
    "Projector",
    "Simulator",
    "hu_to_mu",
    "line_integrals_from_counts",
    "mu_to_hu",
    "reconstruct",
    "simulate_slice",
]
