"""Rebinning a scan to its aligned equivalent, view by view, with band-limited interpolation.

A scanner that is not aligned (:mod:`.geometry`: an axis offset, a shifted or a curved
detector) measures, in each view, rays from the same source point (fan beam) or in the
same direction (parallel beam) as an aligned scanner does; only where they cross the
detector differs. So each view can be resampled along the detector alone, and nothing
is interpolated across views:

* parallel beam: onto a centred detector of the same pitch (the ray through the axis
  falls midway between its two central bins or on its central bin, as ASTRA's
  ``parallel`` geometry expects);
* fan beam: onto a virtual flat detector through the axis, perpendicular to the ray
  through it, with the pitch of the aligned scanner's virtual detector
  (``detector_spacing_mm / magnification``), the source circling the axis at
  ``source_radius_mm`` and every view's angle turned by ``-axis_fan_angle``.

The interpolation: each view is upsampled 4 times by zero-padded FFT (the band-limited,
sinc interpolation of its samples), and the upsampled row is read at the new positions by
a not-a-knot cubic spline; zero outside the measured bins. For nearly band-limited data
(smooth-edged ellipses) the rebinned sinogram is within 0.03 % of the one measured on
the new detector and its FBP within 0.9 HU body RMSE; sharp edges sampled without blur
are aliased and differ by 1 % and 45 to 50 HU, as in any resampling (docs/data.md, "Measured
sinograms").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .geometry import Geometry

UPSAMPLE = 4


def resample_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``rows`` ``(views, bins)``, sampled at bins ``0..bins-1``, read at fractional bin
    ``index`` (``(K,)`` for every view): ``(views, K)`` float64, zero outside ``[0, bins-1]``.
    """
    from scipy.interpolate import CubicSpline

    rows = np.asarray(rows, np.float64)
    bins = rows.shape[-1]
    padded = max(64, 1 << math.ceil(math.log2(2 * bins)))
    spectrum = np.fft.rfft(rows, n=padded, axis=-1)
    if padded % 2 == 0:  # split the Nyquist term between +- f so the upsampled row is real
        spectrum[..., -1] *= 0.5
    fine = np.fft.irfft(spectrum, n=padded * UPSAMPLE, axis=-1) * UPSAMPLE
    fine = fine[..., : (bins - 1) * UPSAMPLE + 1]
    grid = np.arange(fine.shape[-1]) / UPSAMPLE
    inside = (index >= -1e-9) & (index <= bins - 1 + 1e-9)
    out = CubicSpline(grid, fine, axis=-1)(np.clip(index, 0.0, bins - 1))
    out[..., ~inside] = 0.0
    return out


def aligned_equivalent(geometry: Geometry) -> Geometry:
    """The aligned scanner whose detector :func:`to_aligned` rebins ``geometry`` onto.

    Parallel beam: same pitch, centred on the axis, enough bins for every measured one.
    Fan beam: flat, the source at ``source_radius_mm``, the detector pitch such that its
    virtual pitch is the measured one's, the same angles (the view turn is applied by the
    caller, :func:`~sparsect.physics.fanbeam.fan_fbp`)."""
    if geometry.is_aligned:
        return geometry
    positions = _measured_positions(geometry)
    if geometry.beam == "parallel":
        pitch = geometry.detector_spacing_mm
        source = {}
    else:
        radius = geometry.source_radius_mm
        pitch = geometry.detector_spacing_mm / geometry.magnification
        source = {"source_isocenter_mm": radius,
                  "source_detector_mm": radius + geometry.source_detector_mm
                  - geometry.source_isocenter_mm}
    half = math.ceil(float(np.max(np.abs(positions))) / pitch - 1e-9)
    count = 2 * half + 1 + (2 * half + 1 - geometry.image_size) % 2
    spacing = pitch if geometry.beam == "parallel" else \
        pitch * source["source_detector_mm"] / source["source_isocenter_mm"]
    return dataclasses.replace(geometry, detector_count=count, detector_spacing_mm=spacing,
                               axis_offset_mm=0.0, detector_shift_mm=0.0,
                               detector_shape="flat", **source)


