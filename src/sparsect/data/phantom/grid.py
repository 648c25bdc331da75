"""The supersampled grid a phantom is painted on, in world and anatomical coordinates."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sparsect.data import fpmath
from sparsect.data.phantom.anatomy import _Anatomy, _body_radius
from sparsect.data.phantom.config import PhantomConfig
from sparsect.data.phantom.shapes import _cos_sin, _dot3


class _Grid(NamedTuple):
    """Supersampled crop of the volume in world and anatomical coordinates."""

    crop: tuple[slice, slice]  # native in-plane index window
    x: np.ndarray  # (Nx,) world x (mm) of supersampled columns
    y: np.ndarray  # (Ny,) world y
    z: np.ndarray  # (Nz,) world z of sub-slices
    u: np.ndarray  # (Nx, Ny) anatomical coordinates (mm)
    v: np.ndarray
    scale: float  # world mm per anatomical mm
    floor_y: float  # world y (mm) of the lowest point of the body and arms: the table's top


def _fit_scale(an: _Anatomy, config: PhantomConfig) -> float:
    """Shrinks the anatomy if needed so the body stays inside the reconstruction circle."""
    theta = np.linspace(-np.pi, np.pi, 721)
    r_max = max(_body_radius(an, theta, abdomen).max() for abdomen in (False, True))
    fov_radius = min(n * s for n, s in zip(config.shape[:2], config.spacing_mm[:2], strict=True))
    limit = fov_radius / 2 - config.fov_margin_mm - float(fpmath.hypot(*an.offset))
    if limit <= 0:
        raise ValueError(
            f"field of view {fov_radius:.0f} mm is too small for a torso phantom: "
            "use more voxels or larger spacing"
        )
    return min(1.0, limit / float(r_max))


def _subsample(i0: int, i1: int, n: int, s: float, k: int) -> np.ndarray:
    """Centres of ``k`` sub-samples in each of voxels ``i0 .. i1 - 1`` of an ``n``-voxel axis."""
    centres = (np.arange(i0, i1) - (n - 1) / 2) * s
    offsets = ((np.arange(k) + 0.5) / k - 0.5) * s
    return (centres[:, None] + offsets[None, :]).ravel()


def _make_grid(an: _Anatomy, config: PhantomConfig) -> _Grid:
    """The supersampled grid over the body's bounding box, plus a margin for the blur."""
    nx, ny, nz = config.shape
    sx, sy, sz = config.spacing_mm
    f, fz = config.supersample, config.slab_samples
    scale = _fit_scale(an, config)
    cos, sin = _cos_sin(an.rotation)

    # Bounding box of the body outline in world coordinates, plus a margin for the PSF.
    theta = np.linspace(-np.pi, np.pi, 721)
    radius = np.maximum(_body_radius(an, theta, False), _body_radius(an, theta, True)) * scale
    bu, bv = radius * fpmath.cos(theta), radius * fpmath.sin(theta)
    bx = an.offset[0] + cos * bu - sin * bv
    by = an.offset[1] + sin * bu + cos * bv
    if an.arms_down:
        for arm in an.arms:
            # The outline's bumps stay within 15 % of its semi-axes.
            (cu, cv), (su, sv) = arm.outline.centre, arm.outline.semi
            au = radius.dtype.type(1.15 * su) * fpmath.cos(theta) + cu
            av = radius.dtype.type(1.15 * sv) * fpmath.sin(theta) + cv
            bx = np.concatenate([bx, an.offset[0] + (cos * au - sin * av) * scale])
            by = np.concatenate([by, an.offset[1] + (sin * au + cos * av) * scale])
    floor_y = float(by.min())
    x_low, x_high, y_low, y_high = float(bx.min()), float(bx.max()), floor_y, float(by.max())
    if an.table:
        x_low = min(x_low, an.table_x - an.table_half_width)
        x_high = max(x_high, an.table_x + an.table_half_width)
        y_low = floor_y - an.table_gap - an.table_thickness
    margin = 3
    ix0 = max(0, int(np.floor(x_low / sx + (nx - 1) / 2)) - margin)
    ix1 = min(nx, int(np.ceil(x_high / sx + (nx - 1) / 2)) + margin + 1)
    iy0 = max(0, int(np.floor(y_low / sy + (ny - 1) / 2)) - margin)
    iy1 = min(ny, int(np.ceil(y_high / sy + (ny - 1) / 2)) + margin + 1)

    x = _subsample(ix0, ix1, nx, sx, f)
    y = _subsample(iy0, iy1, ny, sy, f)
    z = _subsample(0, nz, nz, sz, fz)
    dx, dy = np.meshgrid(x - an.offset[0], y - an.offset[1], indexing="ij")
    # float32 is ample for mm coordinates and halves the cost of the per-pixel maths.
    u = ((cos * dx + sin * dy) / scale).astype(np.float32)
    v = ((-sin * dx + cos * dy) / scale).astype(np.float32)
    return _Grid((slice(ix0, ix1), slice(iy0, iy1)), x, y, z, u, v, scale, floor_y)


def _segment_coverage(
    grid: _Grid, start: np.ndarray, end: np.ndarray, radius: float
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Supersampled voxels within ``radius`` of the segment ``start``-``end`` (world mm)."""
    low = np.minimum(start, end) - radius
    high = np.maximum(start, end) + radius
    index = []
    for axis, coords in enumerate((grid.x, grid.y, grid.z)):
        i0 = int(np.searchsorted(coords, low[axis]))
        i1 = int(np.searchsorted(coords, high[axis], side="right"))
        if i1 <= i0:
            return None
        index.append(slice(i0, i1))
    x = grid.x[index[0]][:, None, None] - start[0]
    y = grid.y[index[1]][None, :, None] - start[1]
    z = grid.z[index[2]][None, None, :] - start[2]
    d = end - start
    length2 = _dot3(d, d)
    t = (x * d[0] + y * d[1] + z * d[2]) / length2 if length2 > 0 else 0.0 * x
    t = np.clip(t, 0.0, 1.0)
    dist2 = (x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2
    return (index[0], index[1], index[2]), dist2 < radius * radius
