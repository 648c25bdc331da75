"""The follow-up cohort: pairs of scans of one anatomy, an earlier baseline and a follow-up.

A prior image helps only where it carries what the sparse scan lacks, and it can hide
what changed since it was taken. Measuring both needs pairs whose every difference is
known. Each subject here is one phantom anatomy (the generator's, with a seed of its own,
no generator lesions), from which two scans are resampled on the reconstruction grid:

- the **baseline**: the anatomy on a grid shifted by a sub-slice offset along z;
- the **follow-up**: the anatomy pulled through a known deformation, the composition of
  - a rigid repositioning (in-plane rotation up to ``rotation_deg``, a shift up to
    ``shift_mm`` in every direction, so sub-slice along z too),
  - a smooth elastic field (breathing, bowel motion) up to ``elastic_mm`` in-plane and
    half of it along z,
  - a habitus change: the fat outside the muscle wall thicker or thinner by up to
    ``fat_change`` (a radial stretch of that layer);

  then with the contrast phase drawn anew (per-organ enhancement changes), the bowel
  contents drawn anew (fluid and oral contrast in some loops, gas pockets filled or
  added), and lesions that changed.

Lesions (spheres with partial volume, inside liver or lung, as in :mod:`.cohort`) are
placed in the follow-up frame; the baseline holds each at the point the true field maps
it to:

- ``new``: in the follow-up only (its map ``new_hu`` is kept apart, so that lesion-present
  and lesion-absent follow-ups of one anatomy exist, as the task study needs);
- ``grown`` / ``shrunk``: in both, the follow-up's diameter at least ``changed_min_mm``;
- ``resolved``: in the baseline only (its map ``resolved_hu`` on the baseline grid is kept
  apart, so that a baseline without it exists: the ghost-contrast control);
- ``stable``: the same in both;
- ``lobulated``: new, but not a sphere: a union of 3 to 5 overlapping spheres (a central
  one and 2 to 4 lobes on its rim). A change type the training pairs never hold
  (``lesions: {lobulated: 0}`` there): the test cohort's check that a model fed a prior
  shows what it never learned to expect. In ``new_hu`` with the new lesions, scored apart.

The true field is stored: ``field[z, r, c]`` is the position (mm, ``(z, row, col)``, in the
baseline grid's frame centred on its middle voxel) that follow-up voxel ``(z, r, c)``
shows, minus that voxel's own position. Everything is deterministic in ``(seed,
subject)``; trigonometry and Gaussian draws go through :mod:`sparsect.data.fpmath`, so
the bytes do not depend on the processor's SIMD extensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from sparsect.data import fpmath
from sparsect.data.cohort import HOSTS, sphere_coverage
from sparsect.data.phantom import PhantomConfig
from sparsect.priors.organs import ORGAN_LABELS

ARRAYS = ("baseline_hu", "baseline_labels", "resolved_hu", "followup_hu", "followup_labels",
          "new_hu", "field")
"""The arrays of a :class:`Pair`, as ``followup_cohort`` stores them (stacked over subjects)."""

KINDS = ("new", "grown", "shrunk", "resolved", "stable", "lobulated")
"""Lesion kinds (drawn in the order :data:`DRAW_ORDER`)."""
DRAW_ORDER = ("grown", "shrunk", "resolved", "stable", "new", "lobulated")
"""The rarer kinds first, so that a crowded subject runs short of new lesions only; the
lobulated ones last, so that adding them moves no other lesion."""
NEW_KINDS = ("new", "lobulated")
"""Kinds in the follow-up only (``new_hu``)."""

_L = ORGAN_LABELS
ENHANCEMENT_CHANGE_HU: dict[int, float] = {
    _L["liver"]: 30.0, _L["spleen"]: 40.0, _L["kidney"]: 80.0, _L["aorta"]: 120.0,
    _L["vena_cava"]: 100.0, _L["heart"]: 100.0, _L["myocardium"]: 30.0,
    _L["lung_vessel"]: 60.0, _L["stomach"]: 10.0,
}
"""Organ label -> largest change (HU, uniform +-) of its enhancement between two scans: a
new contrast phase or timing (arterial blood swings most, parenchyma less)."""

HOSTS_FOLLOWUP: dict[str, tuple[int, ...]] = {**HOSTS, "soft tissue": (_L["muscle"],)}
"""Lesion hosts: the task cohort's (liver, lung), and soft tissue for a real scan whose
organ map holds neither (:mod:`sparsect.priors.organ_map`)."""
_MIN_HOST_PIXELS = 200
_FAT = (_L["fat"], _L["arm_fat"])
_NOT_BODY = (_L["background"], _L["table"])


@dataclass(frozen=True)
class FollowupSpec:
    """How many subjects and lesions, and the ranges of every change (uniform draws)."""

    subjects: int = 36
    seed: int = 4099
    slices: int = 12
    margin_slices: int = 2
    """Extra anatomy slices above and below, so that a z shift stays inside it."""
    lesions: dict[str, int] = field(default_factory=lambda: {
        "new": 8, "grown": 1, "shrunk": 1, "resolved": 2, "stable": 1})
    """Kind -> lesions per subject (fewer where the hosts have no room)."""
    min_new_lesions: int = 140
    """The cohort must hold at least this many new lesions (the sizing in
    docs/evaluation/followup.md)."""
    diameter_mm: tuple[float, float] = (6.0, 20.0)
    changed_min_mm: float = 10.0
    change_factor: tuple[float, float] = (1.3, 1.8)
    """Diameter ratio of a grown or shrunk lesion between the two scans."""
    contrast_hu: tuple[float, float] = (10.0, 100.0)
    roi_px: int = 17
    shift_mm: float = 10.0
    rotation_deg: float = 3.0
    elastic_mm: float = 10.0
    fat_change: float = 0.05
    bowel_change_probability: float = 0.5
    gas_fill_probability: float = 0.4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.lesions) - set(KINDS))
        if unknown or any(int(v) < 0 for v in self.lesions.values()):
            raise ValueError(f"lesions must map kinds among {list(KINDS)} to counts >= 0, "
                             f"got {dict(self.lesions)}")
        if self.subjects < 1 or self.slices < 3 or self.margin_slices < 1:
            raise ValueError("a follow-up cohort needs >= 1 subject, >= 3 slices and a "
                             "margin of >= 1 slice")
        if self.roi_px < 5 or self.roi_px % 2 == 0:
            raise ValueError(f"roi_px must be odd and >= 5, got {self.roi_px}")
        if not 0 < self.diameter_mm[0] <= self.diameter_mm[1]:
            raise ValueError(f"diameter_mm must be 0 < low <= high, got {self.diameter_mm}")
        if not 1 < self.change_factor[0] <= self.change_factor[1]:
            raise ValueError(f"change_factor must be 1 < low <= high, got {self.change_factor}")
        if min(self.shift_mm, self.rotation_deg, self.elastic_mm, self.fat_change) < 0:
            raise ValueError("shift_mm, rotation_deg, elastic_mm and fat_change must be >= 0")


@dataclass
class Pair:
    """One subject's baseline and follow-up on the reconstruction grid, ``(Z, H, W)`` each.

    ``baseline_hu`` holds every baseline lesion (``resolved_hu`` among them);
    ``followup_hu`` every follow-up lesion except the new ones (``new_hu``);
    ``field``: ``(Z, H, W, 3)`` float32 mm, the true follow-up -> baseline displacement;
    ``motion``: the drawn repositioning, elastic amplitude and habitus change;
    ``lesions``: one record per lesion (kind, host, contrast, the follow-up centre
    ``slice/row/col`` and diameter, the baseline centre ``baseline_zrc`` and diameter)."""

    baseline_hu: np.ndarray
    baseline_labels: np.ndarray
    resolved_hu: np.ndarray
    followup_hu: np.ndarray
    followup_labels: np.ndarray
    new_hu: np.ndarray
    field: np.ndarray
    motion: dict
    lesions: list[dict]


def _centred(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """``(3, Z, H, W)`` voxel positions in mm, centred on the middle voxel."""
    grids = np.meshgrid(*[(np.arange(n, dtype=np.float64) - (n - 1) / 2) * s
                          for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return np.stack(grids)


def _sample(volume: np.ndarray, positions: np.ndarray, spacing: tuple[float, float, float],
            z_offset: float, order: int) -> np.ndarray:
    """``volume`` (anatomy grid) at ``(3, ...)`` mm positions of a centred frame whose
    middle lies ``z_offset`` slices above the anatomy's middle."""
    shape = volume.shape
    coords = [positions[0] / spacing[0] + (shape[0] - 1) / 2 + z_offset,
              positions[1] / spacing[1] + (shape[1] - 1) / 2,
              positions[2] / spacing[2] + (shape[2] - 1) / 2]
    return ndimage.map_coordinates(volume, coords, order=order, mode="nearest",
                                   prefilter=False)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing: tuple[float, float, float], amplitude_mm: tuple[float, float, float]
                  ) -> np.ndarray:
    """``(3, Z, H, W)`` smooth random displacement (mm) whose largest magnitude per axis is
    ``amplitude_mm``: Gaussian noise on a coarse lattice, interpolated linearly and
    smoothed (a few centimetres' correlation length)."""
    coarse = (3, 5, 5)
    out = np.empty((3, *shape), np.float64)
    coords = np.meshgrid(*[np.linspace(0, c - 1, n) for c, n in zip(coarse, shape, strict=True)],
                         indexing="ij")
    sigma = [max(0.5, 20.0 / s) for s in spacing]
    for axis in range(3):
        lattice = fpmath.normal(rng, coarse)
        dense = ndimage.map_coordinates(lattice, coords, order=1, mode="nearest")
        dense = ndimage.gaussian_filter(dense, sigma, mode="nearest")
        peak = np.abs(dense).max()
        out[axis] = dense * (amplitude_mm[axis] / peak if peak > 0 else 0.0)
    return out


