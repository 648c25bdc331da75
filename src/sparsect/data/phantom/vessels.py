"""Branching vessel trees grown in 3D through the painted lungs and liver."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from sparsect.data.phantom.grid import _Grid, _segment_coverage
from sparsect.data.phantom.materials import _M
from sparsect.data.phantom.shapes import _norm3, _rows_dot3
from sparsect.priors.organs import ORGAN_LABELS as _L


class _TreeSpec(NamedTuple):
    host: int  # organ label the vessels grow in (and replace)
    label: int  # organ label painted on vessel voxels
    material: str
    per_side: bool  # one tree system per body side (the two lungs)
    roots: int  # roots per system
    root_radius_mm: tuple[float, float]
    min_radius_mm: float
    max_segments: int  # per system


# Pulmonary vessels (blood, +40 HU, in -850 HU lung) and hepatic veins (venous blood,
# slightly hypodense to +60 HU liver on non-contrast CT, bright in the portal-venous
# phase; still liver parenchyma).
_LUNG_TREES = _TreeSpec(_L["lung"], _L["lung_vessel"], "blood", True, 8, (4.0, 6.5), 0.9, 500)
_LIVER_TREES = _TreeSpec(_L["liver"], _L["liver"], "blood_venous", False, 3, (3.0, 4.5), 1.2, 60)

_Branch = tuple[np.ndarray, np.ndarray, float]  # start (world mm), unit direction, radius


def _grow_vessel_trees(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    spec: _TreeSpec,
) -> None:
    """Paints branching vessel trees into an organ.

    Trees start at the most medial points of the organ (towards the hilum)
    and branch towards random points of the same organ, with radii shrinking
    at each bifurcation, so vessels are thick centrally and thin peripherally.
    """
    host_index = np.flatnonzero(labels_ss == spec.host)
    if host_index.size < 1000:
        return
    sample = np.sort(rng.choice(host_index, size=min(5000, host_index.size), replace=False))
    ix, iy, iz = np.unravel_index(sample, labels_ss.shape)
    points = np.stack([grid.x[ix], grid.y[iy], grid.z[iz]], axis=1)
    # Sides in anatomical coordinates (u > 0 is the patient's right).
    side_of = np.where(grid.u[ix, iy] > 0, 1, -1) if spec.per_side else np.ones(ix.size, int)
    medial = np.abs(grid.u[ix, iy])
    for side in (1, -1) if spec.per_side else (1,):
        mine = side_of == side
        if mine.sum() < 200:
            continue
        pts = points[mine]
        queue = _tree_roots(rng, grid, spec, pts, medial[mine], side)
        _grow_tree(rng, grid, labels_ss, material_ss, spec, pts, queue)


def _tree_roots(
    rng: np.random.Generator,
    grid: _Grid,
    spec: _TreeSpec,
    pts: np.ndarray,
    medial: np.ndarray,
    side: int,
) -> deque[_Branch]:
    """The first branches of one tree system, from sample points ``pts`` of one side."""
    # Roots among the most medial points of the organ's upper half (the
    # hilum lies above a lower-thorax slab, so vessels mostly run downwards).
    upper = np.flatnonzero(pts[:, 2] >= np.median(pts[:, 2]))
    order = upper[np.argsort(medial[upper], kind="stable")]
    roots = order[: max(spec.roots, order.size // 10)]
    # Breadth-first, so that the segment budget is spent generation by
    # generation (all trunks before any twig) rather than on one subtree.
    queue: deque[_Branch] = deque()
    # From the hilum outwards, backwards and mostly downwards (lower lobes).
    lateral = np.array([0.6 * side, -0.3, -1.0])
    for root in rng.choice(roots, size=min(spec.roots, roots.size), replace=False):
        radius = float(rng.uniform(*spec.root_radius_mm)) * grid.scale
        direction = lateral + np.array([0.0, 0.0, rng.uniform(0.0, 1.2)])
        queue.append((pts[root], direction / _norm3(direction), radius))
    return queue


def _grow_tree(
    rng: np.random.Generator,
    grid: _Grid,
    labels_ss: np.ndarray,
    material_ss: np.ndarray,
    spec: _TreeSpec,
    pts: np.ndarray,
    queue: deque[_Branch],
) -> None:
    """Grows and paints branches from ``queue`` until it runs dry or the budget is spent."""
    nz = labels_ss.shape[2]
    step = (grid.x[1] - grid.x[0], grid.y[1] - grid.y[0], grid.z[1] - grid.z[0] if nz > 1 else 1)
    segments = 0
    while queue and segments < spec.max_segments:
        start, direction, radius = queue.popleft()
        length = float(np.clip(radius * rng.uniform(6.0, 10.0), 5.0, 35.0))
        target = _next_target(rng, pts, start, direction, length)
        if target is None:
            continue
        heading = (target - start) / _norm3(target - start)
        new_dir = 0.4 * direction + 0.6 * heading
        new_dir /= _norm3(new_dir)
        end = start + length * new_dir
        if not _inside_host(end, grid, step, labels_ss, spec):
            continue
        covered = _segment_coverage(grid, start, end, radius)
        if covered is not None:
            window, inside = covered
            inside &= labels_ss[window] == spec.host
            labels_ss[window][inside] = spec.label
            material_ss[window][inside] = _M[spec.material]
        segments += 1
        # Asymmetric bifurcation (a major and a minor daughter), roughly Murray's law.
        for child in (radius * rng.uniform(0.75, 0.88), radius * rng.uniform(0.6, 0.8)):
            if child >= spec.min_radius_mm * grid.scale:
                queue.append((end, new_dir, child))


def _next_target(
    rng: np.random.Generator,
    pts: np.ndarray,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
) -> np.ndarray | None:
    """A random sample point about ``length`` ahead of ``start``, or None if there is none."""
    rel = pts - start
    dist = np.sqrt(_rows_dot3(rel, rel))
    cosine = _rows_dot3(rel, direction) / np.maximum(dist, 1e-6)
    near = (dist > 0.5 * length) & (dist < 3.0 * length)
    candidates = np.flatnonzero(near & (cosine > 0.3))
    if candidates.size == 0:  # nothing ahead: allow a sharper turn
        candidates = np.flatnonzero(near & (cosine > -0.2))
    if candidates.size == 0:
        return None
    return pts[candidates[int(rng.integers(candidates.size))]]


def _inside_host(
    p: np.ndarray,
    grid: _Grid,
    step: tuple[float, float, float],
    labels_ss: np.ndarray,
    spec: _TreeSpec,
) -> bool:
    """Whether world point ``p`` falls on a host (or vessel) voxel of the supersampled grid."""
    nx, ny, nz = labels_ss.shape
    i, j, k = (int(round((p[a] - c[0]) / step[a])) for a, c in enumerate((grid.x, grid.y, grid.z)))
    if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
        return False
    return labels_ss[i, j, k] in (spec.host, spec.label)
