"""An earlier scan registered to a sparse follow-up: rigid, then B-spline, by SimpleITK.

The earlier (baseline) scan is full dose; the follow-up exists at registration time only
as its sparse data, so the fixed image is a reconstruction of those (its FBP, or a
reconstruction that uses no prior), never its reference. Both are ``(Z, H, W)`` HU
volumes on grids of the same spacing, each in a frame centred on its middle voxel
(``(z, row, col)`` mm), the frame :mod:`sparsect.data.followup` stores its true field in.

- rigid: :class:`SimpleITK.Euler3DTransform` from the grids' centres, Mattes mutual
  information (streaks and changes share no intensities with the baseline, only their
  statistical dependence), two resolution levels, a fixed sampling seed;
- deformable: a cubic B-spline on a coarse mesh (``mesh`` control intervals per axis)
  on top of the rigid transform, the same metric, L-BFGS-B.

The result is a displacement field: ``field[z, r, c]`` is where (mm, baseline frame)
follow-up voxel ``(z, r, c)`` lies, minus its own position, so it compares with the true
field directly (target registration error, :func:`target_error`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["Registration", "identity", "overlap", "register_scans", "target_error", "warp"]

_HU_RANGE = (-1000.0, 1000.0)
_SEED = 28


@dataclass
class Registration:
    """``field``: ``(Z, H, W, 3)`` float32 mm (``(z, row, col)``); ``record``: the transforms'
    parameters and the metric before and after."""

    field: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


def _image(volume: np.ndarray, spacing: tuple[float, float, float]):  # noqa: ANN202
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.clip(np.asarray(volume, np.float32), *_HU_RANGE))
    xyz = (spacing[2], spacing[1], spacing[0])
    image.SetSpacing(xyz)
    image.SetOrigin(tuple(-(n - 1) / 2 * s for n, s in zip(image.GetSize(), xyz, strict=True)))
    return image


def _method(sampling: float = 0.25):  # noqa: ANN202
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, _SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def register_scans(fixed_hu: np.ndarray, moving_hu: np.ndarray,
                   spacing: tuple[float, float, float], deformable: bool = True,
                   mesh: tuple[int, int, int] = (4, 4, 2), iterations: int = 40,
                   sampling: float = 0.05) -> Registration:
    """Registers ``moving_hu`` (the baseline) to ``fixed_hu`` (the follow-up's own
    reconstruction); both ``(Z, H, W)`` on ``spacing`` (slice, row, col mm).

    Args:
        mesh: B-spline control intervals along x (col), y (row) and z.
        iterations: Per level, rigid and deformable each.
        sampling: Share of the voxels the deformable metric samples (the rigid one 25 %).
    """
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the same result on any machine
    fixed, moving = _image(fixed_hu, spacing), _image(moving_hu, spacing)
    rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = _method()
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01,
                                                    numberOfIterations=iterations)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(rigid, inPlace=True)
    before = method.MetricEvaluate(fixed, moving)
    method.Execute(fixed, moving)
    record: dict[str, Any] = {"rigid": [float(v) for v in rigid.GetParameters()],
                              "metric_before": float(before),
                              "metric_rigid": float(method.GetMetricValue())}
    transform = sitk.CompositeTransform(3)
    transform.AddTransform(rigid)
    if deformable:
        bspline = sitk.BSplineTransformInitializer(fixed, list(mesh), 3)
        method = _method(sampling)
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5,
                                    numberOfIterations=iterations,
                                    maximumNumberOfCorrections=5)
        method.SetMovingInitialTransform(rigid)
        method.SetInitialTransform(bspline, inPlace=True)
        method.Execute(fixed, moving)
        record["metric_deformable"] = float(method.GetMetricValue())
        record["mesh"] = list(mesh)
        transform.AddTransform(bspline)
    displacement = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
        fixed.GetSpacing(), fixed.GetDirection())
    xyz = sitk.GetArrayFromImage(displacement)  # (Z, H, W, (x, y, z))
    return Registration(np.ascontiguousarray(xyz[..., ::-1], np.float32), record)


def identity(shape: tuple[int, int, int]) -> Registration:
    """No registration: each follow-up voxel shows the baseline voxel of the same index."""
    return Registration(np.zeros((*shape, 3), np.float32), {"rigid": None})


def _moving_coords(displacement: np.ndarray, spacing: tuple[float, float, float],
                   moving_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Voxel coordinates in the moving grid of every fixed voxel; both grids are centred
    on their middle voxel, so grids of other sizes line up there."""
    fixed_shape = displacement.shape[:3]
    grid = np.indices(fixed_shape, dtype=np.float64)
    return [grid[a] - (fixed_shape[a] - 1) / 2 + displacement[..., a] / spacing[a]
            + (moving_shape[a] - 1) / 2 for a in range(3)]


def warp(moving: np.ndarray, displacement: np.ndarray, spacing: tuple[float, float, float],
         order: int = 1, fill: float | None = None) -> np.ndarray:
    """``moving`` ``(Z, H, W)`` (baseline frame) resampled on the follow-up grid through a
    displacement field (``order`` 1: linear, 0: nearest for labels); outside the
    baseline: ``fill`` (None: the nearest edge value)."""
    shape = moving.shape
    coords = _moving_coords(displacement, spacing, shape)
    if fill is None:
        return ndimage.map_coordinates(moving, coords, order=order, mode="nearest",
                                       prefilter=False)
    inside = np.all([(c >= -0.5) & (c <= n - 0.5) for c, n in zip(coords, shape, strict=True)],
                    axis=0)
    out = ndimage.map_coordinates(moving, coords, order=order, mode="nearest", prefilter=False)
    return np.where(inside, out, fill).astype(moving.dtype)


def overlap(displacement: np.ndarray, spacing: tuple[float, float, float],
            moving_shape: tuple[int, int, int] | None = None) -> float:
    """Fraction of the follow-up's voxels that the field maps inside the baseline's grid
    (``moving_shape``; default the follow-up's own)."""
    shape = displacement.shape[:3] if moving_shape is None else moving_shape
    coords = _moving_coords(displacement, spacing, shape)
    inside = np.all([(c >= -0.5) & (c <= n - 0.5) for c, n in zip(coords, shape, strict=True)],
                    axis=0)
    return float(inside.mean())


def target_error(estimated: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Target registration error (mm) over ``mask``'s voxels: mean and 95th percentile of
    the 3D, in-plane and along-z distances between estimated and true positions."""
    error = (np.asarray(estimated, np.float64) - np.asarray(true, np.float64))[mask]
    parts = {"3d": np.sqrt((error**2).sum(-1)), "in_plane": np.sqrt((error[:, 1:] ** 2).sum(-1)),
             "z": np.abs(error[:, 0])}
    out = {}
    for name, values in parts.items():
        out[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
        out[f"{name}_p95"] = float(np.percentile(values, 95)) if values.size else float("nan")
    return out