def _habitus(labels: np.ndarray, spacing: tuple[float, float, float], change: float
             ) -> np.ndarray:
    """``(3, Z, H, W)`` pull-back displacement (mm) that scales the fat outside the muscle
    wall by ``1 + change``: a point at distance ``d`` outside the wall shows what lay at
    ``d / (1 + change)``, along the wall's outward normal (in-plane, slice by slice)."""
    out = np.zeros((3, *labels.shape), np.float64)
    if change == 0:
        return out
    for z in range(labels.shape[0]):
        body = ~np.isin(labels[z], _NOT_BODY)
        wall = ndimage.binary_fill_holes(body & ~np.isin(labels[z], _FAT))
        if not wall.any() or wall.all():
            continue
        distance, (rows, cols) = ndimage.distance_transform_edt(
            ~wall, sampling=spacing[1:], return_indices=True)
        cap = distance[body].max() + 3.0 if body.any() else 0.0
        r, c = np.indices(wall.shape)
        # the outward normal: away from the nearest wall point
        dr, dc = (r - rows) * spacing[1], (c - cols) * spacing[2]
        norm = np.sqrt(dr * dr + dc * dc)
        norm[norm == 0] = 1.0
        shrink = -change / (1.0 + change) * np.minimum(distance, cap)
        out[1, z] = shrink * dr / norm
        out[2, z] = shrink * dc / norm
    return out


