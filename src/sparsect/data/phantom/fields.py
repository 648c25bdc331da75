"""In-plane fields of a phantom that do not change along z, computed once per subject."""

from __future__ import annotations

import numpy as np

from sparsect.data import fpmath
from sparsect.data.phantom.anatomy import (
    _Anatomy,
    _Arm,
    _body_radius,
    _fat_thickness,
    _muscle_thickness,
    _Organ,
)
from sparsect.data.phantom.grid import _Grid
from sparsect.data.phantom.shapes import _cos_sin, _ellipse_rho


def _organ_rho(u: np.ndarray, v: np.ndarray, organ: _Organ) -> np.ndarray:
    """Normalised radius of an organ's in-plane outline (< its ellipsoid scale inside)."""
    return _ellipse_rho(u, v, organ.centre, organ.semi, organ.angle, organ.coeffs)


class _Fields:
    """In-plane fields that do not change with z, computed once per subject."""

    def __init__(self, an: _Anatomy, grid: _Grid) -> None:
        u, v = grid.u, grid.v
        self.u, self.v = u, v
        self.r = fpmath.hypot(u, v).astype(np.float32)
        theta = fpmath.arctan2(v, u)
        # Angle from the posterior midline, 0 (back) .. pi (front), same on both sides.
        self.phi = fpmath.arctan2(np.abs(u), -v).astype(np.float32)
        self.rib_shift = np.where(u < 0, an.rib_side_shift, 0.0).astype(np.float32)
        for amplitude, k, phase in an.rib_wobble:
            self.rib_shift += (amplitude * fpmath.sin(k * self.phi + phase)).astype(np.float32)
        self.body = [_body_radius(an, theta, ab).astype(np.float32) for ab in (False, True)]
        self.fat = [_fat_thickness(an, theta, ab).astype(np.float32) for ab in (False, True)]
        self.muscle = [_muscle_thickness(an, theta, ab).astype(np.float32) for ab in (False, True)]
        self._init_diaphragm(an)
        self._init_spine(an)
        self._init_sternum(an)
        self._init_heart(an)
        self._init_abdomen(an)
        self._init_tubes(an)
        self._init_lower_abdomen(an)
        self.arms = [_ArmFields(u, v, arm) for arm in an.arms] if an.arms_down else []
        self.table = _table_parts(an, grid) if an.table else []

    def _init_diaphragm(self, an: _Anatomy) -> None:
        u, v = self.u, self.v
        # Diaphragm height: the higher of two paraboloid domes, with deeper
        # posterior recesses (the costophrenic sulci reach lowest at the back).
        heights = []
        for (cu, cv), top in ((an.dome_right, an.h_right), (an.dome_left, an.h_left)):
            # The anterior slope is flatter: the diaphragm attaches high at the
            # xiphoid and costal margin, so the anterior recess is shallow.
            dv = np.where(v > cv, (v - cv) / 1.8, v - cv)
            d2 = ((u - cu) / an.dome_semi[0]) ** 2 + (dv / an.dome_semi[1]) ** 2
            heights.append(top - an.dome_depth * d2)
        posterior = np.clip(-v / an.b_c, 0.0, 1.0)
        height = np.maximum(*heights) - an.posterior_drop * posterior
        # The paraboloids fall without end at the sides; the recesses do not.
        floor = an.h_right - an.recess_depth - 20.0 * posterior
        self.diaphragm = np.maximum(height, floor).astype(np.float32)

    def _init_spine(self, an: _Anatomy) -> None:
        u, v = self.u, self.v
        # Spine: vertebral body, canal, paraspinal muscles and processes.
        self.vb = _ellipse_rho(u, v, (an.spine_u, an.vb_v), an.vb_semi)
        self.canal = fpmath.hypot(u - an.spine_u, v - an.canal_v).astype(np.float32)
        self.paraspinal = _ellipse_rho(u, v, (an.spine_u, an.canal_v - 14.0), an.paraspinal_semi)
        du = u - an.spine_u
        self.spinous = (np.abs(du) < 3.5) & (v < an.canal_v - an.canal_radius - 2.0)
        self.spinous &= v > an.canal_v - an.canal_radius - 30.0
        self.transverse = np.zeros(u.shape, dtype=bool)
        for side in (1.0, -1.0):
            start_u, start_v = an.spine_u + side * (an.canal_radius + 3.0), an.canal_v + 2.0
            cos_tilt, sin_tilt = _cos_sin(0.35)
            dir_u, dir_v = side * cos_tilt, -sin_tilt
            along = (u - start_u) * dir_u + (v - start_v) * dir_v
            across = -(u - start_u) * dir_v + (v - start_v) * dir_u
            self.transverse |= (along > 0) & (along < 26.0) & (np.abs(across) < 4.0)
        # Posterior mediastinum (aorta, oesophagus, azygos, fat) between spine and heart.
        self.central_band = (np.abs(du) < an.mediastinum_half_width) & (v > an.canal_v)
        self.central_band &= v < an.vb_v + an.vb_semi[1] + 45.0

    def _init_sternum(self, an: _Anatomy) -> None:
        u, v = self.u, self.v
        # Sternum in the anterior chest wall.
        front = float(_body_radius(an, np.array([np.pi / 2]), False)[0])
        front_wall = float(
            _fat_thickness(an, np.array([np.pi / 2]), False)[0]
            + _muscle_thickness(an, np.array([np.pi / 2]), False)[0]
        )
        self.sternum = _ellipse_rho(
            u, v, (an.spine_u, front - front_wall + an.sternum_semi[1] - 1.0), an.sternum_semi
        )

    def _init_heart(self, an: _Anatomy) -> None:
        """Organs are normalised radii of their in-plane outlines; here heart and left ventricle."""
        u, v = self.u, self.v
        self.heart = _organ_rho(u, v, an.heart)
        # Left ventricle: towards the apex along the long axis, and posterior.
        h = an.heart
        along, behind = 0.2 * h.semi[0], 0.25 * h.semi[1]
        cos, sin = _cos_sin(h.angle)
        lv_centre = (
            h.centre[0] + along * cos + behind * sin,
            h.centre[1] + along * sin - behind * cos,
        )
        self.lv_semi = (0.6 * h.semi[0], 0.6 * h.semi[1])
        self.lv = _ellipse_rho(u, v, lv_centre, self.lv_semi, h.angle)

    def _init_abdomen(self, an: _Anatomy) -> None:
        u, v = self.u, self.v
        self.liver = _organ_rho(u, v, an.liver)
        # Medial edge of the left lobe: furthest left anteriorly, curved and uneven.
        amplitude, wavelength, phase = an.liver_edge_wiggle
        self.liver_edge = (
            an.liver_left_edge
            + 0.35 * an.a_c * np.clip(-v / (0.8 * an.b_c), 0.0, 1.0)
            + an.liver_edge_curve * ((v - an.liver.centre[1]) / an.b_c) ** 2
            + amplitude * fpmath.sin(v / wavelength + phase)
        ).astype(np.float32)
        self.stomach = _organ_rho(u, v, an.stomach)
        self.spleen = _organ_rho(u, v, an.spleen)
        self.kidneys = [_organ_rho(u, v, k) for k in an.kidneys]
        self.sinus = []
        for side, k in zip((1.0, -1.0), an.kidneys, strict=True):
            # Renal sinus fat sits at the hilum, anteromedially.
            centre = (k.centre[0] - side * 0.35 * k.semi[1], k.centre[1] + 0.35 * k.semi[1])
            self.sinus.append(
                _ellipse_rho(u, v, centre, (0.45 * k.semi[0], 0.35 * k.semi[1]), k.angle)
            )
        # Medulla: the kidney's inner part, its radius lobed so that cortical columns
        # reach in between the pyramids (< its ellipsoid scale - 0.25 inside).
        self.pyramids = []
        for rho, k in zip(self.kidneys, an.kidneys, strict=True):
            cos, sin = _cos_sin(k.angle)
            du, dv = u - k.centre[0], v - k.centre[1]
            angle = fpmath.arctan2(-du * sin + dv * cos, du * cos + dv * sin)
            lobes = 1.0 + 0.18 * fpmath.cos(6.0 * angle)
            self.pyramids.append((rho * lobes).astype(np.float32))
        self.bowel = [_organ_rho(u, v, b) for b in an.bowel]

    def _init_tubes(self, an: _Anatomy) -> None:
        """Oesophagus and inferior vena cava: distances from their centres."""
        u, v = self.u, self.v
        self.esophagus = fpmath.hypot(
            u - an.esophagus_u, v - (an.vb_v + an.vb_semi[1] + an.esophagus_radius + 3.0)
        ).astype(np.float32)
        self.ivc = fpmath.hypot(u - an.ivc_u, v - (an.vb_v + an.vb_semi[1] + an.ivc_v)).astype(
            np.float32
        )

    def _init_lower_abdomen(self, an: _Anatomy) -> None:
        """Colon pieces that run in-plane, small-bowel loops, bladder, iliac wings, femoral
        heads and gluteal muscles (as squared distances where a square root is not needed)."""
        u, v = self.u, self.v
        self.colon = [None if t.vertical else _TubeField(u, v, t.points) for t in an.colon]
        self.loops = [_organ_rho(u, v, loop.organ) for loop in an.loops]
        pelvis = an.pelvis
        self.bladder = _organ_rho(u, v, pelvis.bladder)
        fu, fv, _, _ = pelvis.femoral
        gu, gv, gsu, gsv = pelvis.gluteal
        self.wings, self.femoral, self.gluteal = [], [], []
        for side in (1.0, -1.0):
            # The left side is the mirror image of the right one.
            mirrored = (side * u).astype(np.float32)
            self.wings.append(_TubeField(mirrored, v, pelvis.wing).d2)
            self.femoral.append(((mirrored - fu) ** 2 + (v - fv) ** 2).astype(np.float32))
            self.gluteal.append(((mirrored - gu) / gsu) ** 2 + ((v - gv) / gsv) ** 2)


