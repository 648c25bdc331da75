"""The residual floor of a scan, estimated from its own measurements.

A full-dose reference ``x_ref`` does not reproduce its own sinogram: its residual
``||A x_ref - y|| / ||y||`` (:func:`sparsect.models.consistency.residual`,
``evaluate``'s data-consistency metric) is the floor below which fitting the data
means fitting the noise. It has two parts that add in energy,

    ``||A x_ref - y||^2  ~  sum_ij var(n_ij)  +  ||A x_ref - A_f Z x_ref||^2``:

- **noise** ``n``: for photon counts ``I`` the line integral ``log(I0 / I)`` has variance
  ``~ 1 / I = exp(p) / I0`` (delta method, :class:`~sparsect.physics.noise.NoiseModel`);
- **model mismatch**: the data are projected from the image zoomed onto a finer grid
  (``Z``, ``A_f``; :mod:`sparsect.physics.simulate`) or come from a real object, the
  reconstruction projects pixels of the coarse grid (``A``). Per view the two projections
  differ by close to a convolution along the detector (a pixel's footprint against the
  footprint of its linear interpolant), so ``A x - A_f Z x ~ (g_v - delta) * y`` with a
  short kernel ``g_v`` per view.

The floor is estimated without the reference:

- the noise from the counts when there are counts (:func:`poisson_energy`, ``sum 1 / I``);
  without them from the sinogram itself (:func:`estimate_i0`): second differences along
  the detector, ``d_j = y_{j-1} - 2 y_j + y_{j+1}``, have variance
  ``(e^{p_{j-1}} + 4 e^{p_j} + e^{p_{j+1}}) / I0`` where the projection is locally linear,
  so ``1 / I0 = median(d_j^2 / w_j) / 0.4549`` (the median of a chi-square with one
  degree of freedom). Edges of the object (the body outline, bone, the table) add
  curvature and bias ``1 / I0`` upwards where they make a large share of the bins; the
  median keeps the air and the smooth interior in charge. A slice with fewer than
  :data:`MIN_BINS` usable differences takes the pooled estimate of its stack, and a stack
  with fewer than that takes ``fallback_i0`` (the acquisition's recorded ``I0``) or,
  without one, gives no estimate (NaN: the caller keeps its validation floor);
- the mismatch from the sinogram (:func:`mismatch_energy`): the kernels ``g_v`` are fitted
  per view by least squares between the fine and the coarse projection of the scan's own
  FBP image (:func:`mismatch_kernels`), applied to the measured sinogram, minus the noise
  they pass (``sum var ||g_v - delta||^2``), times :data:`MISMATCH_GAIN`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import Geometry
from .noise import COUNT_FLOOR
from .projector import Projector
from .simulate import fine_grid

CHI2_MEDIAN = 0.454936
"""Median of a chi-square variable with one degree of freedom."""

MIN_BINS = 32
"""Fewest usable second differences for a slice's own ``I0`` estimate."""

KERNEL_HALF_WIDTH = 3
"""Half width (bins) of the per-view kernels of the mismatch model."""

MISMATCH_GAIN = 1.0
"""Scale of the estimated mismatch. Checked on the phantom validation split (60 views,
noiseless, kernels fitted on each slice's FBP): true mismatch over its estimate 1.01
(per slice 0.99 to 1.03), so no correction. Kernels fitted on the references themselves
explain less (0.90 of the true mismatch): the rest is aliasing no convolution expresses,
which the FBP's finer texture stands in for."""

AIR_LEVEL = 0.05
"""Line integral (about 2.6 mm of water) below which a bin's smoothed value counts as air."""

AIR_MARGIN = 3
"""Bins next to the object's shadow left out of the air (its edge's curvature).

Both chosen on the phantom validation split: from every bin the edges' and the texture's
curvature dominate and the estimated ``I0`` came out 0.24 (``I0`` 1e6) and 0.53 (1e5) of
the true one; from the air bins so defined it is within a few percent of it."""


@dataclass
class Floor:
    """A per-slice floor estimate, all ``(N,)``.

    Attributes:
        floor: the estimated ``||A x_ref - y|| / ||y||``.
        noise: its noise part (same normalisation).
        mismatch: its model-mismatch part (same normalisation).
        i0: the effective ``I0`` used (estimated, or from the counts' flat field).
        source: per slice ``"counts"``, ``"slice"`` (own estimate), ``"stack"`` (pooled),
            ``"fallback"`` (``fallback_i0``) or ``"none"`` (no estimate: NaN).
    """

    floor: np.ndarray
    noise: np.ndarray
    mismatch: np.ndarray
    i0: np.ndarray
    source: np.ndarray


