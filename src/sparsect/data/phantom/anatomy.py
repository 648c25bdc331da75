"""The per-subject anatomy of a torso phantom: sizes, positions and outlines, in mm.

All of a subject's anatomical randomness is drawn here, from one generator and
in a fixed order (the order of the ``_draw_*`` calls in :class:`_Anatomy`), so
the same ``(seed, subject)`` always gives the same body.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from sparsect.data import fpmath
from sparsect.data.phantom.config import PhantomConfig
from sparsect.data.phantom.draws import _draw_loop, _Draws, _Organ
from sparsect.data.phantom.lower_abdomen import _draw_lower_abdomen
from sparsect.data.phantom.materials import (
    _ENHANCEMENT,
    _M,
    _MATERIALS,
    _MAX_MATERIALS,
    _NATIVE_OF,
    _PHASES,
)
from sparsect.data.phantom.shapes import _modulation, _superellipse_radius


class _Arm(NamedTuple):
    outline: _Organ  # skin (in-plane only: the arm runs through the whole slab)
    fat: float  # subcutaneous fat, mm
    bone: tuple[float, float]  # (u, v) centre of the humerus, or between radius and ulna
    humerus: tuple[float, float]  # radius, cortex (mm)
    forearm: tuple[float, float, float]  # bone radius, cortex, half the distance between them


class _Anatomy:
    """Per-subject anatomical parameters in mm.

    In-plane coordinates ``(u, v)`` are anatomical: ``u`` towards the patient's
    right, ``v`` anterior, origin at the body centre. ``z`` is the world z of
    the volume (0 at the centre slice), increasing superiorly.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        config: PhantomConfig,
        lower_rng: np.random.Generator | None = None,
    ) -> None:
        """``rng`` draws the anatomy down to the kidneys; ``lower_rng`` (by default a stream
        spawned from ``rng``'s seed) whether the slab is pelvic and the anatomy below the
        liver, so that those draws leave the others alone."""
        draw = _Draws(rng)
        if lower_rng is None:
            lower_rng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
        lower = _Draws(lower_rng)
        self.pelvic = lower.uniform(0.0, 1.0) < config.pelvic_probability
        depth = self._draw_body(draw, config)
        self._draw_wall(draw, config, depth)
        self._draw_diaphragm(draw, config, depth)
        self._draw_spine(draw)
        self._draw_ribs(draw)
        size = draw.uniform(0.92, 1.08)  # organs scale together, a little
        self._draw_mediastinum(draw, size)
        self._draw_upper_abdomen(draw, size)
        self._draw_kidneys_and_bowel(draw, size)
        self._draw_attenuation(draw)
        # Draws added later come after all the others, so they leave the anatomy above alone.
        self._draw_contrast(draw, config)
        self._draw_table(draw, config)
        self._draw_arms(draw, config)
        self._place_spine()
        _draw_lower_abdomen(lower, self, config.oral_contrast_probability)

    def _draw_body(self, draw: _Draws, config: PhantomConfig) -> float:
        """Body outline, position and rotation; returns the full anterior-posterior depth."""
        # Body outline: the back is flatter than the front, hence the asymmetry.
        self.a = draw.uniform(*config.body_width_mm) / 2
        depth = draw.uniform(*config.body_depth_mm)
        asym = draw.uniform(0.02, 0.07)
        self.b_ant, self.b_post = depth / 2 * (1 + asym), depth / 2 * (1 - asym)
        self.n_body = draw.uniform(2.1, 2.6)
        self.abdomen_widen = (draw.uniform(0.95, 1.04), draw.uniform(0.98, 1.06))
        self.body_coeffs = draw.harmonics(4, 0.012)
        self.offset = (
            draw.uniform(-config.max_offset_mm, config.max_offset_mm),
            draw.uniform(-config.max_offset_mm, config.max_offset_mm),
        )
        self.rotation = math.radians(
            draw.uniform(-config.max_rotation_deg, config.max_rotation_deg)
        )
        return depth

    def _draw_wall(self, draw: _Draws, config: PhantomConfig, depth: float) -> None:
        # Subcutaneous fat and muscle wall thickness profiles.
        fat_lo, fat_hi = config.subcutaneous_fat_mm
        self.fat_range = (fat_lo, fat_hi)
        span = fat_hi - fat_lo
        # Large bodies are mostly large by their fat: thin subjects are small, obese ones big.
        size = (
            _fraction(2 * self.a, config.body_width_mm) + _fraction(depth, config.body_depth_mm)
        ) / 2
        share = 0.03 + 0.6 * size + 0.35 * (draw.uniform(0.0, 1.0) - 0.5)
        self.fat_mean = fat_lo + span * min(max(share, 0.0), 0.8)
        self.fat_coeffs = draw.harmonics(3, 0.28)
        self.fat_abdomen_gain = draw.uniform(1.0, 1.3)
        self.muscle_thorax = draw.uniform(12.0, 17.0)
        self.pectoral = draw.uniform(4.0, 14.0)
        self.muscle_abdomen = draw.uniform(10.0, 14.0)

    def _draw_diaphragm(self, draw: _Draws, config: PhantomConfig, depth: float) -> None:
        """Diaphragm domes, and the thoracic cavity's semi-axes ``a_c``, ``b_c``."""
        # Diaphragm: two domes, the right one higher (the liver pushes it up).
        # One draw either way: a pelvic slab only moves the dome up, far above the slab.
        self.h_right = draw.uniform(
            *(config.pelvic_dome_level_mm if self.pelvic else config.dome_level_mm)
        )
        self.h_left = self.h_right - draw.uniform(8.0, 20.0)
        self.dome_depth = draw.uniform(45.0, 65.0)
        self.posterior_drop = draw.uniform(15.0, 30.0)
        self.diaphragm_mm = draw.uniform(3.0, 5.0)
        a_c = self.a - self.fat_mean - self.muscle_thorax  # cavity semi-axes
        b_c = depth / 2 - self.fat_mean - self.muscle_thorax
        self.a_c, self.b_c = a_c, b_c
        self.dome_right = (draw.uniform(0.4, 0.5) * a_c, draw.uniform(0.0, 0.1) * b_c)
        self.dome_left = (-draw.uniform(0.4, 0.5) * a_c, draw.uniform(-0.05, 0.05) * b_c)
        self.dome_semi = (draw.uniform(0.5, 0.6) * a_c, draw.uniform(0.7, 0.8) * b_c)

    def _draw_spine(self, draw: _Draws) -> None:
        # Spine, measured from the posterior skin.
        self.spine_u = draw.uniform(-3.0, 3.0)
        self.vb_semi = (draw.uniform(17.0, 21.0), draw.uniform(14.0, 17.0))
        self.vb_depth_from_skin = draw.uniform(45.0, 55.0)  # mm behind the subcutaneous fat
        self.vertebra_period = draw.uniform(27.0, 32.0)
        self.disc_height = draw.uniform(5.0, 8.0)
        self.vertebra_phase = draw.uniform(0.0, self.vertebra_period)
        self.canal_radius = draw.uniform(7.0, 9.0)
        self.paraspinal_semi = (draw.uniform(38.0, 48.0), draw.uniform(26.0, 33.0))
        self.mediastinum_half_width = draw.uniform(10.0, 16.0)

    def _draw_ribs(self, draw: _Draws) -> None:
        # Ribs: oblique bands, so each axial slice cuts them as arcs.
        self.rib_period = draw.uniform(24.0, 30.0)
        self.rib_height = draw.uniform(10.0, 13.0)
        self.rib_slope = draw.uniform(0.55, 0.8)
        self.rib_phase = draw.uniform(0.0, self.rib_period)
        self.rib_side_shift = draw.uniform(-4.0, 4.0)
        # Rib spacing and curvature are not perfectly regular.
        self.rib_wobble = [
            (draw.uniform(1.0, 4.0), k, draw.uniform(0.0, 2 * np.pi)) for k in (2, 3, 5)
        ]
        self.rib_thickness = draw.uniform(6.0, 8.0)
        self.sternum_semi = (draw.uniform(12.0, 16.0), draw.uniform(5.0, 7.0))
        self.sternum_bottom = self.h_right - draw.uniform(5.0, 20.0)

    def _draw_mediastinum(self, draw: _Draws, size: float) -> None:
        a_c, b_c = self.a_c, self.b_c
        # Heart: long axis pointing left-anterior, resting on the diaphragm.
        self.heart = _Organ(
            (-draw.uniform(0.05, 0.15) * a_c, draw.uniform(0.3, 0.42) * b_c),
            (draw.uniform(45.0, 55.0) * size, draw.uniform(36.0, 43.0) * size),
            math.radians(draw.uniform(125.0, 145.0)),
            self.h_left + draw.uniform(25.0, 40.0),
            draw.uniform(60.0, 75.0),
            draw.harmonics(3, 0.03),
        )
        self.pericardial_fat = draw.uniform(2.0, 6.0)
        self.lv_wall = draw.uniform(8.0, 12.0)
        # Vessels and oesophagus, placed relative to the spine.
        self.aorta_radius = draw.uniform(11.0, 14.5)
        self.aorta_gap = draw.uniform(2.0, 6.0)
        self.aorta_abdomen_u = -draw.uniform(4.0, 12.0)
        self.esophagus_radius = draw.uniform(6.0, 8.0)
        self.esophagus_u = -draw.uniform(2.0, 10.0)
        self.ivc_radius = draw.uniform(9.0, 12.0)
        self.ivc_u = draw.uniform(15.0, 25.0)
        self.ivc_v = draw.uniform(8.0, 18.0)

    def _draw_upper_abdomen(self, draw: _Draws, size: float) -> None:
        """Liver, stomach and spleen."""
        a_c, b_c = self.a_c, self.b_c
        self.liver = _Organ(
            (draw.uniform(0.2, 0.35) * a_c, draw.uniform(-0.05, 0.1) * b_c),
            (draw.uniform(0.75, 0.9) * a_c, draw.uniform(0.85, 1.0) * b_c),
            math.radians(draw.uniform(-10.0, 10.0)),
            0.0,  # no ellipsoid in z: the diaphragm caps the liver, liver_bottom ends it
            0.0,
            draw.harmonics(4, 0.04),
        )
        self.liver_left_edge = -draw.uniform(0.3, 0.45) * a_c
        self.liver_edge_curve = draw.uniform(0.2, 0.4) * a_c
        self.liver_edge_wiggle = (
            draw.uniform(3.0, 8.0),
            draw.uniform(15.0, 30.0),
            draw.uniform(0.0, 2 * np.pi),
        )
        self.liver_bottom = self.h_right - draw.uniform(120.0, 160.0)
        self.stomach = _Organ(
            (-draw.uniform(0.35, 0.5) * a_c, draw.uniform(0.1, 0.3) * b_c),
            (draw.uniform(40.0, 55.0) * size, draw.uniform(30.0, 42.0) * size),
            draw.uniform(0.0, np.pi),
            self.h_left - draw.uniform(35.0, 50.0),
            draw.uniform(50.0, 70.0),
            draw.harmonics(3, 0.06),
        )
        self.stomach_gas = draw.uniform(0.0, 1.0) < 0.6
        self.stomach_gas_fraction = draw.uniform(0.08, 0.25)
        self.spleen = _Organ(
            (-draw.uniform(0.55, 0.7) * a_c, -draw.uniform(0.25, 0.45) * b_c),
            (draw.uniform(45.0, 60.0) * size, draw.uniform(22.0, 30.0) * size),
            math.radians(draw.uniform(115.0, 150.0)),
            self.h_left - draw.uniform(40.0, 60.0),
            draw.uniform(45.0, 60.0),
            draw.harmonics(3, 0.06),
        )

    def _draw_kidneys_and_bowel(self, draw: _Draws, size: float) -> None:
        a_c, b_c = self.a_c, self.b_c
        self.kidneys = []
        for side, dome in ((1.0, self.h_right - 10.0), (-1.0, self.h_left)):
            self.kidneys.append(
                _Organ(
                    (
                        side * (self.vb_semi[0] + draw.uniform(35.0, 45.0)),
                        draw.uniform(-5.0, 10.0),
                    ),
                    (draw.uniform(27.0, 33.0) * size, draw.uniform(19.0, 25.0) * size),
                    math.radians(90.0 - side * draw.uniform(30.0, 50.0)),
                    dome - draw.uniform(95.0, 110.0),
                    draw.uniform(50.0, 60.0),
                    draw.harmonics(2, 0.03),
                )
            )
        self.bowel = [
            _draw_loop(
                draw,
                (-0.6, 0.25),
                (-0.05, 0.65),
                (a_c, b_c),
                (10.0, 22.0),
                (9.0, 18.0),
                self.h_left,
                (50.0, 150.0),
                (15.0, 40.0),
            )
            for _ in range(int(draw.rng.integers(5, 11)))
        ]
        self.bowel_gas = [draw.uniform(0.0, 1.0) < 0.3 for _ in self.bowel]

    def _draw_attenuation(self, draw: _Draws) -> None:
        # Tissue attenuation of this subject.
        hu = np.zeros(_MAX_MATERIALS, dtype=np.float32)
        for index, material in enumerate(_MATERIALS.values()):
            spread = fpmath.normal(draw.rng, None, 0.0, material.hu_sd) if material.hu_sd else 0.0
            hu[index] = material.hu + spread
        self.material_hu = hu
        self.lung_gradient = draw.uniform(20.0, 45.0)  # HU, dependent (posterior) lung is denser

    def _draw_contrast(self, draw: _Draws, config: PhantomConfig) -> None:
        """The contrast phase, and each material's enhancement in it (``material_hu``)."""
        u = draw.uniform(0.0, 1.0)
        cumulative = np.cumsum(config.contrast_phases)
        self.phase = _PHASES[min(int(np.searchsorted(cumulative, u, side="right")), 2)]
        hu = self.material_hu
        for name, source in _NATIVE_OF.items():
            hu[_M[name]] = hu[_M[source]]
        # One draw per material whatever the phase, so that the phase changes nothing else.
        for name, ranges in _ENHANCEMENT.items():
            fraction = draw.uniform(0.0, 1.0)
            if self.phase != "non_contrast":
                low, high = ranges[_PHASES.index(self.phase) - 1]
                hu[_M[name]] += np.float32(low + fraction * (high - low))

    def _draw_table(self, draw: _Draws, config: PhantomConfig) -> None:
        """The patient table, in world mm (it is the scanner's, not scaled with the body)."""
        self.table = draw.uniform(0.0, 1.0) < config.table_probability
        self.table_gap = draw.uniform(0.0, 20.0)  # below the lowest point of the back
        self.mattress = draw.uniform(0.0, 1.0) < 0.6  # else an air gap
        self.table_thickness = draw.uniform(8.0, 20.0)
        self.table_shell = draw.uniform(2.0, 4.0)
        self.table_half_width = draw.uniform(200.0, 240.0)
        self.table_x = draw.uniform(-15.0, 15.0)
        self.table_curve_radius = draw.uniform(600.0, 1500.0)  # the top is concave
        hu = self.material_hu
        hu[_M["table_shell"]] = draw.uniform(100.0, 300.0)
        hu[_M["table_core"]] = draw.uniform(-850.0, -700.0)
        hu[_M["mattress"]] = draw.uniform(-900.0, -800.0)

    def _draw_arms(self, draw: _Draws, config: PhantomConfig) -> None:
        """Arms down beside the trunk, or raised above the head (then out of the slab)."""
        self.arms_down = draw.uniform(0.0, 1.0) < config.arms_down_probability
        self.elbow_z = self.h_right - draw.uniform(60.0, 130.0)  # humerus above, forearm below
        self.arms = [self._draw_arm(draw, side) for side in (1.0, -1.0)]

    def _draw_arm(self, draw: _Draws, side: float) -> _Arm:
        diameter = draw.uniform(70.0, 100.0)
        semi = (diameter / 2, diameter / 2 * draw.uniform(1.0, 1.2))  # deeper than wide
        v_centre = draw.uniform(-0.35, 0.1) * self.b_post
        gap = draw.uniform(0.0, 20.0)
        angle = draw.uniform(-0.3, 0.3)
        coeffs = draw.harmonics(2, 0.04)
        # Clear of the trunk's side (thorax or abdomen outline) over the arm's height.
        theta = np.linspace(-np.pi, np.pi, 721)
        side_u = 0.0
        for abdomen in (False, True):
            r = _body_radius(self, theta, abdomen)
            u, v = r * fpmath.cos(theta), r * fpmath.sin(theta)
            level = np.abs(v - v_centre) < semi[1]
            side_u = max(side_u, float((side * u[level]).max()))
        centre = (side * (side_u + gap + semi[0]), v_centre)
        bone = (
            centre[0] - side * draw.uniform(0.0, 0.2) * semi[0],
            centre[1] + draw.uniform(-0.15, 0.15) * semi[1],
        )
        return _Arm(
            _Organ(centre, semi, angle, 0.0, 0.0, coeffs),
            fat=draw.uniform(5.0, 15.0),
            bone=bone,
            humerus=(draw.uniform(10.0, 13.0), draw.uniform(3.0, 5.0)),
            forearm=(draw.uniform(6.0, 8.0), draw.uniform(2.0, 3.0), draw.uniform(7.0, 11.0)),
        )

    def _place_spine(self) -> None:
        # Vertebral-body centre at a fixed depth from the posterior skin, behind the fat.
        back_theta = np.array([-np.pi / 2])
        back = float(_body_radius(self, back_theta, False)[0])
        back_fat = float(_fat_thickness(self, back_theta, False)[0])
        self.vb_v = -back + back_fat + self.vb_depth_from_skin
        self.canal_v = self.vb_v - self.vb_semi[1] - 2.0 - self.canal_radius


