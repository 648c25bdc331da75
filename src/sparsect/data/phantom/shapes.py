"""Analytic shapes on the in-plane grid, and 3-vector arithmetic in a fixed order.

Everything goes through :mod:`sparsect.data.fpmath` or writes its sums out, so
the results do not depend on the SIMD kernels numpy picks.
"""

from __future__ import annotations

import math

import numpy as np

from sparsect.data import fpmath


def _modulation(theta: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """``1 + sum_k a_k cos(k theta + phase_k)`` for k = 2, 3, ...: an organic outline."""
    out = np.ones_like(theta)
    for k, (amplitude, phase) in enumerate(coeffs, start=2):
        out += amplitude * fpmath.cos(k * theta + phase)
    return out


def _ellipse_rho(
    u: np.ndarray,
    v: np.ndarray,
    centre: tuple[float, float],
    semi_axes: tuple[float, float],
    angle: float = 0.0,
    coeffs: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised elliptical radius (< 1 inside) of a rotated, optionally bumpy ellipse.

    Because the radius is linear in size, an ellipsoid's cross-section at height
    ``z`` is simply ``rho < sqrt(1 - ((z - zc) / c)**2)``.
    """
    du, dv = u - centre[0], v - centre[1]
    cos, sin = _cos_sin(angle)
    p = (du * cos + dv * sin) / semi_axes[0]
    q = (-du * sin + dv * cos) / semi_axes[1]
    rho = fpmath.hypot(p, q)
    if coeffs is not None:
        rho /= _modulation(fpmath.arctan2(q, p), coeffs)
    return rho.astype(np.float32)


def _ellipsoid_scale(z: float, z_centre: float, z_semi: float) -> float:
    """In-plane scale of an ellipsoid's cross-section at height ``z`` (0 outside)."""
    t = (z - z_centre) / z_semi
    return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


def _cos_sin(angle: float) -> tuple[float, float]:
    return float(fpmath.cos(angle)), float(fpmath.sin(angle))


def _dot3(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of 3-vectors in a fixed order (``@`` goes through BLAS kernels)."""
    return float(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])


def _norm3(a: np.ndarray) -> float:
    return math.sqrt(_dot3(a, a))


def _rows_dot3(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Row-wise dot products of ``(N, 3)`` rows with ``(N, 3)`` rows or a 3-vector."""
    vector = np.broadcast_to(vector, rows.shape)
    return rows[:, 0] * vector[:, 0] + rows[:, 1] * vector[:, 1] + rows[:, 2] * vector[:, 2]


def _superellipse_radius(
    theta: np.ndarray, a: float, b_ant: float, b_post: float, n: float
) -> np.ndarray:
    """Radius at angle ``theta`` of a superellipse of exponent ``n``, flatter at the back."""
    cos, sin = np.abs(fpmath.cos(theta)), fpmath.sin(theta)
    b = np.where(sin >= 0, b_ant, b_post)
    pow_ = fpmath.pow_positive
    return pow_(pow_(cos / a, n) + pow_(np.abs(sin) / b, n), -1.0 / n)