def _contrast_and_bowel(rng: np.random.Generator, hu: np.ndarray, labels: np.ndarray,
                        spec: FollowupSpec, spacing: tuple[float, float, float]) -> dict:
    """Redraws enhancement and bowel contents of the follow-up in place; returns the draws."""
    changes = {}
    for label, span in ENHANCEMENT_CHANGE_HU.items():
        delta = float(rng.uniform(-span, span))
        changes[str(label)] = round(delta, 3)
        hu[labels == label] += delta
    loops, count = ndimage.label(labels == _L["bowel"])
    changed = 0
    for loop in range(1, count + 1):
        if rng.uniform() < spec.bowel_change_probability:
            # fluid of another density, or positive oral contrast in one loop of five
            delta = (float(rng.uniform(150.0, 300.0)) if rng.uniform() < 0.2
                     else float(rng.uniform(-20.0, 40.0)))
            hu[loops == loop] += delta
            changed += 1
    gas, pockets = ndimage.label(labels == _L["bowel_gas"])
    filled = 0
    for pocket in range(1, pockets + 1):
        if rng.uniform() < spec.gas_fill_probability:
            inside = gas == pocket
            hu[inside] = 15.0 + (hu[inside] - hu[inside].mean()) * 0.1
            labels[inside] = _L["colon"]
            filled += 1
    added = 0
    colon = np.argwhere(labels == _L["colon"])
    for _ in range(int(rng.integers(0, 3))):
        if colon.size == 0:
            break
        z, r, c = (int(v) for v in colon[int(rng.integers(len(colon)))])
        radius = float(rng.uniform(3.0, 8.0))
        cover = sphere_coverage(labels.shape, (z, r, c), radius, spacing[1], spacing[0])
        cover *= labels == _L["colon"]
        hu += cover * (-950.0 - hu)
        labels[cover >= 0.5] = _L["bowel_gas"]
        added += 1
    return {"enhancement_change_hu": changes, "bowel_loops_changed": changed,
            "gas_pockets_filled": filled, "gas_pockets_added": added}


