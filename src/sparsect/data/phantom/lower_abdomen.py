"""The per-subject anatomy below the liver: colon, small-bowel loops, psoas and pelvis.

Drawn from a stream of its own (see :class:`~sparsect.data.phantom.anatomy._Anatomy`), so
that adding or changing these draws leaves the rest of a subject's anatomy alone. Sizes are
in anatomical mm, heights in world mm like the rest of the anatomy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from sparsect.data.phantom.draws import _draw_loop, _Draws, _Organ
from sparsect.data.phantom.materials import _M

if TYPE_CHECKING:
    from sparsect.data.phantom.anatomy import _Anatomy


class _Tube(NamedTuple):
    """One piece of the colon: a centre line, its radius, and what fills it.

    A ``vertical`` piece runs along z between its two points (each slice cuts it as one
    disc); the others run mostly in-plane along their polyline (each slice cuts them where
    the tube's height passes the slice; see :func:`~sparsect.data.phantom.fields._TubeField`).
    """

    points: np.ndarray  # (n, 3): u, v, z in mm
    radius: tuple[float, float]  # outer radius at the first and the last point
    vertical: bool
    content: str  # "faeces" (mottled, with gas bubbles), "gas", or "level" (gas over fluid)
    gas_fraction: float  # of the lumen's depth above the gas-fluid level ("level")


class _Loop(NamedTuple):
    """A small-bowel loop: an ellipsoid, and what fills it."""

    organ: _Organ
    content: str  # "fluid", "contrast", "level", "gas" or "collapsed" (wall only)
    gas_fraction: float


class _Pelvis(NamedTuple):
    """Bony pelvis, bladder and gluteal muscles (present below the iliac crest)."""

    crest_z: float  # top of the iliac wings
    promontory_z: float  # top of the sacrum: vertebral bodies end here
    wing: np.ndarray  # (n, 2) centre line of the right iliac wing, u > 0 (mirrored for left)
    wing_thickness: tuple[float, float]  # at the crest and 100 mm below it
    sacrum_semi: tuple[float, float]  # half width at the promontory, half depth
    femoral: tuple[float, float, float, float]  # |u|, v, z of the head centres; radius
    bladder: _Organ
    gluteal: tuple[float, float, float, float]  # |u|, v of the centre; full semi-axes
    bifurcation_z: float  # the aorta splits into the common iliac arteries below this


def _bezier(p0: np.ndarray, control: np.ndarray, p1: np.ndarray, count: int) -> np.ndarray:
    """``count`` points along a quadratic Bezier curve (any dimension)."""
    t = np.linspace(0.0, 1.0, count)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * control + t**2 * p1


def _landmark(
    draw: _Draws,
    u: tuple[float, float],
    v: tuple[float, float],
    an: _Anatomy,
    z_top: float,
    drop: tuple[float, float],
    side: float = 1.0,
) -> np.ndarray:
    """A point ``(u, v, z)``: uniform ``u`` (times ``side``: -1 is the patient's left) and
    ``v`` in units of the cavity's semi-axes, ``drop`` mm below ``z_top`` (drawn in that
    order)."""
    return np.array(
        [side * draw.uniform(*u) * an.a_c, draw.uniform(*v) * an.b_c, z_top - draw.uniform(*drop)]
    )


def _draw_colon(draw: _Draws, an: _Anatomy) -> list[_Tube]:
    """Caecum and ascending colon (right), transverse colon (anterior, sagging), descending
    colon (left), sigmoid (looping across the pelvis) and rectum (in front of the sacrum)."""
    a_c, b_c = an.a_c, an.b_c
    hepatic = _landmark(draw, (0.45, 0.62), (-0.1, 0.15), an, an.h_right, (115.0, 150.0))
    splenic = _landmark(draw, (0.5, 0.65), (-0.25, 0.0), an, an.h_left, (70.0, 110.0), -1.0)
    caecum = _landmark(draw, (0.4, 0.6), (0.0, 0.3), an, an.h_right, (200.0, 240.0))
    sigmoid_top = _landmark(draw, (0.5, 0.65), (-0.15, 0.1), an, an.h_right, (215.0, 250.0), -1.0)
    r_ascending = draw.uniform(20.0, 28.0)
    r_caecum = r_ascending + draw.uniform(0.0, 7.0)
    r_transverse = draw.uniform(17.0, 26.0)
    r_descending = draw.uniform(14.0, 20.0)
    r_sigmoid = draw.uniform(14.0, 20.0)
    r_rectum = draw.uniform(18.0, 28.0)

    # Transverse colon: an anterior arc between the flexures that sags in the middle.
    front = draw.uniform(0.3, 0.6) * b_c
    sag = draw.uniform(10.0, 90.0)
    control = np.array(
        [(hepatic[0] + splenic[0]) / 2 + draw.uniform(-20.0, 20.0),
         2 * front - (hepatic[1] + splenic[1]) / 2, (hepatic[2] + splenic[2]) / 2 - 2 * sag]
    )  # fmt: skip
    transverse = _bezier(hepatic, control, splenic, 40)
    # Sigmoid: from the left iliac fossa across and up, then down into the rectum.
    rectum_top = np.array(
        [draw.uniform(-10.0, 10.0), an.vb_v + an.vb_semi[1] + r_rectum + draw.uniform(5.0, 15.0),
         sigmoid_top[2] - draw.uniform(35.0, 60.0)]
    )  # fmt: skip
    control = np.array(
        [-draw.uniform(0.1, 0.3) * a_c, draw.uniform(0.2, 0.45) * b_c,
         (sigmoid_top[2] + rectum_top[2]) / 2 + draw.uniform(0.0, 80.0)]
    )  # fmt: skip
    sigmoid = _bezier(sigmoid_top, control, rectum_top, 32)
    rectum_bottom = rectum_top - np.array([0.0, 0.0, 250.0])

    pieces = [
        (np.stack([caecum, hepatic]), (r_caecum, r_ascending), True, 0.1),
        (transverse, (r_ascending, r_transverse), False, 0.4),  # often gas-filled
        (np.stack([sigmoid_top, splenic]), (r_descending, r_descending), True, 0.1),
        (sigmoid, (r_descending, r_sigmoid), False, 0.1),
        (np.stack([rectum_bottom, rectum_top]), (r_rectum, r_sigmoid), True, 0.15),
    ]
    tubes = []
    for points, radius, vertical, p_gas in pieces:
        u = draw.uniform(0.0, 1.0)
        content = "gas" if u < p_gas else "level" if u < p_gas + 0.25 else "faeces"
        tubes.append(_Tube(points, radius, vertical, content, draw.uniform(0.2, 0.6)))
    return tubes


def _draw_loops(draw: _Draws, an: _Anatomy, oral_contrast: bool) -> list[_Loop]:
    """Small-bowel loops: the upper ones of the anatomy stream (made smaller), and more in
    the mid and lower abdomen and pelvis; 10 to 25 in all, each with its content."""
    a_c, b_c = an.a_c, an.b_c
    organs = [
        o._replace(semi=tuple(min(max(0.7 * s, 8.0), 15.0) for s in o.semi)) for o in an.bowel
    ]
    for _ in range(int(draw.rng.integers(5, 16))):
        organs.append(
            _draw_loop(
                draw,
                (-0.55, 0.55),
                (-0.15, 0.6),
                (a_c, b_c),
                (8.0, 15.0),
                (8.0, 15.0),
                an.h_right,
                (110.0, 300.0),
                (15.0, 35.0),
            )
        )
    loops = []
    for organ in organs:
        u, fraction = draw.uniform(0.0, 1.0), draw.uniform(0.15, 0.5)
        if u < 0.2:
            content = "collapsed"
            organ = organ._replace(semi=(0.6 * organ.semi[0], 0.6 * organ.semi[1]))
        elif u < 0.35:
            content = "level"
        elif u < 0.45:
            content = "gas"
        elif oral_contrast and u < 0.75:
            content = "contrast"
        else:
            content = "fluid"
        loops.append(_Loop(organ, content, fraction))
    return loops


def _draw_pelvis(draw: _Draws, an: _Anatomy) -> _Pelvis:
    a_c, b_c = an.a_c, an.b_c
    crest_z = an.h_right - draw.uniform(215.0, 250.0)
    # Iliac wing: from the sacro-iliac joint round the back of the iliac fossa to the
    # anterior superior iliac spine.
    joint = np.array([an.spine_u + draw.uniform(40.0, 50.0), an.vb_v - draw.uniform(0.0, 10.0)])
    spine = np.array([draw.uniform(0.75, 0.88) * a_c, draw.uniform(0.0, 0.2) * b_c])
    # A slight bulge backwards and outwards: the iliac fossa is concave towards the front.
    corner = np.array([draw.uniform(0.65, 0.8) * a_c, an.vb_v + draw.uniform(0.0, 0.15) * b_c])
    femoral_z = crest_z - draw.uniform(130.0, 160.0)
    centre = (draw.uniform(-10.0, 10.0), draw.uniform(0.1, 0.3) * b_c)
    bladder_semi = (draw.uniform(35.0, 60.0), draw.uniform(28.0, 45.0))
    return _Pelvis(
        crest_z=crest_z,
        promontory_z=crest_z - draw.uniform(15.0, 40.0),
        wing=_bezier(joint, corner, spine, 24),
        wing_thickness=(draw.uniform(5.0, 8.0), draw.uniform(14.0, 22.0)),
        sacrum_semi=(draw.uniform(42.0, 52.0), an.vb_semi[1] * draw.uniform(0.8, 1.0)),
        femoral=(
            draw.uniform(0.5, 0.6) * a_c,
            draw.uniform(-0.05, 0.1) * b_c,
            femoral_z,
            draw.uniform(21.0, 26.0),
        ),
        bladder=_Organ(
            centre,
            bladder_semi,
            draw.uniform(-0.3, 0.3),
            femoral_z + draw.uniform(15.0, 45.0),
            draw.uniform(35.0, 60.0),
            draw.harmonics(2, 0.04),
        ),
        gluteal=(
            draw.uniform(0.5, 0.65) * a_c,
            -draw.uniform(0.45, 0.65) * b_c,
            draw.uniform(45.0, 65.0),
            draw.uniform(30.0, 45.0),
        ),
        bifurcation_z=crest_z + draw.uniform(0.0, 25.0),
    )


def _draw_lower_abdomen(draw: _Draws, an: _Anatomy, oral_contrast_probability: float) -> None:
    """Everything below the liver, and the HU of gut content and urine (onto ``an``)."""
    an.rib_bottom = an.h_right - draw.uniform(130.0, 170.0)  # the twelfth rib ends here
    # Psoas: starts at the first lumbar vertebra, thickening downwards.
    an.psoas_top = an.h_right - draw.uniform(95.0, 125.0)
    an.psoas_semi = (draw.uniform(20.0, 28.0), draw.uniform(16.0, 24.0))
    an.psoas_gap = draw.uniform(0.0, 6.0)  # from the vertebral body
    an.colon = _draw_colon(draw, an)
    an.oral_contrast = draw.uniform(0.0, 1.0) < oral_contrast_probability
    an.loops = _draw_loops(draw, an, an.oral_contrast)
    an.pelvis = _draw_pelvis(draw, an)
    an.colon_wall = draw.uniform(2.0, 3.0)
    an.bubble_fraction = draw.uniform(0.05, 0.25)  # of the faeces' volume
    hu = an.material_hu
    hu[_M["faeces"]] = draw.uniform(0.0, 60.0)
    hu[_M["bowel_content"]] = draw.uniform(0.0, 20.0)
    # Dilute positive oral contrast, kept below the +200 HU of the bone class.
    hu[_M["oral_contrast"]] = draw.uniform(120.0, 190.0)
    hu[_M["urine"]] = draw.uniform(0.0, 20.0)
    # The costophrenic recesses end about the first lumbar vertebra (lowest at the back).
    an.recess_depth = draw.uniform(100.0, 130.0)