def _fraction(value: float, bounds: tuple[float, float]) -> float:
    """Where ``value`` lies in ``bounds``, 0 .. 1 (0.5 for an empty range)."""
    low, high = bounds
    return (value - low) / (high - low) if high > low else 0.5


# --------------------------------------------------------------------------- outline profiles


def _body_radius(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    widen_u, widen_v = an.abdomen_widen if abdomen else (1.0, 1.0)
    radius = _superellipse_radius(
        theta, an.a * widen_u, an.b_ant * widen_v, an.b_post * widen_v, an.n_body
    )
    return radius * _modulation(theta, an.body_coeffs)


def _fat_thickness(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    gain = an.fat_abdomen_gain if abdomen else 1.0
    return np.clip(an.fat_mean * gain * _modulation(theta, an.fat_coeffs), *an.fat_range)


def _muscle_thickness(an: _Anatomy, theta: np.ndarray, abdomen: bool) -> np.ndarray:
    if abdomen:
        return np.full_like(theta, an.muscle_abdomen)
    # Pectoral bulk on both sides of the sternum (theta = +-60 deg off anterior).
    off_anterior = fpmath.wrap_angle(theta - np.pi / 2)
    bump = fpmath.exp(-(((np.abs(off_anterior) - 0.6) / 0.35) ** 2))
    return an.muscle_thorax + an.pectoral * bump
