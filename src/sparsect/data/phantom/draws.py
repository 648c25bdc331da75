"""The draws that the anatomy streams share: the draw sequence, an organ record, a bowel loop.

Both :mod:`~sparsect.data.phantom.anatomy` (down to the kidneys) and
:mod:`~sparsect.data.phantom.lower_abdomen` (below the liver) draw from a
:class:`_Draws` and describe organs as :class:`_Organ` ellipsoids; small-bowel loops are
drawn by both. Kept apart from either so that the two import it and not each other.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sparsect.data import fpmath


class _Organ(NamedTuple):
    """An organ as an ellipsoid: its in-plane ellipse, lumpy by ``coeffs``, and its z extent."""

    centre: tuple[float, float]  # (u, v) mm
    semi: tuple[float, float]  # in-plane semi-axes, mm
    angle: float  # rad, direction of the first semi-axis in (u, v)
    z_centre: float  # mm
    z_semi: float  # mm
    coeffs: np.ndarray | None


class _Draws:
    """Draws from one subject's anatomy generator; the call order fixes the anatomy."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def harmonics(self, count: int, amplitude: float) -> np.ndarray:
        """``(count, 2)`` amplitudes and phases of the outline harmonics of
        :func:`~sparsect.data.phantom.shapes._modulation`."""
        return np.stack(
            [
                fpmath.normal(self.rng, count, 0.0, amplitude),
                self.rng.uniform(0.0, 2 * np.pi, count),
            ],
            axis=1,
        )


def _draw_loop(
    draw: _Draws,
    u: tuple[float, float],
    v: tuple[float, float],
    scale: tuple[float, float],
    semi_u: tuple[float, float],
    semi_v: tuple[float, float],
    z_top: float,
    drop: tuple[float, float],
    z_semi: tuple[float, float],
) -> _Organ:
    """A bowel loop: an ellipsoid centred at uniform ``(u, v)`` times ``scale`` (the
    cavity's semi-axes) and ``drop`` mm below ``z_top``, with uniform semi-axes and
    orientation and a lumpy outline (drawn in that order)."""
    return _Organ(
        (draw.uniform(*u) * scale[0], draw.uniform(*v) * scale[1]),
        (draw.uniform(*semi_u), draw.uniform(*semi_v)),
        draw.uniform(0.0, np.pi),
        z_top - draw.uniform(*drop),
        draw.uniform(*z_semi),
        draw.harmonics(2, 0.08),
    )