def _measured_positions(geometry: Geometry) -> np.ndarray:
    """Where each measured bin's ray crosses the aligned detector (mm, from the axis's
    ray; at the axis for fan beam), ``(detector_count,)``, increasing."""
    if geometry.beam == "parallel":
        return geometry.bin_positions_mm() - geometry.axis_offset_mm
    return geometry.source_radius_mm * np.tan(geometry.bin_fan_angles())


def to_aligned(sinogram: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """``(views, detector_count)`` line integrals of ``geometry`` on the detector of
    :func:`aligned_equivalent` (``(views, its detector_count)``, float32), and that
    geometry. An aligned ``geometry`` is returned as is."""
    if geometry.is_aligned:
        return np.asarray(sinogram, np.float32), geometry
    aligned = aligned_equivalent(geometry)
    pitch = (aligned.detector_spacing_mm if geometry.beam == "parallel"
             else aligned.detector_spacing_mm / aligned.magnification)
    target = (np.arange(aligned.detector_count) - (aligned.detector_count - 1) / 2.0) * pitch
    return resample_rows(sinogram, measured_index(target, geometry)).astype(np.float32), aligned


def measured_index(target: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The fractional bin of ``geometry`` whose ray crosses the aligned detector at
    ``target`` (mm from the ray through the axis; at the axis in fan beam), by inverting
    the bins' positions (parallel) or fan angles (fan) exactly."""
    if geometry.beam == "parallel":
        u = np.asarray(target) + geometry.axis_offset_mm
    else:
        central = np.arctan(np.asarray(target) / geometry.source_radius_mm) \
            + geometry.axis_fan_angle
        u = geometry.detector_coordinate(central)
    return (u - geometry.detector_shift_mm) / geometry.detector_spacing_mm \
        + (geometry.detector_count - 1) / 2.0


def rebin_reason(measured: Geometry, target: Geometry) -> str | None:
    """Why the data of ``measured`` cannot be rebinned exactly onto ``target``'s detector
    (None when they can): each view's rays must be the same family, i.e. the same beam,
    views and arc, and in fan beam the same source positions (distance and axis offset);
    the detectors (bins, pitch, shift, shape) and, in parallel beam, the axis offset may
    differ."""
    for name in ("beam", "views", "angular_range_deg"):
        if getattr(measured, name) != getattr(target, name):
            return (f"its {name} ({getattr(measured, name)}) is not the model's "
                    f"({getattr(target, name)})")
    if measured.beam == "fan":
        for name in ("source_isocenter_mm", "axis_offset_mm"):
            if not math.isclose(getattr(measured, name), getattr(target, name),
                                rel_tol=1e-9, abs_tol=1e-9):
                return (f"its fan-beam {name} ({getattr(measured, name)}) is not the model's "
                        f"({getattr(target, name)}), so its source is elsewhere and its rays "
                        "are not the model's")
    return None


def rebin_to(sinograms: np.ndarray, measured: Geometry, target: Geometry) -> np.ndarray:
    """``(..., views, bins)`` line integrals of ``measured`` resampled onto ``target``'s
    detector, view by view (module docstring), float32.

    Raises:
        ValueError: when the rays differ (:func:`rebin_reason`).
    """
    reason = rebin_reason(measured, target)
    if reason is not None:
        raise ValueError(reason)
    if measured.beam == "parallel":
        wanted = target.bin_positions_mm() - target.axis_offset_mm
    else:
        wanted = measured.source_radius_mm * np.tan(target.bin_fan_angles())
    index = measured_index(wanted, measured)
    data = np.asarray(sinograms)
    flat = data.reshape(-1, data.shape[-1])
    return resample_rows(flat, index).reshape(*data.shape[:-1], index.size).astype(np.float32)