def _place(rng: np.random.Generator, followup_labels: np.ndarray, baseline_labels: np.ndarray,
           field_mm: np.ndarray, spec: FollowupSpec, spacing: tuple[float, float, float],
           subject: int) -> list[dict]:
    """Draws the lesions: follow-up centres far enough apart, inside their host in the
    follow-up and (where the baseline holds them) at their true baseline position."""
    records: list[dict] = []
    half = spec.roi_px // 2
    kinds = [k for k in DRAW_ORDER for _ in range(int(spec.lesions.get(k, 0)))]
    hosts = tuple(h for h in ("liver", "lung")
                  if np.isin(followup_labels, HOSTS[h]).sum() >= _MIN_HOST_PIXELS)
    hosts = hosts or ("soft tissue",)
    shape = followup_labels.shape
    for index, kind in enumerate(kinds):
        host = hosts[index % len(hosts)]
        for _attempt in range(100):
            low = spec.changed_min_mm if kind in ("grown", "shrunk") else spec.diameter_mm[0]
            diameter = float(rng.uniform(low, max(low, spec.diameter_mm[1])))
            factor = float(rng.uniform(*spec.change_factor))
            baseline_d = {"new": 0.0, "lobulated": 0.0, "grown": diameter / factor,
                          "shrunk": diameter * factor, "resolved": diameter,
                          "stable": diameter}[kind]
            followup_d = 0.0 if kind == "resolved" else diameter
            contrast = float(rng.uniform(*spec.contrast_hu))
            sign = -1.0 if host == "liver" and rng.uniform() < 0.6 else 1.0
            z = int(rng.integers(1, shape[0] - 1))
            lobes = _lobes(rng, diameter) if kind == "lobulated" else []
            # a lobe reaches at most 1.6 radii from the centre
            biggest = max(baseline_d, followup_d) * (1.6 if lobes else 1.0)
            margin = int(np.ceil(biggest / 2 / spacing[1])) + 1
            inner = ndimage.binary_erosion(np.isin(followup_labels[z], HOSTS_FOLLOWUP[host]),
                                           np.ones((2 * margin + 1,) * 2, bool))
            inner[:half] = inner[-half:] = False
            inner[:, :half] = inner[:, -half:] = False
            candidates = np.argwhere(inner)
            if candidates.size == 0:
                continue
            row, col = (int(v) for v in candidates[int(rng.integers(len(candidates)))])
            if any(abs(r["slice"] - z) <= 2 and max(abs(r["row"] - row), abs(r["col"] - col))
                   < spec.roi_px for r in records):
                continue
            moved = field_mm[z, row, col] / np.asarray(spacing)
            bz, br, bc = (float(v) for v in np.array([z, row, col]) + moved)
            if kind not in NEW_KINDS:
                if not (0 <= bz <= shape[0] - 1 and half <= br < shape[1] - half
                        and half <= bc < shape[2] - half):
                    continue
                if not np.isin(baseline_labels[int(round(bz)), int(round(br)), int(round(bc))],
                               HOSTS_FOLLOWUP[host]):
                    continue
            records.append({
                "subject": subject, "kind": kind, "host": host,
                "contrast_hu": round(sign * contrast, 3), "slice": z, "row": row, "col": col,
                "diameter_mm": round(followup_d, 3), "baseline_diameter_mm": round(baseline_d, 3),
                "baseline_zrc": [round(bz, 4), round(br, 4), round(bc, 4)],
                **({"lobes": lobes} if lobes else {})})
            break
    return records


