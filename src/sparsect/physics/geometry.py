"""Acquisition geometry of a 2D CT scan: beam, angles, detector, reconstruction grid.

All lengths are in mm. The image grid is centred on the rotation axis
(isocentre). Defaults left as ``None`` are resolved once, in ``__post_init__``, so a
:class:`Geometry` always describes one concrete detector (and
:meth:`Geometry.upsampled` keeps it).

Conventions (those of ASTRA's ``parallel`` and ``fanflat`` geometries, kept for every
option below). The image's ``x`` axis points along its columns (the column index
grows with ``x``), its ``y`` axis up (the row index decreases as ``y`` grows). The
first view is at angle 0; angles grow counter-clockwise in that frame, by
``angular_range_deg / views`` per view. At angle ``b`` the detector's ``u`` axis (the
direction of increasing bin index) points along ``(cos b, sin b)``; in fan beam the
source sits at ``-source_isocenter_mm`` along ``(-sin b, cos b)``, i.e. at
``(0, -source_isocenter_mm)`` for the first view, and parallel rays run along
``(sin b, -cos b)``.

Measured data rarely have the ideal alignment; three fields describe how they differ
(all 0 / ``"flat"`` by default, the ideal scanner):

* ``axis_offset_mm``: where the rotation axis lies, along ``+u``, from the central ray
  (the ray through the source perpendicular to the detector; in parallel beam the ray
  through the detector's centre), measured at the axis, i.e. in mm at the isocentre.
  A positive offset puts the axis' shadow at a higher bin. In fan beam the source
  then circles the axis at ``hypot(source_isocenter_mm, axis_offset_mm)``, and the
  fan is no longer symmetric about the axis.
* ``detector_shift_mm``: where the detector's centre (midway between its first and last
  bin) lies, along ``+u``, from the central ray, in mm on the detector (arc length on a
  curved one). A positive shift puts the axis' shadow at a lower bin. In parallel
  beam the two are the same thing with opposite signs; in fan beam a detector shift
  moves only the detector, while an axis offset also moves the source relative to the
  axis.
* ``detector_shape``: ``"flat"`` or, in fan beam, ``"curved"``: a cylindrical detector
  centred on the source (radius ``source_detector_mm``), whose ``detector_spacing_mm`` is
  the arc length of one bin, as on clinical third-generation scanners.

:attr:`Geometry.axis_bin` gives the resulting centre of rotation in bins (the
fractional bin that the ray through the axis meets).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

BEAMS = ("parallel", "fan")
DETECTOR_SHAPES = ("flat", "curved")

# Beyond this many views per detector bin the extra angles add no information;
# such a value is almost always a typo (e.g. views and detector_count swapped).
_MAX_VIEWS_PER_BIN = 4


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def _finite_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_real(value: Any) -> bool:
    return (isinstance(value, Real) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


_ALIGNED = {"axis_offset_mm": 0.0, "detector_shift_mm": 0.0, "detector_shape": "flat"}


@dataclass(frozen=True)
class Geometry:
    """2D parallel- or fan-beam geometry with its reconstruction grid.

    Attributes:
        beam: ``"parallel"`` or ``"fan"``.
        views: Number of projection angles, equally spaced over the angular range.
        image_size: The reconstruction grid is ``image_size x image_size`` pixels.
        pixel_size_mm: Pixel side in mm; the field of view is ``image_size * pixel_size_mm``.
        detector_count: Detector bins. ``None``: enough bins to cover the shadow of
            the circle circumscribing the image (for fan beam, including the
            magnification of its off-centre points, and any offset below), plus a
            one-bin margin on each side.
        detector_spacing_mm: Bin pitch in mm on the detector (arc length on a curved
            one). ``None``: one pixel (parallel) or one pixel magnified to the
            detector (fan), i.e. one pixel at the isocentre in both cases.
        angular_range_deg: Range covered by the views. ``None``: 180 (parallel) or
            360 (fan), a complete data set; smaller values give limited-angle data.
        source_isocenter_mm: Fan beam only: source to rotation axis distance.
        source_detector_mm: Fan beam only: source to detector distance (along the
            central ray).
        axis_offset_mm: Rotation axis offset from the central ray, mm at the axis
            (module docstring).
        detector_shift_mm: Detector centre offset from the central ray, mm on the
            detector (module docstring).
        detector_shape: ``"flat"``, or ``"curved"`` (fan beam only).

    The fan-beam defaults, 595 mm and 1085.6 mm, are those of the Siemens SOMATOM
    Definition AS+/Flash scanners used for the AAPM Low Dose CT Grand Challenge
    projection data (McCollough et al., Med. Phys. 44(10), 2017; Moen et al.,
    Med. Phys. 48(2), 2021). Those scanners have a curved detector; the default
    here is flat, and ``detector_shape="curved"`` describes theirs.

    >>> g = Geometry("parallel", views=60, image_size=128, pixel_size_mm=1.0)
    >>> g.detector_count, g.detector_spacing_mm, g.angular_range_deg
    (184, 1.0, 180.0)
    >>> g.upsampled(2).image_size, g.upsampled(2).detector_count
    (256, 184)
    """

    beam: str
    views: int
    image_size: int
    pixel_size_mm: float
    detector_count: int | None = None
    detector_spacing_mm: float | None = None
    angular_range_deg: float | None = None
    source_isocenter_mm: float = 595.0
    source_detector_mm: float = 1085.6
    axis_offset_mm: float = 0.0
    detector_shift_mm: float = 0.0
    detector_shape: str = "flat"

    def __post_init__(self) -> None:
        _require(self.beam in BEAMS,
                 f"Geometry.beam must be one of {BEAMS}, got {self.beam!r}.")
        _require(_positive_int(self.views),
                 f"Geometry.views must be a positive integer, got {self.views!r}.")
        _require(_positive_int(self.image_size),
                 f"Geometry.image_size must be a positive integer, got {self.image_size!r}.")
        _require(_positive_real(self.pixel_size_mm),
                 f"Geometry.pixel_size_mm must be a positive number, got {self.pixel_size_mm!r}.")
        for name in ("axis_offset_mm", "detector_shift_mm"):
            _require(_finite_real(getattr(self, name)),
                     f"Geometry.{name} must be a finite number (mm), got {getattr(self, name)!r}.")
        _require(self.detector_shape in DETECTOR_SHAPES,
                 f"Geometry.detector_shape must be one of {DETECTOR_SHAPES}, "
                 f"got {self.detector_shape!r}.")
        _require(self.detector_shape == "flat" or self.beam == "fan",
                 "Geometry.detector_shape 'curved' needs beam 'fan': a parallel-beam "
                 "detector is flat.")
        if self.beam == "fan":
            self._check_fan()
        # Frozen dataclass: defaults are resolved once, here, via object.__setattr__.
        if self.detector_spacing_mm is None:
            self._set("detector_spacing_mm", self.pixel_size_mm * self.magnification)
        _require(_positive_real(self.detector_spacing_mm),
                 f"Geometry.detector_spacing_mm must be a positive number or None, "
                 f"got {self.detector_spacing_mm!r}.")
        if self.angular_range_deg is None:
            self._set("angular_range_deg", 180.0 if self.beam == "parallel" else 360.0)
        _require(_positive_real(self.angular_range_deg) and self.angular_range_deg <= 360.0,
                 f"Geometry.angular_range_deg must be in (0, 360] or None, "
                 f"got {self.angular_range_deg!r}.")
        if self.detector_count is None:
            count = math.ceil(2.0 * self._detector_half_width_mm() / self.detector_spacing_mm)
            # One bin of margin each side, and the image's parity, so that at angle 0
            # bin centres line up with pixel columns.
            count += 2
            count += (count - self.image_size) % 2
            self._set("detector_count", count)
        _require(_positive_int(self.detector_count),
                 f"Geometry.detector_count must be a positive integer or None, "
                 f"got {self.detector_count!r}.")
        _require(self.views <= _MAX_VIEWS_PER_BIN * self.detector_count,
                 f"Geometry.views={self.views} is more than {_MAX_VIEWS_PER_BIN} x "
                 f"detector_count={self.detector_count}; lower views or check the two "
                 "are not swapped.")
        # Plain Python scalars (not numpy or YAML types), for equality and to_dict.
        for name in ("views", "image_size", "detector_count"):
            self._set(name, int(getattr(self, name)))
        for name in ("pixel_size_mm", "detector_spacing_mm", "angular_range_deg",
                     "source_isocenter_mm", "source_detector_mm", "axis_offset_mm",
                     "detector_shift_mm"):
            self._set(name, float(getattr(self, name)))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_fan(self) -> None:
        _require(_positive_real(self.source_isocenter_mm),
                 "Geometry.source_isocenter_mm must be a positive number, "
                 f"got {self.source_isocenter_mm!r}.")
        _require(_positive_real(self.source_detector_mm)
                 and self.source_detector_mm > self.source_isocenter_mm,
                 f"Geometry.source_detector_mm ({self.source_detector_mm!r}) must exceed "
                 f"source_isocenter_mm ({self.source_isocenter_mm!r}): the detector lies "
                 "beyond the rotation axis.")
        _require(abs(self.axis_offset_mm) < 0.5 * self.source_isocenter_mm,
                 f"Geometry.axis_offset_mm ({self.axis_offset_mm!r}) must be smaller than half "
                 f"the source-isocentre distance ({self.source_isocenter_mm!r} mm): check its "
                 "unit (mm at the axis, not bins).")
        _require(self.fov_radius_mm < self.source_isocenter_mm,
                 f"Geometry.source_isocenter_mm ({self.source_isocenter_mm}) must exceed the "
                 f"image's circumscribed radius ({self.fov_radius_mm:.1f} mm): the source "
                 "would pass through the image; shrink image_size * pixel_size_mm.")

    def _detector_half_width_mm(self) -> float:
        """Half-width a detector centred at ``detector_shift_mm`` needs to cover the shadow
        of the circle circumscribing the image."""
        radius = self.fov_radius_mm
        if self.beam == "parallel":
            return radius + abs(self.axis_offset_mm - self.detector_shift_mm)
        # The rays tangent to that circle leave the source at asin(r / R) either side of
        # the ray through the axis, which is itself at axis_fan_angle from the central ray.
        half = math.asin(radius / self.source_radius_mm)
        ends = [self.detector_coordinate(self.axis_fan_angle + sign * half) for sign in (-1, 1)]
        return max(abs(end - self.detector_shift_mm) for end in ends)

    @property
    def is_aligned(self) -> bool:
        """Whether this is the ideal scanner: no offset, flat detector (ASTRA's own
        ``parallel``/``fanflat`` geometries; otherwise their vector forms are used)."""
        return (self.axis_offset_mm == 0.0 and self.detector_shift_mm == 0.0
                and self.detector_shape == "flat")

    @property
    def source_radius_mm(self) -> float:
        """Fan beam: radius of the source's circle about the axis."""
        return math.hypot(self.source_isocenter_mm, self.axis_offset_mm)

    @property
    def axis_fan_angle(self) -> float:
        """Fan beam: angle (rad) from the central ray to the ray through the axis, positive
        towards ``+u``."""
        return math.atan2(self.axis_offset_mm, self.source_isocenter_mm)

    def detector_coordinate(self, fan_angle: float | np.ndarray) -> float | np.ndarray:
        """Fan beam: position along the detector (mm from the central ray, arc length on a
        curved detector) of the ray at ``fan_angle`` (rad) from the central ray."""
        if self.detector_shape == "curved":
            return self.source_detector_mm * np.asarray(fan_angle) + 0.0
        return self.source_detector_mm * np.tan(fan_angle)

    def bin_positions_mm(self) -> np.ndarray:
        """``(detector_count,)`` position of each bin's centre along ``u``, in mm from the
        central ray on the detector (arc length on a curved one)."""
        index = np.arange(self.detector_count, dtype=np.float64)
        return (index - (self.detector_count - 1) / 2.0) * self.detector_spacing_mm \
            + self.detector_shift_mm

    def bin_fan_angles(self) -> np.ndarray:
        """Fan beam: ``(detector_count,)`` angle (rad) of each bin's ray from the ray
        through the axis, positive towards ``+u``."""
        u = self.bin_positions_mm()
        if self.detector_shape == "curved":
            central = u / self.source_detector_mm
        else:
            central = np.arctan(u / self.source_detector_mm)
        return central - self.axis_fan_angle

    @property
    def axis_bin(self) -> float:
        """Centre of rotation: the fractional bin index that the ray through the axis meets
        (``(detector_count - 1) / 2`` for an aligned scanner)."""
        if self.beam == "parallel":
            position = self.axis_offset_mm
        else:
            position = float(self.detector_coordinate(self.axis_fan_angle))
        return ((self.detector_count - 1) / 2.0
                + (position - self.detector_shift_mm) / self.detector_spacing_mm)

    @property
    def fov_radius_mm(self) -> float:
        """Radius of the circle circumscribing the square image, in mm."""
        return self.image_size * self.pixel_size_mm / math.sqrt(2.0)

    @property
    def magnification(self) -> float:
        """Isocentre-to-detector magnification (1 for parallel beam)."""
        if self.beam == "parallel":
            return 1.0
        return self.source_detector_mm / self.source_isocenter_mm

    def angles(self) -> np.ndarray:
        """Projection angles in radians, ``views`` of them over the range, endpoint excluded."""
        step = math.radians(self.angular_range_deg) / self.views
        return np.arange(self.views, dtype=np.float64) * step

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(image_size, image_size)``: the reconstruction grid."""
        return (self.image_size, self.image_size)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(views, detector_count)``."""
        return (self.views, self.detector_count)

    def with_views(self, views: int) -> Geometry:
        """The same geometry (same detector and angular range) with ``views`` angles."""
        return dataclasses.replace(self, views=views)

    def upsampled(self, factor: int) -> Geometry:
        """A ``factor`` times finer image grid over the same field of view, same detector."""
        _require(_positive_int(factor),
                 f"upsample factor must be a positive integer, got {factor!r}.")
        return dataclasses.replace(self, image_size=self.image_size * factor,
                                   pixel_size_mm=self.pixel_size_mm / factor)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict of the (resolved) fields, JSON/YAML serialisable.

        The alignment fields appear only when they differ from the ideal scanner, so an
        aligned geometry has the same dict (and the same identity in sidecars, checkpoints
        and model names) as before they existed."""
        data = dataclasses.asdict(self)
        for name, default in _ALIGNED.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` (they are typos)."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        _require(not unknown, f"Geometry.from_dict got unknown keys {unknown}; "
                              f"valid keys are {sorted(names)}.")
        return cls(**data)
