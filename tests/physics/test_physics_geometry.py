"""Geometry defaults, derived geometries and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sparsect.physics import Geometry


def test_parallel_defaults_cover_the_diagonal() -> None:
    g = Geometry("parallel", views=60, image_size=128, pixel_size_mm=1.5)
    assert g.detector_spacing_mm == 1.5
    assert g.angular_range_deg == 180.0
    assert g.detector_count * g.detector_spacing_mm >= 128 * 1.5 * math.sqrt(2)
    assert g.detector_count % 2 == 0  # same parity as the image


def test_fan_defaults_cover_the_fan_of_the_circumscribed_circle() -> None:
    g = Geometry("fan", views=60, image_size=128, pixel_size_mm=3.0)
    assert g.angular_range_deg == 360.0
    assert g.detector_spacing_mm == pytest.approx(3.0 * 1085.6 / 595.0)
    radius = 128 * 3.0 / math.sqrt(2)
    half_width = 1085.6 * math.tan(math.asin(radius / 595.0))
    assert g.detector_count * g.detector_spacing_mm / 2 >= half_width


def test_angles_equally_spaced_endpoint_excluded() -> None:
    g = Geometry("parallel", views=4, image_size=16, pixel_size_mm=1.0)
    np.testing.assert_allclose(g.angles(), [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])
    limited = Geometry("fan", views=3, image_size=16, pixel_size_mm=1.0, angular_range_deg=90)
    np.testing.assert_allclose(limited.angles(), np.radians([0, 30, 60]))


def test_upsampled_keeps_fov_and_detector() -> None:
    g = Geometry("fan", views=30, image_size=64, pixel_size_mm=2.0)
    fine = g.upsampled(2)
    assert (fine.image_size, fine.pixel_size_mm) == (128, 1.0)
    assert (fine.detector_count, fine.detector_spacing_mm) == (g.detector_count,
                                                               g.detector_spacing_mm)
    assert fine.angular_range_deg == g.angular_range_deg
    assert g.with_views(90).views == 90
    assert g.with_views(90).detector_count == g.detector_count


def test_dict_round_trip_through_json() -> None:
    g = Geometry("fan", views=30, image_size=64, pixel_size_mm=2.0, angular_range_deg=270)
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ValueError, match="upsample"):
        Geometry.from_dict({**g.to_dict(), "upsample": 2})


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"beam": "cone"}, "beam"),
    ({"views": 0}, "views"),
    ({"views": 2.5}, "views"),
    ({"image_size": -4}, "image_size"),
    ({"pixel_size_mm": 0.0}, "pixel_size_mm"),
    ({"pixel_size_mm": float("nan")}, "pixel_size_mm"),
    ({"detector_count": 0}, "detector_count"),
    ({"detector_spacing_mm": -1.0}, "detector_spacing_mm"),
    ({"angular_range_deg": 400.0}, "angular_range_deg"),
    ({"views": 10_000}, "views"),
    ({"beam": "fan", "source_detector_mm": 500.0}, "source_detector_mm"),
    ({"beam": "fan", "pixel_size_mm": 15.0}, "source_isocenter_mm"),
])
def test_validation_names_the_field(kwargs: dict, field: str) -> None:
    args = {"beam": "parallel", "views": 60, "image_size": 64, "pixel_size_mm": 1.0} | kwargs
    with pytest.raises(ValueError, match=rf"Geometry\.{field}"):
        Geometry(**args)