def _lobes(rng: np.random.Generator, diameter: float) -> list[list[float]]:
    """2 to 4 lobes of a lobulated lesion of ``diameter`` (mm): each ``[dz, dr, dc, d]`` in
    mm, its centre 0.6 to 0.9 radii from the lesion's (in-plane, at an angle spread
    around the rim, a little along z) and its diameter 0.5 to 0.7 of the lesion's."""
    radius = diameter / 2
    count = int(rng.integers(2, 5))
    start = float(rng.uniform(0.0, 2 * fpmath.PI))
    out = []
    for i in range(count):
        angle = start + 2 * fpmath.PI * i / count + float(rng.uniform(-0.4, 0.4))
        distance = float(rng.uniform(0.6, 0.9)) * radius
        cos, sin = (float(f(np.array([angle]))[0]) for f in (fpmath.cos, fpmath.sin))
        out.append([round(float(rng.uniform(-0.3, 0.3)) * radius, 4),
                    round(distance * sin, 4), round(distance * cos, 4),
                    round(float(rng.uniform(0.5, 0.7)) * diameter, 4)])
    return out


def _render(records: list[dict], labels: np.ndarray, spacing: tuple[float, float, float],
            baseline: bool, kinds: tuple[str, ...]) -> np.ndarray:
    out = np.zeros(labels.shape, np.float32)
    for lesion in records:
        if lesion["kind"] not in kinds:
            continue
        if baseline:
            centre, diameter = tuple(lesion["baseline_zrc"]), lesion["baseline_diameter_mm"]
        else:
            centre = (lesion["slice"], lesion["row"], lesion["col"])
            diameter = lesion["diameter_mm"]
        cover = sphere_coverage(labels.shape, centre, diameter / 2, spacing[1], spacing[0])
        for dz, dr, dc, d in lesion.get("lobes", []):  # a union: the largest coverage
            lobe = (centre[0] + dz / spacing[0], centre[1] + dr / spacing[1],
                    centre[2] + dc / spacing[2])
            cover = np.maximum(cover, sphere_coverage(labels.shape, lobe, d / 2, spacing[1],
                                                      spacing[0]))
        cover *= np.isin(labels, HOSTS_FOLLOWUP[lesion["host"]])
        out += np.float32(lesion["contrast_hu"]) * cover
    return out


def make_pair(anatomy_hu: np.ndarray, anatomy_labels: np.ndarray, spec: FollowupSpec,
              spacing: tuple[float, float, float], seed: int, subject: int,
              baseline_smoothing_px: float = 0.0) -> Pair:
    """A baseline and a follow-up of one anatomy ``(Z0, H, W)`` (``Z0 = slices + 2 margin``)
    on a grid of ``spacing`` (slice, row, col mm); deterministic in ``(seed, subject)``.

    Real scans go through this too: their anatomy is the scan (and its organ labels), and
    ``baseline_smoothing_px`` (an in-plane Gaussian's sigma) takes the scan's own noise
    out of the baseline, so that a prior made from it does not hold the follow-up
    reference's noise."""
    if anatomy_hu.shape[0] < spec.slices + 2 * spec.margin_slices:
        raise ValueError(f"the anatomy has {anatomy_hu.shape[0]} slices; the follow-up needs "
                         f"{spec.slices} + 2 x {spec.margin_slices}")
    rng = np.random.default_rng([int(seed), int(subject), 28])
    shape = (spec.slices, *anatomy_hu.shape[1:])
    anatomy_hu = np.asarray(anatomy_hu, np.float64)
    # the baseline: a sub-slice offset along z
    baseline_dz = float(rng.uniform(-0.5, 0.5))
    grid = _centred(shape, spacing)
    base_at = baseline_dz
    source = anatomy_hu
    if baseline_smoothing_px > 0:
        source = ndimage.gaussian_filter(anatomy_hu, (0.0, baseline_smoothing_px,
                                                      baseline_smoothing_px), mode="nearest")
    baseline_hu = _sample(source, grid, spacing, base_at, 1)
    baseline_labels = _sample(anatomy_labels, grid, spacing, base_at, 0)
    # the follow-up: rigid, then elastic, then habitus (pull-back, in that order)
    angle = float(rng.uniform(-1, 1)) * spec.rotation_deg * fpmath.PI / 180.0
    shift = rng.uniform(-1, 1, 3) * spec.shift_mm / np.sqrt(3.0)
    cos, sin = (float(f(np.array([angle]))[0]) for f in (fpmath.cos, fpmath.sin))
    rigid = np.stack([grid[0] + shift[0], cos * grid[1] - sin * grid[2] + shift[1],
                      sin * grid[1] + cos * grid[2] + shift[2]])
    elastic_amp = float(rng.uniform(0.4, 1.0)) * spec.elastic_mm
    elastic = _smooth_field(rng, shape, spacing, (elastic_amp / 2, elastic_amp, elastic_amp))
    moved = rigid + np.stack([ndimage.map_coordinates(
        elastic[a], [rigid[0] / spacing[0] + (shape[0] - 1) / 2,
                     rigid[1] / spacing[1] + (shape[1] - 1) / 2,
                     rigid[2] / spacing[2] + (shape[2] - 1) / 2],
        order=1, mode="nearest", prefilter=False) for a in range(3)])
    fat = float(rng.uniform(-1, 1)) * spec.fat_change
    habitus = _habitus(anatomy_labels, spacing, fat)
    moved = moved + np.stack([_sample(habitus[a], moved, spacing, 0.0, 1) for a in range(3)])
    followup_hu = _sample(anatomy_hu, moved, spacing, 0.0, 1)
    followup_labels = _sample(anatomy_labels, moved, spacing, 0.0, 0)
    # positions in the baseline grid's frame: its middle lies baseline_dz slices higher
    field_mm = (moved - grid).astype(np.float64)
    field_mm[0] -= baseline_dz * spacing[0]
    field_mm = np.moveaxis(field_mm, 0, -1)
    draws = _contrast_and_bowel(rng, followup_hu, followup_labels, spec, spacing)
    lesions = _place(rng, followup_labels, baseline_labels, field_mm, spec, spacing, subject)
    baseline_lesions = _render(lesions, baseline_labels, spacing, True,
                               ("grown", "shrunk", "resolved", "stable"))
    resolved_hu = _render(lesions, baseline_labels, spacing, True, ("resolved",))
    followup_lesions = _render(lesions, followup_labels, spacing, False,
                               ("grown", "shrunk", "stable"))
    new_hu = _render(lesions, followup_labels, spacing, False, NEW_KINDS)
    motion = {"baseline_dz_slices": round(baseline_dz, 6), "rotation_deg": round(
        angle * 180.0 / fpmath.PI, 6), "shift_mm": [round(float(v), 6) for v in shift],
        "elastic_mm": round(elastic_amp, 6), "fat_change": round(fat, 6), **draws}
    return Pair((baseline_hu + baseline_lesions).astype(np.float32),
                baseline_labels.astype(np.int16), resolved_hu,
                (followup_hu + followup_lesions).astype(np.float32),
                followup_labels.astype(np.int16), new_hu, field_mm.astype(np.float32),
                motion, lesions)


