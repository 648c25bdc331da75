"""Gas bubbles grown into the painted faecal content of the colon: its mottled look."""

from __future__ import annotations

import numpy as np

from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.grid import _Grid, _segment_coverage
from sparsect.data.phantom.materials import _M
from sparsect.priors.organs import ORGAN_LABELS as _L

_BUBBLE_DIAMETER_MM = (1.0, 5.0)
_MAX_BUBBLES = 3000  # bounds the time spent on a slab full of colon


def _add_colon_bubbles(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    an: _Anatomy,
) -> None:
    """Small spherical gas bubbles scattered through the faeces, in place.

    Their number fills about ``an.bubble_fraction`` of the faeces' volume; bubbles only
    replace faeces, so the colon wall stays closed.
    """
    faeces = np.flatnonzero(material_ss == _M["faeces"])
    if faeces.size == 0:
        return
    low, high = _BUBBLE_DIAMETER_MM
    mean_volume = np.pi / 6 * (high**4 - low**4) / (4 * (high - low))  # E[d^3] pi / 6
    dx, dy = grid.x[1] - grid.x[0], grid.y[1] - grid.y[0]
    dz = grid.z[1] - grid.z[0] if grid.z.size > 1 else 1.0
    volume = faeces.size * dx * dy * dz / grid.scale**3  # anatomical mm^3
    count = min(int(round(an.bubble_fraction * volume / mean_volume)), _MAX_BUBBLES)
    picks = np.sort(rng.choice(faeces, size=min(count, faeces.size), replace=False))
    radii = rng.uniform(low / 2, high / 2, picks.size) * grid.scale
    ix, iy, iz = np.unravel_index(picks, labels_ss.shape)
    for i, j, k, radius in zip(ix, iy, iz, radii, strict=True):
        centre = np.array([grid.x[i], grid.y[j], grid.z[k]])
        covered = _segment_coverage(grid, centre, centre, float(radius))
        if covered is None:
            continue
        window, inside = covered
        inside &= material_ss[window] == _M["faeces"]
        labels_ss[window][inside] = _L["bowel_gas"]
        material_ss[window][inside] = _M["gas"]
