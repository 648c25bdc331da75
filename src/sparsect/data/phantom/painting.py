"""Painting one axial (sub-)slice of a phantom: organ labels and materials, organ by organ.

Later organs paint over earlier ones, so the order of the steps in
:func:`_paint_slice` is part of the anatomy.
"""

from __future__ import annotations

import numpy as np

from sparsect.data import fpmath
from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.fields import _Fields
from sparsect.data.phantom.grid import _Grid
from sparsect.data.phantom.materials import _M
from sparsect.data.phantom.shapes import _ellipsoid_scale
from sparsect.priors.organs import ORGAN_LABELS as _L


def _paint_volume(an: _Anatomy, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Organ labels and materials on the supersampled grid, slice by slice (uint8 each)."""
    fields = _Fields(an, grid)
    shape_ss = (grid.u.shape[0], grid.u.shape[1], grid.z.size)
    labels_ss = np.empty(shape_ss, dtype=np.uint8)
    material_ss = np.empty(shape_ss, dtype=np.uint8)
    for k, z in enumerate(grid.z):
        labels_ss[:, :, k], material_ss[:, :, k] = _paint_slice(an, fields, float(z))
    return labels_ss, material_ss


def _paint_slice(an: _Anatomy, fields: _Fields, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Organ labels and materials of one (sub-)slice at world height ``z`` (mm)."""
    canvas = _SliceCanvas(an, fields, z)
    canvas.paint_wall()
    canvas.paint_upper_abdomen()
    canvas.paint_kidneys_and_bowel()
    canvas.paint_thorax()
    canvas.paint_spine()
    canvas.paint_ribs_and_sternum()
    canvas.clear_outside()
    return canvas.labels, canvas.material


class _SliceCanvas:
    """Label and material maps of one (sub-)slice at world height ``z`` (mm), being painted.

    :meth:`paint_wall` comes first: it sets the regions (body, cavity, thorax,
    abdomen) the other steps place their organs in.
    """

    t: float  # 0 at the right dome apex (thorax), 1 about 8 cm below it (abdomen)
    r_cavity: np.ndarray  # radius of the body cavity inside the muscle wall
    body: np.ndarray
    cavity: np.ndarray
    paraspinal: np.ndarray
    above: np.ndarray  # thoracic side of the diaphragm
    abdomen: np.ndarray

    def __init__(self, an: _Anatomy, fields: _Fields, z: float) -> None:
        self.an, self.F, self.z = an, fields, z
        self.labels = np.zeros(fields.r.shape, dtype=np.uint8)
        self.material = np.zeros(fields.r.shape, dtype=np.uint8)

    def paint(self, mask: np.ndarray, label: str, mat: str) -> None:
        """Sets organ ``label`` and material ``mat`` where ``mask`` is true."""
        self.labels[mask] = _L[label]
        self.material[mask] = _M[mat]

    def paint_wall(self) -> None:
        """Skin to cavity: muscle, subcutaneous and visceral fat, paraspinal muscles, diaphragm."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        # 0 at the right dome apex (thorax), 1 about 8 cm below it (abdomen).
        t = min(max((an.h_right - z) / 80.0, 0.0), 1.0)
        r_body = F.body[0] + t * (F.body[1] - F.body[0])
        r_fat = r_body - (F.fat[0] + t * (F.fat[1] - F.fat[0]))
        r_cavity = r_fat - (F.muscle[0] + t * (F.muscle[1] - F.muscle[0]))
        body = F.r < r_body
        inner = F.r < r_fat
        cavity = F.r < r_cavity
        paint(body, "muscle", "muscle")
        paint(body & ~inner, "fat", "fat_subcutaneous")
        paint(cavity, "fat", "fat_visceral")
        paraspinal = F.paraspinal < 1.0
        paint(paraspinal & inner, "muscle", "muscle")

        above = z > F.diaphragm + an.diaphragm_mm  # thoracic side of the diaphragm
        below = z < F.diaphragm
        paint(cavity & ~above & ~below & ~paraspinal, "muscle", "muscle")  # diaphragm muscle
        abdomen = cavity & below & ~paraspinal
        self.t, self.r_cavity, self.body = t, r_cavity, body
        self.cavity, self.paraspinal, self.above, self.abdomen = cavity, paraspinal, above, abdomen

    def paint_upper_abdomen(self) -> None:
        """Liver, stomach (with its gas cap) and spleen."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        abdomen = self.abdomen

        # Liver: right upper quadrant; its left lobe reaches across the midline
        # anteriorly and recedes lower down, and the whole liver tapers at its tip.
        taper = min(max((z - an.liver_bottom) / 50.0, 0.0), 1.0)
        if taper > 0:
            recede = 0.45 * an.a_c * min(max((an.h_right - 30.0 - z) / 70.0, 0.0), 1.0)
            liver = abdomen & (F.liver < 0.55 + 0.45 * taper) & (F.u > F.liver_edge + recede)
            paint(liver, "liver", "liver")

        s = _ellipsoid_scale(z, an.stomach.z_centre, an.stomach.z_semi)
        if s > 0.15:
            stomach = abdomen & (F.stomach < s)
            paint(stomach, "stomach", "gut_wall")
            lumen = stomach & (F.stomach < s - 5.0 / an.stomach.semi[0])
            paint(lumen, "stomach", "gastric_content")
            if an.stomach_gas:
                # Gas floats to the non-dependent (anterior) part of the lumen.
                cap = 1 - 2 * an.stomach_gas_fraction
                level = an.stomach.centre[1] + cap * an.stomach.semi[1] * s
                paint(lumen & (F.v > level), "bowel_gas", "gas")

        s = _ellipsoid_scale(z, an.spleen.z_centre, an.spleen.z_semi)
        if s > 0:
            paint(abdomen & (F.spleen < s), "spleen", "spleen")

    def paint_kidneys_and_bowel(self) -> None:
        """Kidneys with their sinus fat, and bowel loops (in visceral fat only)."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        labels, cavity, abdomen = self.labels, self.cavity, self.abdomen
        paraspinal = self.paraspinal

        for kidney, rho, sinus in zip(an.kidneys, F.kidneys, F.sinus, strict=True):
            s = _ellipsoid_scale(z, kidney.z_centre, kidney.z_semi)
            if s > 0:
                paint(cavity & (rho < s) & ~paraspinal, "kidney", "kidney")
                if s > 0.75:
                    paint(cavity & (sinus < (s - 0.75) * 4.0) & (rho < s), "fat", "fat_visceral")

        for organ, rho, gas in zip(an.bowel, F.bowel, an.bowel_gas, strict=True):
            s = _ellipsoid_scale(z, organ.z_centre, organ.z_semi)
            if s > 0.2:
                loop = abdomen & (rho < s) & (labels == _L["fat"])
                paint(loop, "bowel", "gut_wall")
                lumen = loop & (rho < s - 3.0 / organ.semi[1])
                paint(lumen, "bowel_gas" if gas else "bowel", "gas" if gas else "bowel_content")

    def paint_thorax(self) -> None:
        """Great vessels, oesophagus, lungs and heart."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        cavity, above = self.cavity, self.above

        # Great vessels and oesophagus; the aorta moves from left-paravertebral in the
        # chest to pre-vertebral in the abdomen.
        ta = min(max((an.h_left - z) / 60.0, 0.0), 1.0)
        aorta_u = (1 - ta) * (
            an.spine_u - (0.6 * an.vb_semi[0] + an.aorta_radius + an.aorta_gap)
        ) + ta * an.aorta_abdomen_u
        aorta_v = (1 - ta) * (an.vb_v + 4.0) + ta * (
            an.vb_v + an.vb_semi[1] + an.aorta_radius + 2.0
        )
        aorta_d = fpmath.hypot(F.u - aorta_u, F.v - aorta_v)
        has_ivc = z < an.h_right + 5.0
        has_esophagus = z > an.h_left - 25.0

        # Heart with epicardial fat, sitting on the diaphragm.
        sh = _ellipsoid_scale(z, an.heart.z_centre, an.heart.z_semi)
        heart_zone = cavity & above
        fat_rho = an.pericardial_fat / an.heart.semi[1]

        # Lungs: the thoracic cavity minus the mediastinum.
        excluded = F.central_band | (F.paraspinal < 1.1) | (F.vb < 1.25)
        excluded |= aorta_d < an.aorta_radius + 3.0
        if sh > 0:
            excluded |= F.heart < sh + fat_rho + 0.04
        if has_esophagus:
            excluded |= F.esophagus < an.esophagus_radius + 3.0
        lung = cavity & above & ~excluded
        paint(lung, "lung", "lung")

        if sh > 0:
            paint(heart_zone & (F.heart < sh + fat_rho), "fat", "fat_visceral")
            heart = heart_zone & (F.heart < sh)
            paint(heart, "myocardium", "myocardium")  # free wall
            paint(heart & (F.heart < sh - 3.5 / an.heart.semi[1]), "heart", "blood")
            lv = heart & (F.lv < sh)
            paint(lv, "myocardium", "myocardium")
            paint(lv & (F.lv < sh - an.lv_wall / F.lv_semi[1]), "heart", "blood")

        paint(cavity & (aorta_d < an.aorta_radius), "aorta", "blood")
        if has_esophagus:
            paint(cavity & (F.esophagus < an.esophagus_radius), "esophagus", "muscle")
        if has_ivc:
            paint(cavity & ~above & (F.ivc < an.ivc_radius), "vena_cava", "blood")

    def paint_spine(self) -> None:
        """Vertebral body or disc, posterior arch, processes and spinal canal."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        t = self.t

        # Vertebra: body or disc depending on the level; cortical shell around a
        # trabecular core; posterior arch around the canal; processes in part of
        # each vertebral period (they point downwards).
        grow = 1.0 + 0.12 * t  # lumbar vertebrae are larger than thoracic ones
        phase = ((z - an.vertebra_phase) / an.vertebra_period) % 1.0
        vb = F.vb < grow
        if phase < an.disc_height / an.vertebra_period:
            paint(vb, "disc", "disc")
        else:
            paint(vb, "spine", "cortical")
            paint(F.vb < grow - 1.5 / an.vb_semi[1], "spine", "trabecular")
        canal_r = an.canal_radius * grow
        paint(
            (F.canal >= canal_r) & (F.canal < canal_r + 5.0) & (F.v < an.canal_v + 0.5 * canal_r),
            "spine",
            "posterior_bone",
        )
        if 0.15 < phase < 0.75:
            paint(F.spinous, "spine", "posterior_bone")
        if 0.25 < phase < 0.6:
            paint(F.transverse, "spine", "posterior_bone")
        paint(F.canal < canal_r, "spinal_canal", "csf_cord")

    def paint_ribs_and_sternum(self) -> None:
        """Oblique ribs just outside the cavity, and the sternum above its lower end."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        t, r_cavity = self.t, self.r_cavity

        # Ribs: a band just outside the cavity; a rib is present where the oblique
        # rib "phase" (descending anteriorly) falls inside the rib height.
        band = (F.r >= r_cavity + 0.5) & (F.r < r_cavity + 0.5 + an.rib_thickness)
        phi_max = np.pi - 0.5 - 1.1 * t  # the costal margin recedes in the abdomen
        band &= (F.phi > 0.35) & (F.phi < phi_max)
        rib_phase = (z - an.rib_phase + an.rib_slope * 110.0 * F.phi + F.rib_shift) / an.rib_period
        rib_phase %= 1.0
        rib = band & (rib_phase < an.rib_height / an.rib_period)
        paint(rib, "rib", "rib_cortex")
        depth = F.r - r_cavity - 0.5
        core = (depth > 1.3) & (depth < an.rib_thickness - 1.3)
        core &= (rib_phase > 1.3 / an.rib_period) & (
            rib_phase < (an.rib_height - 1.3) / an.rib_period
        )
        paint(rib & core, "rib", "marrow")

        if z > an.sternum_bottom:
            paint(F.sternum < 1.0, "sternum", "rib_cortex")
            paint(F.sternum < 1.0 - 2.0 / an.sternum_semi[1], "sternum", "marrow")

    def clear_outside(self) -> None:
        """Nothing outside the skin: air, label 0."""
        outside = ~self.body
        self.labels[outside] = _L["background"]
        self.material[outside] = _M["air"]
