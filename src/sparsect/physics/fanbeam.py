"""Fan-beam FBP on the CPU, which ASTRA's CPU ``FBP`` does not support.

Weighted filtered backprojection for equally spaced collinear detectors (Kak &
Slaney, *Principles of Computerized Tomographic Imaging*, sec. 3.4.2): the data
are rescaled to a virtual detector through the isocentre, cosine- and
redundancy-weighted, ramp-filtered, and backprojected pixel by pixel with the
distance weight ``1 / U^2``.

A scanner that is not aligned (an axis offset, a shifted or a curved detector;
:mod:`.geometry`) is first rebinned, view by view, to the aligned scanner it is
equivalent to (:mod:`.rebin`).

The coordinates follow ASTRA's ``fanflat`` convention (``astra.geom_2vec``): at
angle ``b`` the source sits at ``D_so * (sin b, -cos b)``, the detector's ``u``
axis points along ``(cos b, sin b)``, the image's column index grows with ``x``
and its row index decreases with ``y``.
"""

from __future__ import annotations

import math

import numpy as np

from .filters import filter_sinogram
from .geometry import Geometry


def redundancy_weights(geometry: Geometry, gamma: np.ndarray) -> np.ndarray:
    """Weights ``(views, bins)`` such that every line is counted once in total.

    Full scans weight both measurements of a line by 1/2. Short scans (range at
    least 180 degrees plus the fan angle) use Parker weights (Parker, Med. Phys.
    9(2), 1982) generalised to any overscan ``delta = (range - 180) / 2`` (Silver,
    Med. Phys. 27(4), 2000). Shorter, limited-angle ranges cannot be completed and
    get the uniform weight ``pi / range``, which keeps the mean grey level.

    Args:
        geometry: A fan-beam geometry.
        gamma: ``(bins,)`` fan angle of each bin in radians, positive along ``u``.
    """
    arc = math.radians(geometry.angular_range_deg)
    beta = geometry.angles()[:, None]
    half_fan = float(np.max(np.abs(gamma)))
    if arc >= 2.0 * math.pi - 1e-9 or arc < math.pi + 2.0 * half_fan:
        return np.full((geometry.views, gamma.size), math.pi / arc)
    delta = (arc - math.pi) / 2.0
    # In ASTRA's convention the line (b, g) is measured again at (b + pi - 2g, -g);
    # Parker's formula is written for (b + pi + 2g, -g), hence the sign flip.
    g = -gamma[None, :]
    weights = np.ones((geometry.views, gamma.size))
    rise = beta < 2.0 * (delta - g)
    fall = beta > math.pi - 2.0 * g
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.sin(np.pi / 4.0 * beta / (delta - g)) ** 2
        down = np.sin(np.pi / 4.0 * (math.pi + 2.0 * delta - beta) / (delta + g)) ** 2
    weights = np.where(rise, up, weights)
    weights = np.where(fall, down, weights)
    return np.clip(np.nan_to_num(weights), 0.0, 1.0)


def fan_fbp(sinogram: np.ndarray, geometry: Geometry, filter_name: str) -> np.ndarray:
    """Reconstructs ``mu`` (1/mm) from fan-beam line integrals.

    Args:
        sinogram: ``(views, detector_count)`` line integrals (dimensionless).
        geometry: The fan-beam geometry the data were acquired with (aligned or not).
        filter_name: One of :data:`sparsect.physics.filters.FILTERS`.

    Returns:
        ``(image_size, image_size)`` float32 image in 1/mm.
    """
    if geometry.is_aligned:
        bins = geometry.detector_count
        # Virtual detector through the isocentre: coordinates shrink by the magnification.
        spacing = geometry.detector_spacing_mm / geometry.magnification
        s = (np.arange(bins) - (bins - 1) / 2.0) * spacing
        return _weighted_fbp(sinogram, s, geometry.source_isocenter_mm, geometry.angles(),
                             geometry, filter_name)
    from .rebin import to_aligned

    rebinned, aligned = to_aligned(sinogram, geometry)
    bins = aligned.detector_count
    s = (np.arange(bins) - (bins - 1) / 2.0) * (aligned.detector_spacing_mm
                                                 / aligned.magnification)
    return _weighted_fbp(rebinned, s, aligned.source_isocenter_mm,
                         geometry.angles() - geometry.axis_fan_angle, geometry, filter_name)


def _weighted_fbp(sinogram: np.ndarray, s: np.ndarray, d_so: float, angles: np.ndarray,
                  geometry: Geometry, filter_name: str) -> np.ndarray:
    """Fan FBP of ``sinogram`` on the virtual detector ``s`` (equally spaced, mm at the
    axis) for a source at ``d_so`` from the axis at ``angles``."""
    bins = s.size
    spacing = float(s[1] - s[0]) if bins > 1 else 1.0
    gamma = np.arctan(s / d_so)
    weighted = (np.asarray(sinogram, np.float64) * (d_so / np.sqrt(d_so**2 + s**2))
                * redundancy_weights(geometry, gamma))
    filtered = filter_sinogram(weighted, filter_name, spacing)

    n = geometry.image_size
    coords = (np.arange(n) - (n - 1) / 2.0) * geometry.pixel_size_mm
    x = np.broadcast_to(coords[None, :], (n, n)).ravel()
    y = np.broadcast_to(-coords[:, None], (n, n)).ravel()
    grid = np.arange(bins, dtype=np.float64)
    step = math.radians(geometry.angular_range_deg) / geometry.views
    first = -float(s[0]) / spacing  # the index of s = 0
    image = np.zeros(n * n)
    for row, beta in zip(filtered, angles, strict=True):
        sin_b, cos_b = math.sin(beta), math.cos(beta)
        depth = d_so - x * sin_b + y * cos_b  # source-to-pixel distance along the central ray
        index = (x * cos_b + y * sin_b) * (d_so / spacing) / depth + first
        image += np.interp(index, grid, row, left=0.0, right=0.0) * (d_so / depth) ** 2
    return (image * step).reshape(n, n).astype(np.float32)
