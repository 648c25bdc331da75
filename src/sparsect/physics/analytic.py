"""Ellipse phantoms with exact line integrals: the analytic truth the operators are checked
against, in every geometry (:mod:`.geometry`: parallel, flat or curved fan, any offset).

The rays are built here from the conventions stated in :mod:`.geometry`, independently
of the ASTRA vectors of :func:`~sparsect.physics.projector.vector_geometry`, so a sign
error in either shows up as a mismatch.

>>> from sparsect.physics import Geometry
>>> g = Geometry("parallel", views=4, image_size=32, pixel_size_mm=1.0)
>>> water = Ellipse(0.0, 0.0, 10.0, 10.0, 0.0, 0.02)
>>> round(float(ellipse_sinogram([water], g)[0, g.detector_count // 2]), 4)  # 0.5 mm off axis
0.3995
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .geometry import Geometry
from .units import MU_WATER_PER_MM


@dataclass(frozen=True)
class Ellipse:
    """An ellipse of constant attenuation added to the phantom.

    Attributes:
        x_mm, y_mm: centre (``y`` up, :mod:`.geometry`).
        a_mm, b_mm: semi-axes along its own ``x`` and ``y``.
        angle_deg: counter-clockwise rotation of its ``x`` axis.
        mu: attenuation added at its centre, 1/mm (negative to carve).
        order: edge profile: ``mu * (1 - r^2)^order`` at normalised radius ``r`` (0: a
            constant ellipse with a sharp edge; 1 or 2: a smooth edge, whose data are
            nearly band-limited).
    """

    x_mm: float
    y_mm: float
    a_mm: float
    b_mm: float
    angle_deg: float
    mu: float
    order: int = 0


def _beta_half(order: int) -> float:
    """``B(1/2, order + 1)``: the chord integral of ``(1 - z^2)^order`` over ``[-1, 1]``."""
    return math.gamma(0.5) * math.gamma(order + 1) / math.gamma(order + 1.5)


def body_phantom(fov_mm: float, order: int = 0) -> list[Ellipse]:
    """A water body (semi-axes 0.38 and 0.30 of the field of view) with lung-, bone-, fat-
    and contrast-like inserts, off centre so that no symmetry hides a sign error;
    ``order`` sets every edge's profile (:class:`Ellipse`)."""
    w = MU_WATER_PER_MM
    f = fov_mm
    return [
        Ellipse(0.02 * f, -0.01 * f, 0.38 * f, 0.30 * f, 8.0, w, order),
        Ellipse(-0.16 * f, 0.05 * f, 0.10 * f, 0.15 * f, -15.0, -0.75 * w, order),
        Ellipse(0.17 * f, 0.06 * f, 0.09 * f, 0.14 * f, 20.0, -0.75 * w, order),
        Ellipse(0.03 * f, -0.20 * f, 0.05 * f, 0.04 * f, 0.0, 1.5 * w, order),
        Ellipse(-0.30 * f, -0.12 * f, 0.035 * f, 0.025 * f, 60.0, 1.5 * w, order),
        Ellipse(0.31 * f, -0.10 * f, 0.035 * f, 0.025 * f, -55.0, 1.5 * w, order),
        Ellipse(0.05 * f, 0.10 * f, 0.03 * f, 0.03 * f, 0.0, 0.3 * w, order),
        Ellipse(-0.05 * f, -0.08 * f, 0.06 * f, 0.025 * f, 35.0, -0.1 * w, order),
    ]


def rays(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Every ray of ``geometry``: ``(points, directions)``, each ``(views, bins, 2)`` in mm
    (a point on the ray, the bin's centre, and its unit direction)."""
    beta = geometry.angles()[:, None]
    cos, sin = np.cos(beta), np.sin(beta)
    u = geometry.bin_positions_mm()[None, :]
    offset = geometry.axis_offset_mm

    def turned(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(x, y)
        x, y = np.broadcast_arrays(x * cos - y * sin, x * sin + y * cos)
        return np.stack([x, y], axis=-1)

    if geometry.beam == "parallel":
        points = turned(u - offset, np.zeros_like(u))
        direction = turned(np.zeros_like(u), np.ones_like(u))
        return points, direction
    d_so, d_sd = geometry.source_isocenter_mm, geometry.source_detector_mm
    source = turned(np.full_like(u, -offset), np.full_like(u, -d_so))
    if geometry.detector_shape == "curved":
        gamma = u / d_sd
        points = turned(-offset + d_sd * np.sin(gamma), -d_so + d_sd * np.cos(gamma))
    else:
        points = turned(-offset + u, np.full_like(u, d_sd - d_so))
    direction = points - source
    return points, direction / np.linalg.norm(direction, axis=-1, keepdims=True)


def ellipse_sinogram(ellipses: Sequence[Ellipse], geometry: Geometry) -> np.ndarray:
    """Exact line integrals ``(views, detector_count)`` of ``ellipses`` along the rays of
    ``geometry`` (each ray through its bin's centre), float64."""
    points, direction = rays(geometry)
    total = np.zeros(points.shape[:2])
    for e in ellipses:
        c, s = math.cos(math.radians(e.angle_deg)), math.sin(math.radians(e.angle_deg))
        px, py = points[..., 0] - e.x_mm, points[..., 1] - e.y_mm
        # Into the ellipse's frame, scaled to the unit circle.
        qx, qy = (c * px + s * py) / e.a_mm, (-s * px + c * py) / e.b_mm
        dx = (c * direction[..., 0] + s * direction[..., 1]) / e.a_mm
        dy = (-s * direction[..., 0] + c * direction[..., 1]) / e.b_mm
        a = dx * dx + dy * dy
        b = 2.0 * (qx * dx + qy * dy)
        disc = np.clip(b * b - 4.0 * a * (qx * qx + qy * qy - 1.0), 0.0, None)
        # 1 - t^2 = disc / (4a) at the line's distance t from the centre (unit-circle
        # frame); the chord integral of (1 - t^2 - z^2)^k is (1 - t^2)^(k + 1/2) B(1/2, k + 1),
        # and a scaled length is 1 / sqrt(a) mm.
        total += (e.mu * (disc / (4.0 * a)) ** (e.order + 0.5) * _beta_half(e.order)
                  / np.sqrt(a))
    return total


def ellipse_image(ellipses: Sequence[Ellipse], geometry: Geometry, supersample: int = 8
                  ) -> np.ndarray:
    """``mu`` of ``ellipses`` on the reconstruction grid, each pixel the mean of
    ``supersample**2`` points (float32, 1/mm)."""
    n, pixel = geometry.image_size, geometry.pixel_size_mm
    sub = (np.arange(n * supersample) - (n * supersample - 1) / 2.0) * pixel / supersample
    x, y = np.meshgrid(sub, -sub)
    fine = np.zeros_like(x)
    for e in ellipses:
        c, s = math.cos(math.radians(e.angle_deg)), math.sin(math.radians(e.angle_deg))
        px, py = x - e.x_mm, y - e.y_mm
        r2 = ((c * px + s * py) / e.a_mm) ** 2 + ((-s * px + c * py) / e.b_mm) ** 2
        fine += e.mu * np.clip(1.0 - r2, 0.0, None) ** e.order * (r2 <= 1.0)
    return fine.reshape(n, supersample, n, supersample).mean(axis=(1, 3)).astype(np.float32)
