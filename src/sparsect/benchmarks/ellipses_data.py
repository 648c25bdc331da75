"""Data and physics of dival's ellipses benchmark: phantoms, geometry, sinograms, FBP, scores.

Each function reproduces one piece of dival's ``get_standard_dataset('ellipses')``
pipeline (phantom stream, odl's rasterisation and detector, upscaled projection, relative
noise, odl's FBP windows, dival's PSNR and SSIM); where it was read and how it was checked
is in the docstring of :mod:`sparsect.benchmarks.ellipses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sparsect.benchmarks.ellipses_settings import FBP_FILTERS, SAMPLERS, EllipsesSettings
from sparsect.physics.filters import frequency_response
from sparsect.physics.geometry import Geometry
from sparsect.physics.operator import ct_operator

MAX_ELLIPSES = 70
MEAN_ELLIPSES = 40
INTENSITY_RANGE = (-0.4, 1.0)
AXIS_SCALE = 0.2
CENTRE_RANGE = (-0.9, 0.9)

_PROJECT_BATCH = 64  # images per sparse product: ~60 MiB of 400 x 400 float32 columns


# --------------------------------------------------------------------------- phantoms


def draw_ellipses(rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """One image's ``(70, 6)`` ellipses ``(value, axis_1, axis_2, x, y, rotation)`` in the
    unit square's coordinates, drawn in dival's order (so that a ``RandomState`` replays
    dival's stream); the candidates past the Poisson count get value 0."""
    m = MAX_ELLIPSES
    value = rng.uniform(*INTENSITY_RANGE, (m,))
    axis_1 = AXIS_SCALE * rng.exponential(1.0, (m,))
    axis_2 = AXIS_SCALE * rng.exponential(1.0, (m,))
    x = rng.uniform(*CENTRE_RANGE, (m,))
    y = rng.uniform(*CENTRE_RANGE, (m,))
    rotation = rng.uniform(0.0, 2 * np.pi, (m,))
    count = min(int(rng.poisson(MEAN_ELLIPSES)), m)
    value[count:] = 0.0
    return np.stack((value, axis_1, axis_2, x, y, rotation), axis=1)


def rasterise(ellipses: np.ndarray, size: int) -> np.ndarray:
    """The sum of the ellipses' values on a ``size x size`` grid, odl's convention.

    Axis 0 is ``x``, axis 1 ``y``; pixel centres run from -1 to 1 (first and last
    centre), a centre inside or on an ellipse gets its value. Only each ellipse's
    bounding box is evaluated (an image of 40 ellipses takes ~1 ms)."""
    image = np.zeros((size, size), np.float32)
    half = (size - 1) / 2.0
    coords = (np.arange(size) - half) / half
    for value, a, b, x0, y0, theta in ellipses:
        if value == 0:
            continue
        c, s = math.cos(theta), math.sin(theta)
        # half-extent of the rotated ellipse along x and y
        ext_x = math.sqrt((a * c) ** 2 + (b * s) ** 2)
        ext_y = math.sqrt((a * s) ** 2 + (b * c) ** 2)
        i0, i1 = np.searchsorted(coords, [x0 - ext_x - 1e-9, x0 + ext_x + 1e-9])
        j0, j1 = np.searchsorted(coords, [y0 - ext_y - 1e-9, y0 + ext_y + 1e-9])
        if i0 >= i1 or j0 >= j1:
            continue
        dx = coords[i0:i1, None] - x0
        dy = coords[None, j0:j1] - y0
        u = c * dx + s * dy
        v = -s * dx + c * dy
        inside = u * u / (a * a) + v * v / (b * b) <= 1.0
        box = image[i0:i1, j0:j1]
        # float32 + float64 value, rounded to float32 once: odl's arithmetic, to the bit
        box[inside] = box[inside] + value
    return image


def normalise(image: np.ndarray) -> np.ndarray:
    """dival's normalisation, in place: the non-zero pixels are shifted by the image
    minimum (background stays 0), then the image is divided by its maximum."""
    image[image != 0] -= image.min()
    peak = image.max()
    if peak > 0:
        image /= peak
    return image


def phantoms(seed: int, count: int, size: int = 128, sampler: str = "dival") -> np.ndarray:
    """The first ``count`` images of a split: ``(count, size, size)`` float32 in [0, 1].

    ``sampler="dival"`` replays dival's ``RandomState(seed)`` stream (with dival's seeds
    these are ``EllipsesDataset(fixed_seeds=True)``'s images); ``"generator"`` draws image
    ``i`` from ``numpy.random.default_rng([seed, i])``. Either way image ``i`` depends on
    ``(seed, i)`` only, not on ``count``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    out = np.empty((count, size, size), np.float32)
    stream = np.random.RandomState(seed) if sampler == "dival" else None
    for i in range(count):
        rng = stream if stream is not None else np.random.default_rng([seed, i])
        out[i] = normalise(rasterise(draw_ellipses(rng), size))
    return out


# --------------------------------------------------------------------------- geometry


def detector(image_size: int, pixel_size_mm: float = 1.0) -> tuple[int, float]:
    """``(bins, pitch_mm)`` of ``odl.tomo.parallel_beam_geometry`` for a square image:
    ``2 * ceil(rho / pixel) + 1`` bins over ``[-rho, rho]``, ``rho`` half the diagonal."""
    rho = image_size * pixel_size_mm / math.sqrt(2.0)
    bins = 2 * math.ceil(rho / pixel_size_mm) + 1
    return bins, 2 * rho / bins


def reco_geometry(s: EllipsesSettings) -> Geometry:
    """The reconstruction geometry: ``image_size`` pixels of 1 mm, dival's detector."""
    return _parallel(s, s.image_size, 1.0)


def sim_geometry(s: EllipsesSettings) -> Geometry:
    """The simulation geometry: the same square and detector at ``sim_size`` pixels."""
    return _parallel(s, s.sim_size, s.image_size / s.sim_size)


def _parallel(s: EllipsesSettings, image_size: int, pixel_size_mm: float) -> Geometry:
    """``s``'s parallel-beam geometry on a grid of ``image_size`` pixels; the detector is
    the reconstruction grid's whatever the grid, as in dival, so that the simulated and
    the reconstructed sinograms share their bins."""
    bins, pitch = detector(s.image_size)
    return Geometry(
        "parallel",
        views=s.views,
        image_size=image_size,
        pixel_size_mm=pixel_size_mm,
        detector_count=bins,
        detector_spacing_mm=pitch,
    )


# --------------------------------------------------------------------------- simulation


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscaling as dival does it (``skimage.transform.resize(order=1)``).

    Pixel-centre convention: output pixel ``o`` samples input coordinate
    ``(o + 1/2) * n_in / n_out - 1/2`` (what odl's cell-centred spaces assume), with
    mirrored borders. ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` uses the same convention but clamps at the border, which
    changes only the outermost output pixel."""
    from skimage.transform import resize

    return np.stack(
        [
            resize(image, (size, size), order=1, mode="reflect", anti_aliasing=False)
            for image in images
        ]
    ).astype(np.float32)


def project(images: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Noiseless line integrals ``(N, views, bins)`` of ``(N, size, size)`` images."""
    op = ct_operator(geometry)
    out = np.empty((len(images), *geometry.sinogram_shape), np.float32)
    with torch.no_grad():
        for start in range(0, len(images), _PROJECT_BATCH):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + _PROJECT_BATCH]))
            out[start : start + len(chunk)] = op.forward(chunk).numpy()
    return out


def add_noise(
    clean: np.ndarray, relative_std: float, seed: int, sampler: str = "dival"
) -> np.ndarray:
    """``clean + N(0, (relative_std * mean|clean_i|)^2)`` per sample ``i``.

    ``sampler="dival"`` draws sample after sample from ``RandomState(seed)`` (dival's
    noise stream); ``"generator"`` draws sample ``i`` from ``default_rng([seed, i])``."""
    stream = np.random.RandomState(seed) if sampler == "dival" else None
    noisy = np.empty_like(clean)
    for i, y in enumerate(clean):
        rng = stream if stream is not None else np.random.default_rng([seed, i])
        std = relative_std * float(np.mean(np.abs(y)))
        noisy[i] = y + rng.normal(0.0, std, y.shape) if std > 0 else y
    return noisy


@dataclass
class Split:
    """One split: ground truth ``images (N, H, W)`` and noisy ``sinograms (N, views, bins)``
    in line integrals of the image (mm times image units)."""

    name: str
    images: np.ndarray
    sinograms: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def make_split(name: str, s: EllipsesSettings, count: int | None = None) -> Split:
    """The first ``count`` (default: ``samples[name]``) samples of split ``name``."""
    count = s.samples[name] if count is None else count
    images = phantoms(s.phantom_seeds[name], count, s.image_size, s.sampler)
    clean = np.empty((count, s.views, reco_geometry(s).detector_count), np.float32)
    geometry = sim_geometry(s)
    for start in range(0, count, 256):  # bounds the 400 x 400 copies held at once
        clean[start : start + 256] = project(
            upscale(images[start : start + 256], s.sim_size), geometry
        )
    return Split(name, images, add_noise(clean, s.noise, s.noise_seeds[name], s.sampler))


# --------------------------------------------------------------------------- FBP


def window(name: str, norm_freq: np.ndarray, frequency_scaling: float) -> np.ndarray:
    """odl's FBP windows on ``norm_freq`` in [0, 1] (1 = Nyquist), zero above
    ``frequency_scaling``."""
    f, fs = np.asarray(norm_freq, float), float(frequency_scaling)
    if name == "ram-lak":
        w = np.ones_like(f)
    elif name == "shepp-logan":
        w = np.sinc(f / (2 * fs))
    elif name == "cosine":
        w = np.cos(f * np.pi / (2 * fs))
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(f * np.pi / fs)
    elif name == "hann":
        w = np.cos(f * np.pi / (2 * fs)) ** 2
    else:
        raise ValueError(f"unknown FBP filter {name!r}; choose one of {FBP_FILTERS}")
    return w * (f <= fs)


def fbp(
    sinograms: np.ndarray | torch.Tensor,
    geometry: Geometry,
    filter: str = "hann",  # noqa: A002
    frequency_scaling: float = 1.0,
) -> np.ndarray:
    """Filtered backprojection of ``(N, views, bins)`` sinograms: ``(N, H, W)`` float32.

    Each row is convolved with the band-limited ramp (:func:`~sparsect.physics.filters.
    frequency_response`, zero-padded to a power of two >= twice the row) times the
    window, then backprojected with the adjoint of ``ct_operator(geometry)``. ASTRA's
    Joseph adjoint weighs each pixel by ``pixel^2 / pitch`` per view, hence the factor
    ``(pi / views) * pitch / pixel^2``. With the ram-lak window this is ASTRA's own FBP
    (the same ramp and padding) to 2e-6 of the peak on test sinograms
    (``tests/benchmarks/test_ellipses.py``), and the other windows are odl's."""
    sino = np.asarray(sinograms, np.float32)
    bins = geometry.detector_count
    size = max(64, int(2 ** math.ceil(math.log2(2 * bins))))
    response = frequency_response("ram-lak", size)[: size // 2 + 1] / geometry.detector_spacing_mm
    norm_freq = np.fft.rfftfreq(size) / 0.5
    kernel = response * window(filter, norm_freq, frequency_scaling)
    filtered = np.fft.irfft(np.fft.rfft(sino, n=size, axis=-1) * kernel, n=size, axis=-1)[
        ..., :bins
    ]
    op = ct_operator(geometry)
    scale = (
        math.radians(geometry.angular_range_deg)
        / geometry.views
        * geometry.detector_spacing_mm
        / geometry.pixel_size_mm**2
    )
    out = np.empty((len(sino), *geometry.image_shape), np.float32)
    with torch.no_grad():
        for start in range(0, len(sino), 256):
            chunk = torch.from_numpy(filtered[start : start + 256].astype(np.float32))
            out[start : start + len(chunk)] = op.adjoint(chunk).numpy() * scale
    return out


# --------------------------------------------------------------------------- metrics


def psnr(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """dival's PSNR per image: ``data_range = max(truth) - min(truth)`` of each image.

    >>> float(psnr(np.full((1, 2, 2), 0.5), np.array([[[0.0, 1.0], [0.5, 0.5]]]))[0])
    9.030899869919436
    """
    recon = np.asarray(recon, np.float64).reshape(len(truth), -1)
    truth = np.asarray(truth, np.float64).reshape(len(truth), -1)
    mse = np.mean((recon - truth) ** 2, axis=1)
    data_range = truth.max(axis=1) - truth.min(axis=1)
    with np.errstate(divide="ignore"):
        return 20 * np.log10(data_range) - 10 * np.log10(mse)


def ssim(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """dival's SSIM per image (scikit-image's defaults, the truth's data range)."""
    from skimage.metrics import structural_similarity

    return np.array(
        [
            structural_similarity(
                np.asarray(r, np.float64),
                np.asarray(t, np.float64),
                data_range=float(t.max() - t.min()),
            )
            for r, t in zip(recon, truth, strict=True)
        ]
    )