class _TubeField:
    """Nearest point of an in-plane polyline: a tube along it is cut by a slice where its
    height passes the slice, so a tube that runs in-plane needs no 3D distance per slice.

    ``d2`` is the squared in-plane distance to the polyline, ``z``, ``v`` and ``t`` (0 .. 1,
    the fraction of the way along its vertices) those of the nearest point.
    """

    def __init__(self, u: np.ndarray, v: np.ndarray, points: np.ndarray) -> None:
        points = points.astype(np.float32)
        best = np.full(u.shape, np.inf, dtype=np.float32)
        along = np.zeros(u.shape, dtype=np.float32)
        last = len(points) - 1
        for k in range(last):
            p0, p1 = points[k], points[k + 1]
            eu, ev = p1[0] - p0[0], p1[1] - p0[1]
            du, dv = u - p0[0], v - p0[1]
            length2 = eu * eu + ev * ev
            t = np.clip((du * eu + dv * ev) / length2, 0.0, 1.0) if length2 > 0 else 0.0 * du
            d2 = (du - t * eu) ** 2 + (dv - t * ev) ** 2
            closer = d2 < best
            best = np.where(closer, d2, best)
            along = np.where(closer, (k + t) / np.float32(max(last, 1)), along)
        self.d2 = best
        self.t = along
        if points.shape[1] > 2:
            index = np.minimum((along * last).astype(np.int64), max(last - 1, 0))
            frac = along * last - index
            self.z = points[index, 2] + frac * (points[index + 1, 2] - points[index, 2])
            self.v = points[index, 1] + frac * (points[index + 1, 1] - points[index, 1])


