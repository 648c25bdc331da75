"""HU slice -> noisy sparse-view sinogram -> FBP, without the inverse crime.

The data are projected from the slice upsampled onto a finer grid, with a
projector of that finer grid and the same detector, and reconstructed on the
original grid, as in the dival/LoDoPaB-CT benchmark (Leuschner et al., Sci.
Data 8, 2021): simulating and inverting with the very same discrete operator
("inverse crime") flatters every reconstruction method.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import numpy as np
from scipy import ndimage

from .fanrebin import fan_to_parallel
from .filters import check_filter
from .geometry import Geometry
from .noise import NoiseModel
from .projector import Projector
from .reconstruct import reconstruct_stack
from .units import hu_to_mu, mu_to_hu

ProjectorCache = MutableMapping[tuple[Geometry, str], Projector]


def _projector(cache: ProjectorCache, geometry: Geometry, device: str) -> Projector:
    key = (geometry, device)
    if key not in cache:
        cache[key] = Projector(geometry, device)
    return cache[key]


def fine_grid(mu: np.ndarray, upsample: int) -> np.ndarray:
    """``mu`` (>= 0) on the simulation grid, ``upsample`` times finer over the same field of
    view: what the data are projected from (also the mismatch model of
    :mod:`sparsect.physics.noisefloor`)."""
    if upsample == 1:
        return mu
    # grid_mode=True zooms pixel areas (the finer grid spans exactly the same field
    # of view); order=1 cannot overshoot, the clip is for safety.
    fine = ndimage.zoom(mu, upsample, order=1, grid_mode=True, mode="nearest")
    return np.maximum(fine, 0.0)


def _fine_mu(hu: np.ndarray, upsample: int) -> np.ndarray:
    # Air (-1000 HU) and anything below it are 0 attenuation, never negative.
    return fine_grid(np.maximum(hu_to_mu(np.asarray(hu, np.float32)), 0.0), upsample)


def simulate_slice(hu: np.ndarray, geometry: Geometry, noise: NoiseModel, seed: int,
                   upsample: int = 2, device: str = "auto", filter: str = "ram-lak",  # noqa: A002
                   projectors: ProjectorCache | None = None,
                   input_parallel_views: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Simulates one noisy acquisition of a slice and its FBP.

    Args:
        hu: ``(image_size, image_size)`` reference slice in HU on the reconstruction grid.
        geometry: Acquisition geometry and reconstruction grid.
        noise: Photon noise model.
        seed: Seed of the noise (same seed, same data).
        upsample: Projection grid is this many times finer (1: same grid, which
            commits the inverse crime).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        filter: FBP filter name.
        projectors: Optional cache ``{(geometry, device): Projector}`` to reuse
            ASTRA projectors across calls; the caller closes them. Without it the
            projectors are created and freed inside the call (slow for many slices).
        input_parallel_views: Fan beam: the FBP is made from the sinogram rebinned onto
            a parallel-beam one of this many angles (:func:`input_fbp`).

    Returns:
        ``(sinogram, fbp_hu)``: float32 ``(views, detector_count)`` noisy line
        integrals and float32 ``(image_size, image_size)`` FBP in HU.
    """
    check_filter(filter)
    if not (isinstance(upsample, int) and upsample >= 1):
        raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}.")
    hu = np.asarray(hu)
    expected = (geometry.image_size, geometry.image_size)
    if hu.shape != expected:
        raise ValueError(f"Expected an HU slice of shape {expected}, got {hu.shape}.")
    cache: ProjectorCache = {} if projectors is None else projectors
    try:
        fine = _projector(cache, geometry.upsampled(upsample), device)
        coarse = _projector(cache, geometry, device)
        clean = fine.forward(_fine_mu(hu, upsample))
        sinogram = noise.apply(clean, np.random.default_rng(seed)).astype(np.float32)
        if input_parallel_views is None:
            fbp_hu = mu_to_hu(coarse.fbp(sinogram, filter=filter))
        else:
            rebinned, parallel = fan_to_parallel(sinogram, geometry, input_parallel_views)
            fbp_hu = mu_to_hu(_projector(cache, parallel, device).fbp(rebinned, filter=filter))
        return sinogram, fbp_hu.astype(np.float32)
    finally:
        if projectors is None:
            for projector in cache.values():
                projector.close()


def input_fbp(sinograms: np.ndarray, geometry: Geometry, filter: str = "ram-lak",  # noqa: A002
              input_parallel_views: int | None = None, device: str = "auto") -> np.ndarray:
    """``(N, views, detectors)`` line integrals -> ``(N, H, W)`` FBP in HU: the image the
    learned methods read, as :func:`simulate_slice` makes it. With
    ``input_parallel_views`` (fan beam) the sinograms are first rebinned onto a
    parallel-beam sinogram of that many angles (:mod:`.fanrebin`)."""
    if input_parallel_views is not None:
        sinograms, geometry = fan_to_parallel(sinograms, geometry, input_parallel_views)
    return mu_to_hu(reconstruct_stack("fbp", geometry, sinograms, device=device,
                                      filter=filter))


class Simulator:
    """Reusable :func:`simulate_slice` that keeps its ASTRA projectors between slices.

    Cheap to construct and to pickle: projectors are built on the first call in
    each process, so create one per worker (or pass one to a pool initializer).

    Args:
        geometry: Acquisition geometry and reconstruction grid.
        noise: Photon noise model.
        upsample: Projection grid refinement factor (see :func:`simulate_slice`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        filter: FBP filter name.

    >>> from sparsect.physics import Geometry, NoiseModel
    >>> g = Geometry("parallel", views=30, image_size=64, pixel_size_mm=2.0)
    >>> with Simulator(g, NoiseModel(i0=1e5), device="cpu") as simulate:
    ...     sinogram, fbp_hu = simulate(np.zeros((64, 64), np.float32), seed=0)
    >>> sinogram.shape, fbp_hu.shape
    ((30, 94), (64, 64))
    """

    def __init__(self, geometry: Geometry, noise: NoiseModel, upsample: int = 2,
                 device: str = "auto", filter: str = "ram-lak",  # noqa: A002
                 input_parallel_views: int | None = None) -> None:
        check_filter(filter)
        if not (isinstance(upsample, int) and upsample >= 1):
            raise ValueError(f"upsample must be an integer >= 1, got {upsample!r}.")
        self.geometry = geometry
        self.noise = noise
        self.upsample = upsample
        self.device = device
        self.filter = filter
        self.input_parallel_views = input_parallel_views
        self._projectors: dict[tuple[Geometry, str], Projector] = {}

    def __call__(self, hu: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sinogram, fbp_hu)`` of one slice; see :func:`simulate_slice`."""
        return simulate_slice(hu, self.geometry, self.noise, seed, upsample=self.upsample,
                              device=self.device, filter=self.filter,
                              projectors=self._projectors,
                              input_parallel_views=self.input_parallel_views)

    def close(self) -> None:
        """Frees the ASTRA projectors (they are rebuilt if the simulator is used again)."""
        for projector in self._projectors.values():
            projector.close()
        self._projectors.clear()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_projectors"] = {}  # ASTRA handles are per process; rebuilt lazily
        return state

    def __repr__(self) -> str:
        return (f"Simulator({self.geometry!r}, {self.noise!r}, upsample={self.upsample}, "
                f"device={self.device!r}, filter={self.filter!r}"
                + (f", input_parallel_views={self.input_parallel_views}"
                   if self.input_parallel_views is not None else "") + ")")
