"""Measured sinograms: raw detector counts with their flat field -> line integrals,
and reading a sinogram file with its geometry sidecar.

A scanner records photon counts ``I`` per view and bin; the reconstruction needs
line integrals ``p = log(I0 / I)`` (Beer-Lambert), with ``I0`` the flat field,
the counts without an object (per bin, or per view and bin when the tube output
drifts). A dark field (the detector's offset without X-rays) is subtracted from
both first when given.

A sinogram file ``<name>.npy`` (``(views, detectors)`` or ``(slices, views,
detectors)``) has ``<name>.json`` beside it: its geometry (as ``Geometry.to_dict``)
for line integrals, or ``{"geometry": {...}, "values": "counts", "flat_field": I0 or
"flat.npy", "dark_field": ...}`` for raw counts (:func:`read_sinogram`).

>>> counts = np.array([[100000.0, 36788.0]])
>>> np.round(line_integrals_from_counts(counts, 1e5, "scan.npy"), 3).tolist()
[[0.0, 1.0]]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sparsect.errors import InputError
from sparsect.physics.geometry import Geometry


def line_integrals_from_counts(counts: np.ndarray, flat_field: float | np.ndarray, name: str,
                               dark_field: float | np.ndarray = 0.0) -> np.ndarray:
    """``log((I0 - dark) / (I - dark))`` as float32, the shape of ``counts``.

    Args:
        counts: ``(..., views, detectors)`` raw counts.
        flat_field: ``I0``: a number, or an array that broadcasts against ``counts``
            (``(detectors,)``, ``(views, detectors)``, ...).
        name: the input's name, for messages.
        dark_field: detector offset, a number or an array like ``flat_field``.

    Raises:
        InputError: zero or negative counts (after the dark field), a flat field that
            is not positive, or one whose shape does not fit the counts.
    """
    counts = np.asarray(counts, np.float64)
    try:
        flat = np.broadcast_to(np.asarray(flat_field, np.float64) - dark_field, counts.shape)
        signal = counts - np.broadcast_to(np.asarray(dark_field, np.float64), counts.shape)
    except ValueError:
        raise InputError(
            f"The flat or dark field of sinogram '{name}' has shape "
            f"{np.shape(flat_field)} / {np.shape(dark_field)}, which does not fit the counts "
            f"{counts.shape}: give a number or an array of shape (detectors,) or "
            "(views, detectors)."
        ) from None
    if not np.isfinite(counts).all() or not np.isfinite(flat).all():
        raise InputError(f"Sinogram '{name}' or its flat field holds NaN or infinite values: "
                         "fix the measurement.")
    if (flat <= 0).any():
        raise InputError(f"The flat field of sinogram '{name}' is zero or negative in "
                         f"{int((flat <= 0).sum())} bins: give I0 > 0 (after the dark field).")
    bad = signal <= 0
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"Sinogram '{name}' has {int(bad.sum())} zero or negative counts (first at index "
            f"{where}), whose logarithm is undefined: replace photon-starved bins (by 1 "
            "count, or by interpolating their neighbours) or give line integrals."
        )
    return np.log(flat / signal).astype(np.float32)


def _sidecar(path: Path) -> tuple[Geometry, dict]:
    """``<name>.json`` beside sinogram ``path``: its geometry (``Geometry.to_dict()``), or
    ``{"geometry": {...}, "values": "counts", "flat_field": I0 | "flat.npy",
    "dark_field": ... }`` for raw counts."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise InputError(f"Sinogram '{path}' has no geometry file '{sidecar.name}' beside it: "
                         "write its Geometry.to_dict() there.")
    try:
        content = json.loads(sidecar.read_text())
        measurement = content if "geometry" in content else {"geometry": content}
        geometry = Geometry.from_dict(measurement["geometry"])
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise InputError(f"Geometry file '{sidecar}' is invalid ({error}): fix it.") from None
    values = measurement.get("values", "line_integrals")
    if values not in ("line_integrals", "counts"):
        raise InputError(f"Geometry file '{sidecar}' says values '{values}': write "
                         "\"line_integrals\" or \"counts\" (with a flat_field).")
    if values == "counts" and "flat_field" not in measurement:
        raise InputError(f"Sinogram '{path}' holds raw counts but '{sidecar.name}' gives no "
                         "flat_field: add I0 (a number, or a .npy of the counts without object).")
    return geometry, measurement


def _field(value: float | str, path: Path) -> float | np.ndarray:
    """A flat or dark field: a number, or a ``.npy`` file named relative to the sinogram."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return np.load(path.parent / str(value), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read field '{value}' of sinogram '{path}' ({error}): give a "
                         "number or a .npy file beside the sinogram.") from None


def read_sinogram(path: Path, geometry: Geometry) -> np.ndarray:
    """Line integrals ``(slices, views, detectors)`` of sinogram ``path`` (taking the log of
    raw counts with their flat field when its sidecar says so).

    Args:
        path: the sinogram ``.npy``, with its ``.json`` sidecar beside it.
        geometry: the geometry the sinogram must have been measured with.

    Raises:
        InputError: for a missing or invalid sidecar, a geometry other than ``geometry``,
            an unreadable array or field, a shape that does not fit the geometry, or
            counts whose logarithm is undefined.
    """
    measured, measurement = _sidecar(path)
    if measured != geometry:
        raise InputError(f"Sinogram '{path}' was measured with geometry {measured.to_dict()} but "
                         f"the model expects {geometry.to_dict()}: use a model trained for it.")
    try:
        sinograms = np.load(path, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read sinogram '{path}' ({error}): give a .npy array.") from None
    if sinograms.ndim == 2:
        sinograms = sinograms[None]
    expected = (geometry.views, geometry.detector_count)
    if sinograms.ndim != 3 or sinograms.shape[1:] != expected:
        raise InputError(f"Sinogram '{path}' has shape {sinograms.shape} but the geometry needs "
                         f"(slices, {expected[0]}, {expected[1]}): check views and detectors.")
    if measurement.get("values") == "counts":
        return line_integrals_from_counts(
            sinograms, _field(measurement["flat_field"], path), path.name,
            _field(measurement.get("dark_field", 0.0), path))
    return sinograms
