"""Config sections -> typed physics objects (the one place that maps them).

The stages call these instead of reading ``geometry``, ``noise`` and ``physics``
keys themselves, so a setting is typed and checked once; the variant table has
its own reader (:func:`sparsect.models.variants.variant_table`) and ``train`` builds
its module and data from those (:func:`sparsect.stages.train.module_from_cfg`).
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from sparsect.errors import InputError
from sparsect.physics import Geometry, NoiseModel
from sparsect.physics.acquisition import Acquisition


def geometry_from_cfg(cfg: DictConfig, views: int | None = None) -> Geometry:
    """Acquisition geometry from ``cfg.geometry`` on the ``cfg.data`` reconstruction grid."""
    geo = cfg.geometry
    try:
        return Geometry(
            beam=str(geo.beam),
            views=int(views if views is not None else geo.views),
            image_size=int(cfg.data.image_size),
            pixel_size_mm=float(cfg.data.pixel_size_mm),
            detector_count=None if geo.detector_count is None else int(geo.detector_count),
            detector_spacing_mm=None if geo.detector_spacing_mm is None
            else float(geo.detector_spacing_mm),
            angular_range_deg=None if geo.angular_range_deg is None
            else float(geo.angular_range_deg),
            source_isocenter_mm=float(geo.source_isocenter_mm),
            source_detector_mm=float(geo.source_detector_mm),
            # a measured scanner's alignment (physics/geometry.py); absent: the ideal one
            axis_offset_mm=float(geo.get("axis_offset_mm", 0.0)),
            detector_shift_mm=float(geo.get("detector_shift_mm", 0.0)),
            detector_shape=str(geo.get("detector_shape", "flat")),
        )
    except (ValueError, TypeError) as error:
        raise InputError(
            f"Invalid geometry ({str(error).rstrip('.')}): set geometry.* (or --views) to "
            "valid values."
        ) from None


def noise_from_cfg(cfg: DictConfig) -> NoiseModel:
    try:
        return NoiseModel(i0=float(cfg.noise.i0), electronic_std=float(cfg.noise.electronic_std))
    except (ValueError, TypeError) as error:
        raise InputError(
            f"Invalid noise setting ({str(error).rstrip('.')}): set noise.i0 to a positive "
            "photon count (inf for noiseless data) and noise.electronic_std to >= 0."
        ) from None


def acquisition_from_cfg(cfg: DictConfig, views: int | None = None,
                         device: str | None = None) -> Acquisition:
    """The acquisition of ``cfg`` at ``views`` (default ``geometry.views``): geometry, noise,
    simulation grid (``physics.upsample``), FBP filter, HU clip, seed and device
    (``physics.device`` unless ``device`` is given)."""
    geometry, noise = geometry_from_cfg(cfg, views), noise_from_cfg(cfg)
    try:
        return Acquisition(geometry, noise, upsample=int(cfg.physics.upsample),
                           filter=str(cfg.physics.filter),
                           hu_clip=tuple(float(v) for v in cfg.data.hu_clip),
                           seed=int(cfg.seed),
                           device=str(device if device is not None else cfg.physics.device),
                           input_parallel_views=_input_parallel_views(cfg))
    except ValueError as error:
        if "input_parallel_views" in str(error):
            raise InputError(f"Invalid physics.{error}") from None
        raise InputError(f"Invalid physics setting ({str(error).rstrip('.')}): set "
                         "physics.upsample to an integer >= 1 and physics.filter to a known "
                         "FBP filter.") from None


def _input_parallel_views(cfg: DictConfig) -> Any:
    """``physics.input_parallel_views`` as given (null when absent: configs written before
    it), checked by :class:`Acquisition`; a whole number written as a float is taken."""
    value = cfg.physics.get("input_parallel_views")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def workers_from_cfg(cfg: DictConfig, workers: int | None = None) -> int:
    """Processes for simulation and slice-by-slice reconstruction: ``workers``, else
    ``physics.workers``, else every core."""
    return int(workers or cfg.physics.get("workers") or os.cpu_count() or 1)