def _stack(sinograms: np.ndarray) -> np.ndarray:
    sinograms = np.asarray(sinograms, np.float64)
    if sinograms.ndim == 2:
        sinograms = sinograms[None]
    if sinograms.ndim != 3:
        raise ValueError(f"sinograms must be (N, views, bins), got {sinograms.shape}")
    return sinograms


def air_bins(sinograms: np.ndarray, level: float = AIR_LEVEL, margin: int = AIR_MARGIN
             ) -> np.ndarray:
    """``(N, views, bins)`` bool: bins whose detector neighbourhood sees only air (the
    5-bin moving average of ``y`` below ``level``, shrunk by ``margin`` bins at every
    edge of the object's shadow)."""
    y = _stack(sinograms)
    smooth = ndimage.uniform_filter1d(y, 5, axis=-1, mode="nearest")
    air = smooth < level
    if margin > 0:
        structure = np.zeros((1, 1, 2 * margin + 1), bool)
        structure[..., :] = True
        air = ndimage.binary_erosion(air, structure, border_value=1)
    return air


def curvature_ratios(sinograms: np.ndarray) -> np.ndarray:
    """``d_j^2 / w_j`` of every interior bin, ``(N, views, bins - 2)``: second differences
    along the detector over their noise weight ``e^{y_{j-1}} + 4 e^{y_j} + e^{y_{j+1}}``
    (each has expectation ``1 / I0`` where the projection is locally linear)."""
    y = _stack(sinograms)
    d = y[..., :-2] - 2.0 * y[..., 1:-1] + y[..., 2:]
    e = np.exp(np.clip(y, -1.0, 30.0))
    weight = e[..., :-2] + 4.0 * e[..., 1:-1] + e[..., 2:]
    return d * d / weight