def _anatomy(subject: int, seed: int, spec: FollowupSpec, phantom: PhantomConfig,
             image_size: int, pixel_size_mm: float, hu_clip: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    from sparsect.data.cohort import CohortSpec, _reference

    slab = spec.slices + 2 * spec.margin_slices
    phantom = replace(phantom, shape=(phantom.shape[0], phantom.shape[1], slab), lesions=(0, 0),
                      pelvic_probability=0.0,
                      dome_level_mm=(0.0, spec.slices * phantom.spacing_mm[2] / 2))
    return _reference(subject, CohortSpec(seed=seed, slices=slab), phantom, image_size,
                      pixel_size_mm, hu_clip)


def _subject(job: tuple) -> Pair:
    subject, seed, spec, phantom, image_size, pixel_size_mm, hu_clip = job
    hu, labels = _anatomy(subject, seed, spec, phantom, image_size, pixel_size_mm, hu_clip)
    spacing = (float(phantom.spacing_mm[2]), float(pixel_size_mm), float(pixel_size_mm))
    return make_pair(hu, labels, spec, spacing, seed, subject)


def build_pairs(spec: FollowupSpec, phantom: PhantomConfig, image_size: int,
                pixel_size_mm: float, hu_clip: tuple[float, float],
                subjects: list[int] | None = None, seed: int | None = None,
                workers: int = 1) -> list[Pair]:
    """The pairs of ``subjects`` (default ``range(spec.subjects)``) of ``seed`` (default
    ``spec.seed``; the data set's seed with its training or validation subjects gives the
    pairs a prior model learns and is tuned on), whatever ``workers``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    seed = spec.seed if seed is None else int(seed)
    subjects = list(range(spec.subjects)) if subjects is None else [int(s) for s in subjects]
    jobs = [(s, seed, spec, phantom, image_size, pixel_size_mm, hu_clip) for s in subjects]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_subject, jobs))
    return [_subject(job) for job in jobs]
