"""Painting one axial (sub-)slice of a phantom: organ labels and materials, organ by organ.

Later organs paint over earlier ones, so the order of the steps in
:func:`_paint_slice` is part of the anatomy.
"""

from __future__ import annotations

import numpy as np

from sparsect.data import fpmath
from sparsect.data.phantom.anatomy import _Anatomy
from sparsect.data.phantom.fields import _Fields, _TubeField
from sparsect.data.phantom.grid import _Grid
from sparsect.data.phantom.lower_abdomen import _Tube
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
    canvas.paint_colon_and_loops()
    canvas.paint_pelvis()
    canvas.paint_thorax()
    canvas.paint_spine()
    canvas.paint_ribs_and_sternum()
    canvas.clear_outside()
    canvas.paint_arms()
    canvas.paint_table()
    return canvas.labels, canvas.material


def _tube_cut(
    tube: _Tube, field: _TubeField | None, F: _Fields, z: float, wall: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A colon piece's cross-section at height ``z``: ``(outer, lumen, gas)`` masks (gas
    above its gas-fluid level), or None where the slice misses it."""
    if tube.vertical:
        (u0, v0, z0), (u1, v1, z1) = tube.points
        t = min(max((z - z0) / (z1 - z0), 0.0), 1.0)
        dz = z - (z0 + t * (z1 - z0))
        radius = tube.radius[0] + t * (tube.radius[1] - tube.radius[0])
        if abs(dz) >= radius:
            return None
        cv = v0 + t * (v1 - v0)
        d2 = (F.u - (u0 + t * (u1 - u0))) ** 2 + (F.v - cv) ** 2 + dz * dz
        centre_v: float | np.ndarray = cv
    else:
        assert field is not None
        zs = tube.points[:, 2]
        if z < zs.min() - max(tube.radius) or z > zs.max() + max(tube.radius):
            return None
        radius = tube.radius[0] + field.t * (tube.radius[1] - tube.radius[0])
        d2 = field.d2 + (z - field.z) ** 2
        centre_v = field.v
    inner = radius - wall
    outer = d2 < radius * radius
    lumen = d2 < inner * inner
    level = F.v > centre_v + (1 - 2 * tube.gas_fraction) * inner
    return outer, lumen, level


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
        # Gluteal muscles behind the iliac wings, growing from just above the crest down.
        grow = min(max((an.pelvis.crest_z + 20.0 - z) / 100.0, 0.0), 1.0)
        if grow > 0:
            for gluteal in F.gluteal:
                muscle = gluteal < grow * grow
                paint(muscle & inner, "muscle", "muscle")
                paraspinal = paraspinal | muscle

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
        """Psoas muscles beside the lumbar spine, then the kidneys with their sinus fat."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        cavity, abdomen, paraspinal = self.cavity, self.abdomen, self.paraspinal

        # Psoas: from the first lumbar vertebra down, thickening, hugging the vertebral body;
        # in the pelvis it moves forwards along the iliac fossa.
        if z < an.psoas_top:
            grow = min(max((an.psoas_top - z) / 140.0, 0.25), 1.0)
            su, sv = grow * an.psoas_semi[0], grow * an.psoas_semi[1]
            forward = 0.3 * max(an.pelvis.promontory_z - z, 0.0)
            cv = an.vb_v + 0.3 * an.vb_semi[1] + forward
            for side in (1.0, -1.0):
                cu = an.spine_u + side * (1.12 * an.vb_semi[0] + an.psoas_gap + 0.9 * su)
                psoas = ((F.u - cu) / su) ** 2 + ((F.v - cv) / sv) ** 2 < 1.0
                paint(abdomen & psoas, "muscle", "muscle")

        for kidney, rho, sinus, pyramids in zip(
            an.kidneys, F.kidneys, F.sinus, F.pyramids, strict=True
        ):
            s = _ellipsoid_scale(z, kidney.z_centre, kidney.z_semi)
            if s > 0:
                kidney_mask = cavity & (rho < s) & ~paraspinal
                paint(kidney_mask, "kidney", "kidney")
                # Medullary pyramids under the cortex, split by cortical columns.
                paint(kidney_mask & (pyramids < s - 0.25), "kidney", "kidney_medulla")
                if s > 0.75:
                    paint(cavity & (sinus < (s - 0.75) * 4.0) & (rho < s), "fat", "fat_visceral")

    def paint_colon_and_loops(self) -> None:
        """Colon, then small-bowel loops, each with its content, in visceral fat only."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        free = self.abdomen & (self.labels == _L["fat"])
        lumens = []
        for tube, field in zip(an.colon, F.colon, strict=True):
            cut = _tube_cut(tube, field, F, z, an.colon_wall)
            if cut is not None:
                outer, lumen, level = cut
                paint(free & outer, "colon", "gut_wall")
                lumens.append((tube, lumen, level))
        # Lumens after all walls, so that where pieces meet, one lumen runs into the next.
        for tube, lumen, level in lumens:
            lumen &= free
            if tube.content == "gas":
                paint(lumen, "bowel_gas", "gas")
            elif tube.content == "level":
                paint(lumen, "colon", "bowel_content")
                paint(lumen & level, "bowel_gas", "gas")
            else:
                paint(lumen, "colon", "faeces")  # gas bubbles come later, in 3D

        free = self.abdomen & (self.labels == _L["fat"])
        for loop, rho in zip(an.loops, F.loops, strict=True):
            organ = loop.organ
            s = _ellipsoid_scale(z, organ.z_centre, organ.z_semi)
            if s <= 0.2:
                continue
            wall = free & (rho < s)
            paint(wall, "bowel", "gut_wall")
            if loop.content == "collapsed":
                continue  # wall against wall: soft tissue throughout
            lumen = wall & (rho < s - 2.5 / organ.semi[1])
            if loop.content == "gas":
                paint(lumen, "bowel_gas", "gas")
                continue
            content = "oral_contrast" if loop.content == "contrast" else "bowel_content"
            paint(lumen, "bowel", content)
            if loop.content == "level":
                # Gas floats to the non-dependent (anterior) part of the lumen.
                level = organ.centre[1] + (1 - 2 * loop.gas_fraction) * organ.semi[1] * s
                paint(lumen & (F.v > level), "bowel_gas", "gas")

    def paint_pelvis(self) -> None:
        """Bladder, iliac wings (with the acetabula) and femoral heads, below the crest."""
        an, F, z, paint = self.an, self.F, self.z, self.paint
        pelvis = an.pelvis
        s = _ellipsoid_scale(z, pelvis.bladder.z_centre, pelvis.bladder.z_semi)
        if s > 0:
            # The bladder pushes bowel aside, not the pelvic wall.
            soft = np.isin(self.labels, [_L["fat"], _L["bowel"], _L["bowel_gas"], _L["colon"]])
            bladder = self.abdomen & soft & (F.bladder < s)
            paint(bladder, "bladder", "gut_wall")
            paint(bladder & (F.bladder < s - 3.0 / pelvis.bladder.semi[1]), "bladder", "urine")
        if z >= pelvis.crest_z:
            return
        # Iliac wings: curved plates, thicker further down, cortex round marrow.
        below = min((pelvis.crest_z - z) / 100.0, 1.0)
        low, high = pelvis.wing_thickness
        half = (low + below * (high - low)) / 2
        for d2 in F.wings:
            plate = self.body & (d2 < half * half)
            paint(plate, "pelvis_bone", "cortical")
            paint(plate & (d2 < (half - 1.5) ** 2), "pelvis_bone", "trabecular")
        fu, _, fz, radius = pelvis.femoral
        if abs(z - fz) < radius + 12.0:
            # Acetabulum: a cup of pelvic bone round the medial and upper head.
            scale = _ellipsoid_scale(z, fz, radius + 8.0)
            for side, d2 in zip((1.0, -1.0), F.femoral, strict=True):
                cup = (d2 < (scale * (radius + 8.0)) ** 2) & (side * F.u < fu + 0.3 * radius)
                paint(self.body & cup, "pelvis_bone", "cortical")
            head = _ellipsoid_scale(z, fz, radius)
            if head > 0:
                for d2 in F.femoral:
                    paint(self.body & (d2 < (head * radius + 1.0) ** 2), "fat", "fat_visceral")
                    ball = d2 < (head * radius) ** 2
                    paint(ball, "femur", "cortical")
                    paint(ball & (d2 < max(head * radius - 2.0, 0.0) ** 2), "femur", "trabecular")

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

        if z > an.pelvis.bifurcation_z:
            paint(cavity & (aorta_d < an.aorta_radius), "aorta", "blood")
        else:
            # The common iliac arteries diverge from the bifurcation towards the hips.
            spread = min(0.5 * (an.pelvis.bifurcation_z - z), 60.0) + 0.5 * an.aorta_radius
            radius = 0.6 * an.aorta_radius
            for side in (1.0, -1.0):
                iliac = (F.u - (aorta_u + side * spread)) ** 2 + (F.v - aorta_v) ** 2
                paint(cavity & (iliac < radius * radius), "aorta", "blood")
        if has_esophagus:
            paint(cavity & (F.esophagus < an.esophagus_radius), "esophagus", "muscle")
        if has_ivc:
            paint(cavity & ~above & (F.ivc < an.ivc_radius), "vena_cava", "blood_venous")

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
        if z < an.pelvis.promontory_z:
            self.paint_sacrum()
        elif phase < an.disc_height / an.vertebra_period:
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

    def paint_sacrum(self) -> None:
        """Sacrum below the promontory: wide, narrowing and curving backwards further down."""
        an, F, z = self.an, self.F, self.z
        depth = an.pelvis.promontory_z - z
        half_width = an.pelvis.sacrum_semi[0] * (1.0 - 0.6 * min(depth / 120.0, 1.0))
        half_depth = an.pelvis.sacrum_semi[1]
        centre_v = an.vb_v - 0.25 * depth
        du, dv = F.u - an.spine_u, F.v - centre_v
        bone = (du / half_width) ** 2 + (dv / half_depth) ** 2 < 1.0
        core = (du / (half_width - 2.5)) ** 2 + (dv / (half_depth - 2.5)) ** 2 < 1.0
        self.paint(bone, "pelvis_bone", "cortical")
        self.paint(core, "pelvis_bone", "trabecular")

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
        if z < an.rib_bottom:
            return  # below the twelfth rib (and the sternum)
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

    def paint_arms(self) -> None:
        """Arms beside the trunk: fat, muscle, and the humerus or the two forearm bones."""
        an, z, paint = self.an, self.z, self.paint
        for arm, fields in zip(an.arms, self.F.arms, strict=False):
            skin = (fields.skin < 1.0) & ~self.body
            paint(skin, "arm_fat", "fat_subcutaneous")
            paint(skin & (fields.muscle < 1.0), "arm", "muscle")
            if z > an.elbow_z:
                bones = [(fields.humerus, *arm.humerus)]
            else:
                bones = [(d, *arm.forearm[:2]) for d in fields.forearm]
            for distance, radius, cortex in bones:
                paint(skin & (distance < radius), "arm_bone", "cortical")
                paint(skin & (distance < radius - cortex), "arm_bone", "marrow")
            self.body = self.body | skin

    def paint_table(self) -> None:
        """The patient table and mattress below the back (outside the body and arms)."""
        for mask, material in self.F.table:
            self.paint(mask & ~self.body, "table", material)
