"""Measured sinograms: raw detector counts with their flat field -> line integrals,
and reading a sinogram file with its geometry sidecar.

A scanner records photon counts ``I`` per view and bin; the reconstruction needs
line integrals ``p = log(I0 / I)`` (Beer-Lambert), with ``I0`` the flat field,
the counts without an object (per bin, or per view and bin when the tube output
drifts). A dark field (the detector's offset without X-rays) is subtracted from
both first when given.

A sinogram file ``<name>.npy`` (``(views, detectors)`` or ``(slices, views,
detectors)``) has ``<name>.json`` beside it: its geometry (as ``Geometry.to_dict``;
:data:`SIDECAR_FIELDS`) for line integrals, or ``{"geometry": {...}, "values":
"counts", "flat_field": I0 or "flat.npy", "dark_field": ...}`` for raw counts
(:func:`read_measurement`). A measured geometry must state its detector, its arc and,
in fan beam, its distances: no default stands in for a measured value.

>>> counts = np.array([[100000.0, 36788.0]])
>>> np.round(line_integrals_from_counts(counts, 1e5, "scan.npy"), 3).tolist()
[[0.0, 1.0]]
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# Every field of a geometry file: unit and meaning, the documentation of the format
# (docs/data.md, "Measured sinograms") and of every refusal.
SIDECAR_FIELDS: dict[str, str] = {
    "beam": '"parallel" or "fan"',
    "views": "projection angles in the file, equally spaced over angular_range_deg (count)",
    "angular_range_deg": "arc the views cover (degrees); the first view is at angle 0, "
                         "angles grow counter-clockwise (physics/geometry.py)",
    "detector_count": "bins per view (count); must be the file's last axis",
    "detector_spacing_mm": "bin pitch on the detector (mm; arc length on a curved one)",
    "source_isocenter_mm": "fan beam: source to rotation axis, along the central ray (mm)",
    "source_detector_mm": "fan beam: source to detector, along the central ray (mm)",
    "axis_offset_mm": 'rotation axis from the central ray, along +u, at the axis (mm); '
                      'positive: the axis\' shadow at a higher bin; "estimate": from the data',
    "detector_shift_mm": "detector centre from the central ray, along +u (mm on the "
                         "detector); positive: the axis' shadow at a lower bin",
    "detector_shape": '"flat" or, in fan beam, "curved" (cylinder centred on the source)',
    "image_size": "reconstruction grid, image_size x image_size pixels (count)",
    "pixel_size_mm": "reconstruction pixel side (mm)",
}
_REQUIRED = ("beam", "views", "angular_range_deg", "detector_count", "detector_spacing_mm",
             "image_size", "pixel_size_mm")
_REQUIRED_FAN = ("source_isocenter_mm", "source_detector_mm")
_MEASUREMENT_KEYS = ("geometry", "values", "flat_field", "dark_field")
ESTIMATE = "estimate"


@dataclass
class Measurement:
    """A measured sinogram file read with its geometry file.

    Attributes:
        sinograms: ``(slices, views, detector_count)`` float32 line integrals.
        geometry: the geometry they were measured with (an estimated axis offset filled in).
        record: what the output's sidecar records: the geometry, the values' kind, and how
            the axis offset was set (``given``, or the estimate and its method).
        counts: ``(slices, views, detector_count)`` raw counts minus the dark field and the
            flat field the same shape, when the file holds counts (for a Poisson noise
            model), else None.
    """

    sinograms: np.ndarray
    geometry: Geometry
    record: dict[str, Any]
    counts: tuple[np.ndarray, np.ndarray] | None = None


def _sidecar(path: Path) -> tuple[dict, dict]:
    """``<name>.json`` beside sinogram ``path``, checked field by field: ``(geometry fields,
    measurement)``; a bare geometry dict is read as ``{"geometry": ...}``."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise InputError(f"Sinogram '{path}' has no geometry file '{sidecar.name}' beside it: "
                         "write its geometry there (fields: docs/data.md, Measured sinograms).")
    try:
        content = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"Geometry file '{sidecar}' is not valid JSON ({error}): fix it.") \
            from None
    if not isinstance(content, dict):
        raise InputError(f"Geometry file '{sidecar}' holds a {type(content).__name__}, not a "
                         "JSON object: write its fields as an object.")
    measurement = content if "geometry" in content else {"geometry": content}
    unknown = sorted(set(measurement) - set(_MEASUREMENT_KEYS))
    if unknown:
        raise InputError(f"Geometry file '{sidecar}' has unknown field(s) {unknown}: the "
                         f"measurement's fields are {list(_MEASUREMENT_KEYS)} (and the "
                         "geometry's go inside \"geometry\").")
    fields = measurement["geometry"]
    if not isinstance(fields, dict):
        raise InputError(f"Field 'geometry' of '{sidecar}' must be an object of the geometry's "
                         "fields.")
    unknown = sorted(set(fields) - set(SIDECAR_FIELDS))
    if unknown:
        raise InputError(f"Geometry file '{sidecar}' has unknown geometry field(s) {unknown}: "
                         f"valid ones are {list(SIDECAR_FIELDS)}.")
    required = _REQUIRED + (_REQUIRED_FAN if fields.get("beam") == "fan" else ())
    for name in required:
        if fields.get(name) is None:
            raise InputError(f"Geometry file '{sidecar}' gives no '{name}': add it "
                             f"({SIDECAR_FIELDS[name]}).")
    values = measurement.get("values", "line_integrals")
    if values not in ("line_integrals", "counts"):
        raise InputError(f"Field 'values' of '{sidecar}' is {values!r}: write "
                         "\"line_integrals\" or \"counts\" (with a flat_field).")
    if values == "counts" and "flat_field" not in measurement:
        raise InputError(f"Sinogram '{path}' holds raw counts but '{sidecar.name}' gives no "
                         "'flat_field': add I0 (a number, or a .npy of the counts without object).")
    if values == "line_integrals":
        for name in ("flat_field", "dark_field"):
            if name in measurement:
                raise InputError(f"Field '{name}' of '{sidecar}' contradicts values "
                                 "\"line_integrals\": a flat or dark field belongs to raw "
                                 "counts; drop it or set values to \"counts\".")
    return fields, measurement