def estimate_i0(sinograms: np.ndarray, fallback_i0: float | None = None,
                min_bins: int = MIN_BINS, air_only: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """The effective ``I0`` of each slice from its second differences (no counts).

    Args:
        sinograms: ``(N, views, bins)`` (or ``(views, bins)``) line integrals.
        fallback_i0: ``I0`` for a stack too small for its own estimate (None: NaN).
        min_bins: fewest usable differences for an estimate.
        air_only: use the differences of :func:`air_bins` only (False: every interior
            bin, whose object structure biases ``I0`` low).

    Returns:
        ``(i0, source)``: ``(N,)`` floats and ``(N,)`` strings (``"slice"``, ``"stack"``,
        ``"fallback"`` or ``"none"``).

    A slice with too few usable bins (an object that fills the detector, a narrow
    detector) takes the median of the pooled ratios of its stack.
    """
    y = _stack(sinograms)
    count = len(y)
    i0 = np.full(count, np.nan)
    source = np.full(count, "none", dtype=object)
    if y.shape[-1] < 3:
        ratios = np.empty((count, 0))
        usable = np.zeros((count, 0), bool)
    else:
        ratios = curvature_ratios(y).reshape(count, -1)
        usable = np.isfinite(ratios)
        if air_only:
            usable &= air_bins(y)[..., 1:-1].reshape(count, -1)
    pooled = ratios[usable]
    stack_i0 = (CHI2_MEDIAN / float(np.median(pooled))
                if pooled.size >= min_bins and np.median(pooled) > 0 else None)
    for k in range(count):
        own = ratios[k][usable[k]]
        if own.size >= min_bins and np.median(own) > 0:
            i0[k], source[k] = CHI2_MEDIAN / float(np.median(own)), "slice"
        elif stack_i0 is not None:
            i0[k], source[k] = stack_i0, "stack"
        elif fallback_i0 is not None:
            i0[k], source[k] = float(fallback_i0), "fallback"
    return i0, source.astype(str)


def poisson_energy(counts: np.ndarray) -> np.ndarray:
    """``sum 1 / I`` per slice: the expected ``||n||^2`` of the line integrals of counts
    ``I`` (``(N, views, bins)``; zero or negative counts count as 0.1 photon, as
    :data:`~sparsect.physics.noise.COUNT_FLOOR`)."""
    counts = np.maximum(_stack(counts), COUNT_FLOOR)
    return (1.0 / counts).reshape(len(counts), -1).sum(1)


def mismatch_kernels(geometry: Geometry, images_mu: np.ndarray, upsample: int = 2,
                     half_width: int = KERNEL_HALF_WIDTH, device: str = "cpu") -> np.ndarray:
    """Per-view kernels ``g_v`` with ``A x ~ g_v * (A_f Z x)`` along the detector, fitted by
    least squares on the images ``(N, H, W)`` (``mu`` in 1/mm; e.g. a scan's FBP).

    Returns:
        ``(views, 2 half_width + 1)``.
    """
    images = np.maximum(np.asarray(images_mu, np.float64), 0.0)
    if images.ndim == 2:
        images = images[None]
    with Projector(geometry, device) as coarse, \
            Projector(geometry.upsampled(upsample), device) as fine:
        target = np.stack([coarse.forward(image.astype(np.float32)) for image in images])
        source = np.stack([fine.forward(fine_grid(image, upsample).astype(np.float32))
                           for image in images])
    shifted = _shifted(source, half_width)
    kernels = np.zeros((geometry.views, 2 * half_width + 1))
    for view in range(geometry.views):
        design = shifted[:, view].reshape(-1, 2 * half_width + 1)
        kernels[view] = np.linalg.lstsq(design, target[:, view].reshape(-1), rcond=None)[0]
    return kernels


def _shifted(sinograms: np.ndarray, half_width: int) -> np.ndarray:
    padded = np.pad(sinograms, ((0, 0), (0, 0), (half_width, half_width)), mode="edge")
    bins = sinograms.shape[-1]
    return np.stack([padded[..., k:k + bins] for k in range(2 * half_width + 1)], -1)


def mismatch_energy(sinograms: np.ndarray, kernels: np.ndarray, variance: np.ndarray,
                    gain: float = MISMATCH_GAIN) -> np.ndarray:
    """The estimated ``||A x_ref - A_f Z x_ref||^2`` per slice: ``||(g_v - delta) * y||^2``
    less the noise energy the kernels pass (``variance``: per-bin noise variance,
    ``(N, views, bins)``), clipped at 0, times ``gain ** 2``."""
    y = _stack(sinograms)
    half_width = (kernels.shape[1] - 1) // 2
    excess = kernels.copy()
    excess[:, half_width] -= 1.0
    filtered = np.einsum("nvbk,vk->nvb", _shifted(y, half_width), excess)
    passed = (variance * (excess * excess).sum(1)[None, :, None]).reshape(len(y), -1).sum(1)
    raw = (filtered * filtered).reshape(len(y), -1).sum(1)
    return gain**2 * np.maximum(raw - passed, 0.0)


def residual_floor(sinograms: np.ndarray, geometry: Geometry, *, counts: np.ndarray | None = None,
                   images_mu: np.ndarray | None = None, upsample: int = 2,
                   fallback_i0: float | None = None, mismatch: bool = True,
                   device: str = "cpu") -> Floor:
    """The per-slice floor ``||A x_ref - y|| / ||y||`` of a scan, without its reference.

    Args:
        sinograms: ``(N, views, bins)`` line integrals ``y`` on ``geometry``.
        geometry: the reconstruction's geometry (``A``).
        counts: ``(N, views, bins)`` raw counts when measured (the Poisson noise model);
            None: the noise from the sinogram (:func:`estimate_i0`).
        images_mu: ``(N, H, W)`` images (1/mm) to fit the mismatch kernels on; None: the
            ram-lak FBP of ``sinograms``.
        upsample: the data's simulation grid relative to the reconstruction grid (a
            real scanner's data behave like a fine grid; 2 as the project simulates).
        fallback_i0: ``I0`` for stacks too small for their own noise estimate.
        mismatch: include the model-mismatch part.
        device: ASTRA device for the kernels.
    """
    y = _stack(sinograms)
    norms = np.linalg.norm(y.reshape(len(y), -1), axis=1)
    e = np.exp(np.clip(y, -1.0, 30.0))
    if counts is not None:
        counts = np.maximum(_stack(counts), COUNT_FLOOR)
        if counts.shape != y.shape:
            raise ValueError(f"counts {counts.shape} do not match the sinograms {y.shape}")
        variance = 1.0 / counts
        i0 = (counts * e).reshape(len(y), -1).mean(1)
        source = np.full(len(y), "counts")
    else:
        i0, source = estimate_i0(y, fallback_i0)
        variance = e / i0[:, None, None]
    noise = variance.reshape(len(y), -1).sum(1)
    energy = np.zeros(len(y))
    if mismatch:
        if images_mu is None:
            with Projector(geometry, device) as projector:
                images_mu = np.stack([projector.fbp(s.astype(np.float32)) for s in y])
        kernels = mismatch_kernels(geometry, images_mu, upsample, device=device)
        energy = mismatch_energy(y, kernels, np.nan_to_num(variance))
    return Floor(floor=np.sqrt(noise + energy) / norms, noise=np.sqrt(noise) / norms,
                 mismatch=np.sqrt(energy) / norms, i0=i0, source=source)


def discrepancy_choice(residuals: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Per slice, the index of the strongest setting whose residual reaches the floor.

    Args:
        residuals: ``(settings, N)`` residuals, settings ordered from the weakest
            regularisation to the strongest.
        floor: ``(N,)`` the slices' floors (:func:`residual_floor`).

    Returns:
        ``(N,)`` indices: the last setting with ``residual <= floor`` (Morozov), or the
        weakest (index 0) where none reaches it. A NaN floor takes the weakest too.
    """
    residuals = np.asarray(residuals, np.float64)
    reached = residuals <= np.asarray(floor, np.float64)[None, :]
    last = residuals.shape[0] - 1 - np.argmax(reached[::-1], axis=0)
    return np.where(reached.any(0), last, 0)


def tv_by_discrepancy(sinograms: np.ndarray, geometry: Geometry, floor: np.ndarray,
                      weights: list[float] | tuple[float, ...], iterations: int,
                      device: str = "cpu", *, max_mib: float | None = None, workers: int = 1,
                      nonnegative: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """TV (:func:`sparsect.physics.reconstruct.reconstruct_stack`, from the ram-lak FBP)
    with each slice's weight chosen by the discrepancy principle against its own floor:
    the largest of ``weights`` whose residual ``||A x - y|| / ||y||`` is at most the floor
    (:func:`discrepancy_choice`; the smallest where none is).

    Every weight runs as ``reconstruct_stack("tv", ..., weight=w)`` would alone (the same
    batching, ``max_mib`` fallback and images), and only the slices' current choices are
    kept, so memory stays at two stacks whatever the grid. The residual's ``A`` is the CPU
    projector's (``evaluate``'s residual metric, which the floor estimates).

    Args:
        sinograms: ``(N, views, bins)`` line integrals.
        geometry: The reconstruction's geometry.
        floor: ``(N,)`` the slices' floors (:func:`residual_floor`; NaN: the smallest weight).
        weights: The grid (any order; run from the smallest up).
        iterations: TV iterations per weight.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the TV runs.
        max_mib: Memory allowed to the torch operator (None: the default).
        workers: Processes for the slice-by-slice fallback.
        nonnegative: TV's ``x >= 0``.

    Returns:
        ``(images_mu, weight)``: ``(N, H, W)`` float32 in 1/mm and ``(N,)`` the weights chosen.
    """
    from .reconstruct import DEFAULT_MAX_MIB, reconstruct_stack

    y = _stack(sinograms).astype(np.float32)
    floor = np.asarray(floor, np.float64).reshape(-1)
    if floor.shape != (len(y),):
        raise ValueError(f"{floor.size} floors for {len(y)} sinograms")
    order = sorted({float(w) for w in weights})
    if not order:
        raise ValueError("tv_by_discrepancy needs at least one weight")
    norms = np.linalg.norm(y.reshape(len(y), -1).astype(np.float64), axis=1)
    chosen = np.empty((0,), np.float32)
    pick = np.zeros(len(y), int)
    with Projector(geometry, "cpu") as projector:
        for k, weight in enumerate(order):
            images = reconstruct_stack("tv", geometry, y, device=device,
                                       max_mib=DEFAULT_MAX_MIB if max_mib is None else max_mib,
                                       workers=workers, iterations=iterations, weight=weight,
                                       nonnegative=nonnegative)
            if k == 0:
                chosen = images
                continue
            diff = np.stack([projector.forward(image) for image in images]) - y
            with np.errstate(divide="ignore", invalid="ignore"):
                residual = np.linalg.norm(diff.reshape(len(y), -1), axis=1) / norms
            # The last weight whose residual reaches the floor wins (discrepancy_choice).
            reached = residual <= floor
            chosen[reached], pick[reached] = images[reached], k
    return chosen, np.asarray(order)[pick]
