"""Small spherical lesions placed in the painted liver or lungs, each with its own HU."""

from __future__ import annotations

import numpy as np

from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.config import PhantomConfig
from sparsect.data.phantom.grid import _Grid, _segment_coverage
from sparsect.data.phantom.materials import _LESION_MATERIAL0, _M, _MAX_LESIONS
from sparsect.priors.organs import ORGAN_LABELS as _L


def _add_lesions(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    an: _Anatomy,
    config: PhantomConfig,
) -> None:
    """Spherical lesions in liver (hypo- or hyper-dense) or lung (solid nodules)."""
    count = int(rng.integers(config.lesions[0], config.lesions[1] + 1))
    for k in range(min(count, _MAX_LESIONS)):
        in_liver = rng.uniform() < 0.6
        diameter = float(rng.uniform(*config.lesion_diameter_mm)) * grid.scale
        contrast = float(rng.uniform(20.0, 60.0))
        sign = 1.0 if rng.uniform() < 0.4 else -1.0  # most liver lesions are hypodense
        hosts = (_L["liver"],) if in_liver else (_L["lung"], _L["lung_vessel"])
        candidates = np.flatnonzero(labels_ss == hosts[0])
        pick = int(rng.integers(1 << 62))
        if candidates.size == 0:
            continue
        i, j, m = np.unravel_index(candidates[pick % candidates.size], labels_ss.shape)
        centre = np.array([grid.x[i], grid.y[j], grid.z[m]])
        covered = _segment_coverage(grid, centre, centre, diameter / 2)
        if covered is None:
            continue
        window, inside = covered
        inside &= np.isin(labels_ss[window], hosts)
        hu = an.material_hu[_M["liver"]] + sign * contrast if in_liver else contrast
        an.material_hu[_LESION_MATERIAL0 + k] = hu
        labels_ss[window][inside] = _L["lesion"]
        material_ss[window][inside] = _LESION_MATERIAL0 + k