def _geometry(fields: dict, sidecar: Path) -> Geometry:
    try:
        return Geometry.from_dict(fields)
    except (ValueError, TypeError) as error:
        named = re.search(r"Geometry\.(\w+)", str(error))
        field = f"'{named.group(1)}'" if named else "a field"
        raise InputError(f"Geometry file '{sidecar}' has an invalid {field} "
                         f"({str(error).rstrip('.')}): fix it.") from None


def _field(value: float | str, path: Path) -> float | np.ndarray:
    """A flat or dark field: a number, or a ``.npy`` file named relative to the sinogram."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return np.load(path.parent / str(value), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read field '{value}' of sinogram '{path}' ({error}): give a "
                         "number or a .npy file beside the sinogram.") from None


def read_measurement(path: Path) -> Measurement:
    """Sinogram ``path`` (``.npy``, ``(views, bins)`` or ``(slices, views, bins)``) with its
    geometry file ``<name>.json`` (fields: :data:`SIDECAR_FIELDS`): line integrals (the log
    taken of raw counts with their flat and dark fields) on their own geometry, the axis
    offset estimated from the data where the file says ``"estimate"``
    (:func:`~sparsect.physics.center.estimate_axis_offset`).

    Raises:
        InputError: for a missing, unknown, invalid or contradictory field (named), an
            unreadable array or field, a shape that contradicts the geometry, counts whose
            logarithm is undefined, or an offset that cannot be estimated.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    fields, measurement = _sidecar(path)
    fields = dict(fields)
    estimate = fields.get("axis_offset_mm") == ESTIMATE
    if estimate:
        fields["axis_offset_mm"] = 0.0
    geometry = _geometry(fields, sidecar)
    try:
        data = np.load(path, allow_pickle=False).astype(np.float64)
    except (ValueError, OSError) as error:
        raise InputError(f"Cannot read sinogram '{path}' ({error}): give a .npy array.") from None
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"Sinogram '{path}' has {data.ndim} dimensions: give (views, bins) or "
                         "(slices, views, bins).")
    for axis, name in ((1, "views"), (2, "detector_count")):
        if data.shape[axis] != getattr(geometry, name):
            raise InputError(f"Sinogram '{path}' has {data.shape[axis]} "
                             f"{'views' if axis == 1 else 'bins'} (shape {data.shape}) but "
                             f"'{sidecar.name}' gives {name} {getattr(geometry, name)}: fix "
                             "the one that is wrong.")
    counts = None
    if measurement.get("values") == "counts":
        flat = _field(measurement["flat_field"], path)
        dark = _field(measurement.get("dark_field", 0.0), path)
        sinograms = line_integrals_from_counts(data, flat, path.name, dark)
        counts = (data - np.broadcast_to(np.asarray(dark, np.float64), data.shape),
                  np.broadcast_to(np.asarray(flat, np.float64) - dark, data.shape))
    else:
        if not np.isfinite(data).all():
            raise InputError(f"Sinogram '{path}' holds NaN or infinite line integrals: fix "
                             "the measurement.")
        sinograms = data.astype(np.float32)
    record: dict[str, Any] = {"values": measurement.get("values", "line_integrals")}
    if estimate:
        from .center import estimate_axis_offset

        offset, method = estimate_axis_offset(sinograms, geometry, path.name)
        geometry = dataclasses.replace(geometry, axis_offset_mm=float(offset))
        record["axis_offset"] = {"estimated": True, "method": method,
                                 "axis_offset_mm": float(offset),
                                 "axis_bin": float(geometry.axis_bin)}
    else:
        record["axis_offset"] = {"estimated": False,
                                 "axis_offset_mm": float(geometry.axis_offset_mm)}
    record["geometry"] = geometry.to_dict()
    return Measurement(sinograms, geometry, record, counts)