class _ArmFields:
    """One arm on the in-plane grid: skin and muscle outlines, distances to its bones."""

    def __init__(self, u: np.ndarray, v: np.ndarray, arm: _Arm) -> None:
        o = arm.outline
        self.skin = _ellipse_rho(u, v, o.centre, o.semi, o.angle, o.coeffs)
        inner = (o.semi[0] - arm.fat, o.semi[1] - arm.fat)
        self.muscle = _ellipse_rho(u, v, o.centre, inner, o.angle, o.coeffs)
        self.humerus = fpmath.hypot(u - arm.bone[0], v - arm.bone[1]).astype(np.float32)
        # Radius and ulna side by side, front and back of the forearm's centre.
        cos, sin = _cos_sin(o.angle)
        half = arm.forearm[2]
        self.forearm = [
            fpmath.hypot(
                u - (arm.bone[0] - k * half * sin), v - (arm.bone[1] + k * half * cos)
            ).astype(np.float32)
            for k in (1.0, -1.0)
        ]


def _table_parts(an: _Anatomy, grid: _Grid) -> list[tuple[np.ndarray, str]]:
    """The patient table on the in-plane grid, as ``(mask, material)`` to paint in order.

    A curved couch in world coordinates (horizontal whatever the body's rotation): a
    carbon-fibre shell round a foam core, its top ``table_gap`` below the lowest point of
    the back, with a foam mattress filling that gap or air.
    """
    x = (grid.x[:, None] - an.table_x).astype(np.float32)
    y = grid.y[None, :].astype(np.float32)
    top = grid.floor_y - an.table_gap + x * x / np.float32(2.0 * an.table_curve_radius)
    depth = top - y  # below the top surface
    across = np.abs(x)
    table = (depth >= 0) & (depth < an.table_thickness) & (across < an.table_half_width)
    core = table & (depth > an.table_shell) & (depth < an.table_thickness - an.table_shell)
    core &= across < an.table_half_width - an.table_shell
    parts = [(table, "table_shell"), (core, "table_core")]
    if an.mattress:
        pad = (depth < 0) & (depth > -an.table_gap) & (across < an.table_half_width - 15.0)
        parts.append((pad, "mattress"))
    return parts
