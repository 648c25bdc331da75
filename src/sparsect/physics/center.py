"""Centre-of-rotation estimation: the axis offset of a measured sinogram, from the data alone.

Two methods, chosen by the scan:

* **Opposite projections** (a full 360-degree scan, parallel or fan beam). Every line is
  measured twice: in parallel beam at ``(b, u)`` and ``(b + pi, -u)``, in fan beam at
  ``(b, g)`` and ``(b + pi - 2g, -g)`` (``u``, ``g`` from the ray through the axis, in
  the conventions of :mod:`.geometry`). For a candidate axis offset every ray's
  conjugate is read from the sinogram (linear in angle, periodically, and along the
  detector) and the mean squared difference is taken over the rays whose conjugate was
  measured; the offset minimising it is found on a grid of half a bin over the
  detector's middle half, then refined by golden-section search to 0.001 bin. In fan
  beam the conjugate angle ``b + pi - 2g`` falls between views, so this needs angular
  sampling fine enough for linear interpolation across views: at least
  :data:`MIN_FAN_VIEWS` views (sparse scans should be centred on their full-dose
  acquisition or be given the offset).
* **Centre of mass** (a parallel-beam scan over less than 360 degrees). The centre of
  mass of each parallel projection is the projection of the object's centre of mass,
  so over the views it traces ``c + A cos b + B sin b`` exactly, with ``c`` the axis'
  bin; ``c`` is the least-squares fit over the views (Azevedo et al., IEEE TNS 37(4),
  1990). It needs the object inside the detector in every view (a truncated projection
  loses mass) and at least three views over an arc that does not fold onto itself.

Fan-beam scans shorter than 360 degrees are refused: give their offset.

Both return the axis offset in mm (:attr:`Geometry.axis_offset_mm`), with the detector
shift taken from the geometry as given (in fan beam the data cannot tell a detector shift
from an axis offset apart as precisely as from each other's definition; the axis offset
is what moves with a misaligned rotation stage).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sparsect.errors import InputError

from .geometry import Geometry

MIN_FAN_VIEWS = 180
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def estimate_axis_offset(sinogram: np.ndarray, geometry: Geometry, name: str = "sinogram"
                         ) -> tuple[float, str]:
    """The axis offset (mm, :attr:`Geometry.axis_offset_mm`) of ``sinogram`` (``(views,
    bins)`` line integrals, or ``(slices, views, bins)``: their mean is used) measured
    with ``geometry`` (whose own ``axis_offset_mm`` is ignored), and the method's name.

    Raises:
        InputError: for a scan no method covers (module docstring), named ``name``.
    """
    data = np.asarray(sinogram, np.float64)
    if data.ndim == 3:
        data = data.mean(axis=0)
    full = geometry.angular_range_deg >= 360.0 - 1e-6
    if geometry.beam == "parallel" and not full:
        return _centre_of_mass(data, geometry, name), "centre of mass"
    if not full:
        raise InputError(f"Cannot estimate the centre of rotation of '{name}': a fan-beam scan "
                         f"over {geometry.angular_range_deg:g} degrees has no opposite "
                         "projections; give axis_offset_mm in its geometry file.")
    if geometry.beam == "fan" and geometry.views < MIN_FAN_VIEWS:
        raise InputError(f"Cannot estimate the centre of rotation of '{name}' from "
                         f"{geometry.views} fan-beam views: opposite rays are read between "
                         f"views, which needs {MIN_FAN_VIEWS} or more; estimate it on the "
                         "full-dose scan or give axis_offset_mm in its geometry file.")
    return _opposite_projections(data, geometry), "opposite projections"


def _bin_mm(geometry: Geometry) -> float:
    """One detector bin, in mm at the axis."""
    return geometry.detector_spacing_mm / geometry.magnification


def _centre_of_mass(data: np.ndarray, geometry: Geometry, name: str) -> float:
    mass = data.sum(axis=1)
    if geometry.views < 3 or np.any(mass <= 0):
        raise InputError(f"Cannot estimate the centre of rotation of '{name}' by its centre "
                         "of mass: it needs 3 or more views with positive line integrals; "
                         "give axis_offset_mm in its geometry file.")
    centre = (data * np.arange(data.shape[1])).sum(axis=1) / mass
    beta = geometry.angles()
    design = np.stack([np.ones_like(beta), np.cos(beta), np.sin(beta)], axis=1)
    axis_bin = float(np.linalg.lstsq(design, centre, rcond=None)[0][0])
    # axis_bin = (count - 1) / 2 + (offset - shift) / spacing in parallel beam.
    return ((axis_bin - (geometry.detector_count - 1) / 2.0) * geometry.detector_spacing_mm
            + geometry.detector_shift_mm)


def conjugate_mismatch(data: np.ndarray, geometry: Geometry) -> float:
    """Mean squared difference between every ray of a 360-degree ``data`` and its
    conjugate, read from ``data`` itself, for the axis offset of ``geometry``."""
    views, bins = data.shape
    beta = geometry.angles()[:, None]
    step = 2.0 * math.pi / views
    if geometry.beam == "parallel":
        u = geometry.bin_positions_mm() - geometry.axis_offset_mm
        conj_beta = np.broadcast_to(beta + math.pi, (views, bins))
        target = -u
    else:
        gamma = geometry.bin_fan_angles()[None, :]
        conj_beta = beta + math.pi - 2.0 * gamma
        target = geometry.source_radius_mm * np.tan(-gamma[0])
    from .rebin import measured_index

    conj_bin = np.broadcast_to(measured_index(target, geometry)[None, :], conj_beta.shape)
    view = np.mod(conj_beta / step, views)
    v0 = np.floor(view).astype(int)
    wv = view - v0
    b0 = np.floor(conj_bin).astype(int)
    wb = conj_bin - b0
    inside = (b0 >= 0) & (b0 + 1 < bins)
    b0c = np.clip(b0, 0, bins - 2)
    v1 = (v0 + 1) % views
    v0 = v0 % views
    conj = ((1 - wv) * ((1 - wb) * data[v0, b0c] + wb * data[v0, b0c + 1])
            + wv * ((1 - wb) * data[v1, b0c] + wb * data[v1, b0c + 1]))
    diff = (data - conj)[inside]
    return float(np.mean(diff * diff)) if diff.size else math.inf


def _opposite_projections(data: np.ndarray, geometry: Geometry) -> float:
    unit = _bin_mm(geometry)

    def cost(offset_bins: float) -> float:
        candidate = dataclasses.replace(geometry, axis_offset_mm=offset_bins * unit)
        return conjugate_mismatch(data, candidate)

    limit = geometry.detector_count / 4.0
    if geometry.beam == "fan":  # the offset must stay under half the source distance
        limit = min(limit, 0.45 * geometry.source_isocenter_mm / unit)
    grid = np.arange(-limit, limit + 0.5, 0.5)
    costs = np.array([cost(float(x)) for x in grid])
    best = int(np.argmin(costs))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    fa, fb = cost(a), cost(b)
    while high - low > 1e-3:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - _GOLDEN * (high - low)
            fa = cost(a)
        else:
            low, a, fa = a, b, fb
            b = low + _GOLDEN * (high - low)
            fb = cost(b)
    return 0.5 * (low + high) * unit
