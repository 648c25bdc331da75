"""dival's ``ellipses`` benchmark, rebuilt on sparsect's physics, solvers and models.

Published reference: Baguer, Leuschner & Schmidt, "Computed tomography reconstruction
using deep image prior and learned reconstruction methods", Inverse Problems 36 (2020)
094004, test PSNR on the ellipses data set: FBP 24.18 dB, TV 27.96, FBP+U-Net 29.36,
Learned Primal-Dual 32.27. FBP and TV need no training, so landing within 0.5 dB of
them checks the data, the physics and the solvers against a peer; the learned methods
are trained here on a CPU budget, far below the paper's 32 000 samples and 50 epochs.

What was read, and where (repository ``jleuschn/dival`` unless said otherwise):

* ``dival/datasets/standard.py`` (``get_standard_dataset('ellipses')``): reconstruction
  space ``[-64, 64]^2`` mm at 128 x 128 (1 mm pixels); the ground truth is upscaled to
  400 x 400 over the same square by ``skimage.transform.resize(order=1)`` and projected
  there (no inverse crime); both ray transforms use
  ``odl.tomo.parallel_beam_geometry(space, num_angles=30)`` with the detector of the
  128 x 128 space; white Gaussian noise of standard deviation ``stddev *
  mean(|observation|)`` per sample; noise seeds train 1, validation 2, test 3;
  32 000 / 3 200 / 3 200 samples.
* ``dival/datasets/ellipses_dataset.py``: per image, 70 candidate ellipses drawn from
  ``RandomState(seed)`` in this order: intensity ``U(-0.4, 1)``, half-axes ``0.2 *
  Exp(1)`` twice, centre ``U(-0.9, 0.9)`` twice (in units of the half-width), rotation
  ``U(0, 2 pi)``, then ``min(Poisson(40), 70)`` of them are kept (the others get
  intensity 0); the overlapping intensities add up, the non-zero pixels are shifted by
  the image minimum and the image divided by its maximum (background 0, range
  [0, 1]). ``fixed_seeds=True`` gives train 42, validation 2, test 1.
* ``odl/phantom/geometric.py`` (``odlgroup/odl``, ``_ellipse_phantom_2d``): pixel
  centres mapped to [-1, 1] by the first and last centre, point-in-ellipse test on the
  rotated offsets, ``<= 1`` inclusive. :func:`rasterise` reproduces it to the bit
  (dival's first 1000 test images made with odl 1.0.0: equal, float32 for float32).
* ``odl/tomo/geometry/parallel.py`` (``parallel_beam_geometry``): ``rho`` = half the
  diagonal (90.51 mm), ``2 * ceil(rho / pixel) + 1 = 183`` bins over ``[-rho, rho]``
  (pitch 0.9892 mm), angles ``uniform_partition(0, pi, 30)``, i.e. the cell midpoints
  ``(k + 1/2) pi / 30``.
* ``dival/util/odl_utility.py`` (``apply_noise``): the relative standard deviation
  multiplies ``mean(abs(x))`` of each noiseless observation.
* ``dival/measure.py``: PSNR ``20 log10(max(gt) - min(gt)) - 10 log10(MSE)`` per image,
  SSIM ``skimage.metrics.structural_similarity`` with the same data range.
* ``dival/reconstructors/odl_reconstructors.py`` (``FBPReconstructor``,
  ``odl.tomo.fbp_op``) and ``odl/tomo/analytic/filtered_back_projection.py``: filter
  windows on the frequency normalised to Nyquist, zero above ``frequency_scaling``;
  ``jleuschn/supp.dival`` ``reference_params/ellipses/ellipses_fbp_hyper_params.json``:
  Hann, ``frequency_scaling = 0.7051``.
* ``dival/reconstructors/tvadam_ct_reconstructor.py`` and ``dival/util/torch_losses.py``:
  dival's TV minimises ``MSE(A x, y) + gamma * TV_aniso(x)`` with Adam (5000 steps,
  ``gamma = 7.7e-4`` in ``reference_params/ellipses/ellipses_tvadam_hyper_params.json``),
  without a positivity constraint. ``fbpunet_reconstructor.py`` and
  ``learnedpd_reconstructor.py``: U-Net input Hann FBP at ``frequency_scaling = 1``;
  LPD 10 iterations, 5 primal and dual channels, 32-channel blocks, batch 5, 50
  epochs, lr 1e-3 (``ellipses_learnedpd_hyper_params.json``).

Which version of the data set the paper used: dival 0.4.0 (pull request #5, December
2019, commit ``e2b4066``) replaced the first ``ellipses`` data set (50 ellipses,
non-zero background, ray transform divided by its spectral norm, 5 % noise) by the one
above, with **2.5 %** noise and no normalisation. The published numbers fit 2.5 %: on
dival's first 1000 test images, FBP with the reference Hann 0.7051 scores 24.23 dB here
at 2.5 % and 23.56 dB at 5 %, and dival's pipeline itself, run with odl 1.0.0
(``astra_cpu``), 24.16 +- 0.10 and 23.50 +- 0.09 dB (published: 24.18); 0.7051 is also
the validation optimum at 2.5 % (0.6 at 5 %). ``ellipses.noise`` is therefore 0.025 by
default; 0.05 reproduces the other reading (see ``conf/experiment/ellipses.yaml``).
Without normalisation the data are plain line integrals in mm (pixel 1 mm), the units
of ``ct_operator(geometry).forward`` that :class:`~sparsect.models.module.ReconModule`
expects with ``acquisition.sinogram = "linear"``.

Differences from dival, each measured:

* angles: :meth:`Geometry.angles` starts at 0, odl's at half a step (3 degrees). The
  set is the same up to a rotation by 3 degrees of a distribution that is nearly
  rotation invariant (uniform rotations, centres in a square): on 200 test images
  FBP moved by at most 0.06 dB with the offset; sparsect's geometry is used as is.
* projector: ASTRA's CPU Joseph kernel (``linear``) instead of odl's default
  ``astra_cuda``; FBP agrees with odl 1.0.0 + ``astra_cpu`` within 0.07 dB (above).
* FBP: filtered with the band-limited ramp of :mod:`sparsect.physics.filters`, then
  the adjoint of the torch operator. odl's ramp, ASTRA's and this one give the same
  grey levels (a uniform disc reconstructs to 0.999-1.006); the ramp sampled as
  ``|nu|`` on the zero-padded grid would read 1.3 % low and lose 0.3 dB.
* TV: sparsect's Chambolle-Pock (:func:`sparsect.physics.iterative.tv`, isotropic TV,
  exact minimiser) rather than 5000 Adam steps on an anisotropic TV; its weight and
  iteration count are chosen on validation data. ``tv.nonnegative`` (default false,
  as dival) adds ``x >= 0``.
* samples: ``ellipses.samples`` sets how many of each split are made; the test set is
  dival's first N test images (``sampler: dival`` replays dival's fixed-seed stream).

Entry point: :func:`run_benchmark`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsect.data.store import atomic_dir, atomic_write_json
from sparsect.errors import InputError
from sparsect.evaluation.statistics import bootstrap_ci
from sparsect.physics.filters import frequency_response
from sparsect.physics.geometry import Geometry
from sparsect.physics.operator import ct_operator

PUBLISHED_PSNR = {"fbp": 24.18, "tv": 27.96, "unet": 29.36, "lpd": 32.27}
"""Test PSNR (dB) of Baguer, Leuschner & Schmidt (2020) on the ellipses data set."""

METHOD_NAMES = {"fbp": "FBP", "tv": "TV", "unet": "FBP+U-Net", "lpd": "Learned Primal-Dual"}
SPLITS = ("train", "validation", "test")
SAMPLERS = ("dival", "generator")

DIVAL_PHANTOM_SEEDS = {"train": 42, "validation": 2, "test": 1}
"""``EllipsesDataset(fixed_seeds=True)``."""
DIVAL_NOISE_SEEDS = {"train": 1, "validation": 2, "test": 3}
"""``create_pair_dataset(noise_seeds=...)`` in ``get_standard_dataset('ellipses')``."""
DIVAL_SAMPLES = {"train": 32000, "validation": 3200, "test": 3200}

MAX_ELLIPSES = 70
MEAN_ELLIPSES = 40
INTENSITY_RANGE = (-0.4, 1.0)
AXIS_SCALE = 0.2
CENTRE_RANGE = (-0.9, 0.9)

FBP_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
"""The windows of ``odl.tomo.fbp_op`` (names in lower case)."""

_PROJECT_BATCH = 64  # images per sparse product: ~60 MiB of 400 x 400 float32 columns


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TrainingSettings:
    """Budget and network of one learned method."""

    epochs: int
    batch_size: int
    lr: float
    net: dict[str, Any]
    fbp_filter: str = "hann"
    fbp_frequency_scaling: float = 1.0
    train_samples: int | None = None  # the first this many of the train split; None: all


@dataclass(frozen=True)
class EllipsesSettings:
    """The ``ellipses`` config section, checked (see ``conf/experiment/ellipses.yaml``)."""

    samples: dict[str, int]
    phantom_seeds: dict[str, int]
    noise_seeds: dict[str, int]
    sampler: str = "dival"
    noise: float = 0.025
    image_size: int = 128
    sim_size: int = 400
    views: int = 30
    methods: tuple[str, ...] = ("fbp", "tv", "unet", "lpd")
    fbp_grid: dict[str, list] = field(default_factory=dict)
    tv_grid: dict[str, list] = field(default_factory=dict)
    tv_nonnegative: bool = False
    tv_batch: int = 100
    unet: TrainingSettings | None = None
    lpd: TrainingSettings | None = None
    seed: int = 0
    bootstrap_resamples: int = 2000


def _fail(key: str, problem: str, fix: str) -> None:
    raise InputError(f"ellipses.{key} {problem}: {fix}.")


def _mapping(section: Any, key: str) -> dict[str, Any]:
    if section is None:
        _fail(key, "is missing", "add it (see conf/experiment/ellipses.yaml)")
    if not isinstance(section, Mapping):
        _fail(key, f"must be a mapping, got {section!r}",
              "write it as a YAML mapping as in conf/experiment/ellipses.yaml")
    return dict(section)


def _int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        _fail(key, f"must be an integer >= {minimum}, got {value!r}", "set a whole number")
    return int(value)


def _real(value: Any, key: str, low: float = 0.0, high: float = math.inf,
          low_open: bool = True) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, int | float | np.floating)
          and math.isfinite(float(value))
          and (float(value) > low if low_open else float(value) >= low)
          and float(value) <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}"
        bound += "" if high == math.inf else f" and <= {high}"
        _fail(key, f"must be a number {bound}, got {value!r}", "set a number in that range")
    return float(value)


def _list(value: Any, key: str) -> list:
    if isinstance(value, str) or not isinstance(value, Iterable) or not list(value):
        _fail(key, f"must be a non-empty list, got {value!r}", "write it as [a, b, ...]")
    return list(value)


def _splits(section: Any, key: str, minimum: int) -> dict[str, int]:
    values = _mapping(section, key)
    unknown = sorted(set(values) - set(SPLITS))
    if unknown:
        _fail(key, f"has unknown splits {unknown}", f"use only {list(SPLITS)}")
    missing = [split for split in SPLITS if split not in values]
    if missing:
        _fail(key, f"lacks {missing}", f"give a value for each of {list(SPLITS)}")
    return {split: _int(values[split], f"{key}.{split}", minimum) for split in SPLITS}


def _training(section: Any, key: str, image_size: int, train_count: int) -> TrainingSettings:
    values = _mapping(section, key)
    known = {"epochs", "batch_size", "lr", "net", "fbp_filter", "fbp_frequency_scaling",
             "train_samples"}
    unknown = sorted(set(values) - known)
    if unknown:
        _fail(f"{key}.{unknown[0]}", "is not a training setting",
              f"remove it or use one of {sorted(known)}")
    train_samples = values.get("train_samples")
    if train_samples is not None:
        train_samples = _int(train_samples, f"{key}.train_samples", 1)
        if train_samples > train_count:
            _fail(f"{key}.train_samples", f"({train_samples}) exceeds samples.train "
                  f"({train_count})", "lower it or raise ellipses.samples.train")
    net = _mapping(values.get("net"), f"{key}.net")
    if "_target_" not in net:
        _fail(f"{key}.net", "lacks _target_", "name the network class, e.g. "
              "sparsect.models.unet.UNet")
    if key == "unet":
        depth = _int(net.get("depth", 4), f"{key}.net.depth", 1)
        if image_size % 2 ** (depth - 1):
            _fail(f"{key}.net.depth", f"({depth}) does not divide the {image_size}-pixel image "
                  "into whole levels", "lower the depth")
    fbp_filter = values.get("fbp_filter", "hann")
    if fbp_filter not in FBP_FILTERS:
        _fail(f"{key}.fbp_filter", f"is {fbp_filter!r}", f"choose one of {list(FBP_FILTERS)}")
    return TrainingSettings(
        epochs=_int(values.get("epochs"), f"{key}.epochs", 1),
        batch_size=_int(values.get("batch_size"), f"{key}.batch_size", 1),
        lr=_real(values.get("lr"), f"{key}.lr"),
        net=net,
        fbp_filter=str(fbp_filter),
        fbp_frequency_scaling=_real(values.get("fbp_frequency_scaling", 1.0),
                                    f"{key}.fbp_frequency_scaling", 0.0, 1.0),
        train_samples=train_samples,
    )


def settings(cfg: Mapping[str, Any]) -> EllipsesSettings:
    """Reads and checks the ``ellipses`` section of ``cfg`` (the whole config, or the
    section itself, plain or OmegaConf); a bad value raises :class:`InputError` naming
    its key."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise InputError("The ellipses benchmark needs a config mapping: pass the composed "
                         "config with experiment=ellipses.")
    if "ellipses" in cfg:
        section = _mapping(cfg["ellipses"], "")
    elif "samples" in cfg:
        section = dict(cfg)
    else:
        raise InputError("The config has no 'ellipses' section: compose it with "
                         "experiment=ellipses (conf/experiment/ellipses.yaml).")
    known = {"samples", "phantom_seeds", "noise_seeds", "sampler", "noise", "image_size",
             "sim_size", "views", "methods", "fbp", "tv", "unet", "lpd", "seed",
             "bootstrap_resamples"}
    unknown = sorted(set(section) - known)
    if unknown:
        _fail(str(unknown[0]), "is not a setting of the benchmark",
              f"remove it or use one of {sorted(known)}")
    samples = _splits(section.get("samples"), "samples", 0)
    if samples["validation"] < 1 or samples["test"] < 1:
        _fail("samples", f"has {samples}", "give at least one validation and one test sample")
    sampler = section.get("sampler", "dival")
    if sampler not in SAMPLERS:
        _fail("sampler", f"is {sampler!r}", f"choose one of {list(SAMPLERS)}")
    image_size = _int(section.get("image_size", 128), "image_size", 8)
    sim_size = _int(section.get("sim_size", 400), "sim_size", 8)
    if sim_size < image_size:
        _fail("sim_size", f"({sim_size}) is below image_size ({image_size})",
              "simulate on a finer grid than the reconstruction (dival: 400 for 128)")
    methods = tuple(_list(section.get("methods", list(PUBLISHED_PSNR)), "methods"))
    for method in methods:
        if method not in PUBLISHED_PSNR:
            _fail("methods", f"has {method!r}", f"choose from {list(PUBLISHED_PSNR)}")
    fbp = _mapping(section.get("fbp"), "fbp")
    fbp_grid = {"filter": _list(fbp.get("filter"), "fbp.filter"),
                "frequency_scaling": _list(fbp.get("frequency_scaling"),
                                           "fbp.frequency_scaling")}
    for name in fbp_grid["filter"]:
        if name not in FBP_FILTERS:
            _fail("fbp.filter", f"has {name!r}", f"choose from {list(FBP_FILTERS)}")
    fbp_grid["frequency_scaling"] = [_real(v, "fbp.frequency_scaling", 0.0, 1.0)
                                     for v in fbp_grid["frequency_scaling"]]
    tv_grid: dict[str, list] = {}
    tv_nonnegative, tv_batch = False, 100
    if "tv" in methods:
        tv = _mapping(section.get("tv"), "tv")
        tv_grid = {"weight": [_real(v, "tv.weight") for v in _list(tv.get("weight"),
                                                                    "tv.weight")],
                   "iterations": [_int(v, "tv.iterations", 1)
                                  for v in _list(tv.get("iterations"), "tv.iterations")]}
        tv_nonnegative = tv.get("nonnegative", False)
        if not isinstance(tv_nonnegative, bool):
            _fail("tv.nonnegative", f"is {tv_nonnegative!r}", "set true or false")
        tv_batch = _int(tv.get("batch", 100), "tv.batch", 1)
    learned = {}
    for name in ("unet", "lpd"):
        if name in methods:
            if samples["train"] < 1:
                _fail("samples.train", "is 0", f"give training samples for {name}, or remove "
                      f"{name} from ellipses.methods")
            learned[name] = _training(section.get(name), name, image_size, samples["train"])
    return EllipsesSettings(
        samples=samples,
        phantom_seeds=_splits(section.get("phantom_seeds", DIVAL_PHANTOM_SEEDS),
                              "phantom_seeds", 0),
        noise_seeds=_splits(section.get("noise_seeds", DIVAL_NOISE_SEEDS), "noise_seeds", 0),
        sampler=sampler,
        noise=_real(section.get("noise", 0.025), "noise", 0.0, 10.0, low_open=False),
        image_size=image_size, sim_size=sim_size,
        views=_int(section.get("views", 30), "views", 1),
        methods=methods, fbp_grid=fbp_grid, tv_grid=tv_grid,
        tv_nonnegative=tv_nonnegative, tv_batch=tv_batch,
        unet=learned.get("unet"), lpd=learned.get("lpd"),
        seed=_int(section.get("seed", 0), "seed", 0),
        bootstrap_resamples=_int(section.get("bootstrap_resamples", 2000),
                                 "bootstrap_resamples", 1),
    )


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
    bins, pitch = detector(s.image_size)
    return Geometry("parallel", views=s.views, image_size=s.image_size, pixel_size_mm=1.0,
                    detector_count=bins, detector_spacing_mm=pitch)


def sim_geometry(s: EllipsesSettings) -> Geometry:
    """The simulation geometry: the same square and detector at ``sim_size`` pixels."""
    bins, pitch = detector(s.image_size)
    return Geometry("parallel", views=s.views, image_size=s.sim_size,
                    pixel_size_mm=s.image_size / s.sim_size,
                    detector_count=bins, detector_spacing_mm=pitch)


# --------------------------------------------------------------------------- simulation


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscaling as dival does it (``skimage.transform.resize(order=1)``).

    Pixel-centre convention: output pixel ``o`` samples input coordinate
    ``(o + 1/2) * n_in / n_out - 1/2`` (what odl's cell-centred spaces assume), with
    mirrored borders. ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` uses the same convention but clamps at the border, which
    changes only the outermost output pixel."""
    from skimage.transform import resize

    return np.stack([resize(image, (size, size), order=1, mode="reflect",
                            anti_aliasing=False) for image in images]).astype(np.float32)


def project(images: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Noiseless line integrals ``(N, views, bins)`` of ``(N, size, size)`` images."""
    op = ct_operator(geometry)
    out = np.empty((len(images), *geometry.sinogram_shape), np.float32)
    with torch.no_grad():
        for start in range(0, len(images), _PROJECT_BATCH):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + _PROJECT_BATCH]))
            out[start:start + len(chunk)] = op.forward(chunk).numpy()
    return out


def add_noise(clean: np.ndarray, relative_std: float, seed: int,
              sampler: str = "dival") -> np.ndarray:
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
        clean[start:start + 256] = project(upscale(images[start:start + 256], s.sim_size),
                                           geometry)
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


def fbp(sinograms: np.ndarray | torch.Tensor, geometry: Geometry, filter: str = "hann",  # noqa: A002
        frequency_scaling: float = 1.0) -> np.ndarray:
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
    filtered = np.fft.irfft(np.fft.rfft(sino, n=size, axis=-1) * kernel, n=size,
                            axis=-1)[..., :bins]
    op = ct_operator(geometry)
    scale = (math.radians(geometry.angular_range_deg) / geometry.views
             * geometry.detector_spacing_mm / geometry.pixel_size_mm**2)
    out = np.empty((len(sino), *geometry.image_shape), np.float32)
    with torch.no_grad():
        for start in range(0, len(sino), 256):
            chunk = torch.from_numpy(filtered[start:start + 256].astype(np.float32))
            out[start:start + len(chunk)] = op.adjoint(chunk).numpy() * scale
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

    return np.array([structural_similarity(np.asarray(r, np.float64), np.asarray(t, np.float64),
                                           data_range=float(t.max() - t.min()))
                     for r, t in zip(recon, truth, strict=True)])


def summary(values: np.ndarray, resamples: int, seed: int = 0) -> dict[str, Any]:
    """Mean, 95 % percentile-bootstrap CI over images, and the count."""
    values = np.asarray(values, float)
    lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi], "n": int(values.size)}


# --------------------------------------------------------------------------- tuning


class _Clock:
    """Wall-clock and CPU seconds (all threads) since creation: the wall-clock depends on
    what else shares the cores, the CPU time much less."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def seconds(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.wall, 1),
                "cpu_seconds": round(time.process_time() - self.cpu, 1)}



def choose_fbp(validation: Split, geometry: Geometry, grid: Mapping[str, list]
               ) -> dict[str, Any]:
    """Every ``filter x frequency_scaling`` of ``grid`` scored by the mean PSNR on the
    validation split; returns the values tried, their scores and the best setting."""
    tried = []
    for name in grid["filter"]:
        for fs in grid["frequency_scaling"]:
            score = float(np.mean(psnr(fbp(validation.sinograms, geometry, name, fs),
                                       validation.images)))
            tried.append({"filter": name, "frequency_scaling": float(fs),
                          "validation_psnr": score})
    best = max(tried, key=lambda t: t["validation_psnr"])
    return {"tried": tried,
            "chosen": {"filter": best["filter"], "frequency_scaling": best["frequency_scaling"]},
            "validation_psnr": best["validation_psnr"]}


def tv_reconstruct(sinograms: np.ndarray, initial: np.ndarray, geometry: Geometry,
                   weight: float, iterations: Iterable[int] | int, nonnegative: bool,
                   batch: int = 100) -> dict[int, np.ndarray]:
    """Chambolle-Pock TV (:func:`sparsect.physics.iterative.tv`) on the torch operator,
    in batches; returns iteration count -> ``(N, H, W)``."""
    from sparsect.physics.iterative import tv

    counts = sorted({int(iterations)} if isinstance(iterations, int) else set(iterations))
    op = ct_operator(geometry)
    out = {k: np.empty((len(sinograms), *geometry.image_shape), np.float32) for k in counts}
    for start in range(0, len(sinograms), batch):
        stop = start + batch
        result = tv(op, torch.from_numpy(np.ascontiguousarray(sinograms[start:stop])),
                    torch.from_numpy(np.ascontiguousarray(initial[start:stop])),
                    record=counts, weight=weight, nonnegative=nonnegative)
        for k in counts:
            out[k][start:start + len(result[k])] = result[k].numpy()
    return out


def choose_tv(validation: Split, geometry: Geometry, grid: Mapping[str, list],
              fbp_setting: Mapping[str, Any], nonnegative: bool, batch: int = 100
              ) -> dict[str, Any]:
    """Every ``weight x iterations`` of ``grid`` scored by the mean validation PSNR; one
    run per weight to the largest count records the shorter counts on the way."""
    initial = fbp(validation.sinograms, geometry, **fbp_setting)
    tried = []
    for weight in grid["weight"]:
        recons = tv_reconstruct(validation.sinograms, initial, geometry, weight,
                                grid["iterations"], nonnegative, batch)
        for count, recon in recons.items():
            tried.append({"weight": float(weight), "iterations": int(count),
                          "validation_psnr": float(np.mean(psnr(recon, validation.images)))})
    best = max(tried, key=lambda t: t["validation_psnr"])
    return {"tried": tried,
            "chosen": {"weight": best["weight"], "iterations": best["iterations"],
                       "nonnegative": nonnegative, "initial": dict(fbp_setting)},
            "validation_psnr": best["validation_psnr"]}


def classical(s: EllipsesSettings, validation: Split, test: Split,
              log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """FBP and TV (those of ``s.methods``): settings chosen on ``validation`` only, then
    run on ``test``. Returns per method the setting, how validation chose it, and its
    scores on ``test``."""
    geometry = reco_geometry(s)
    results: dict[str, dict[str, Any]] = {}
    clock = _Clock()
    fbp_choice = choose_fbp(validation, geometry, s.fbp_grid)
    test_fbp = fbp(test.sinograms, geometry, **fbp_choice["chosen"])
    if "fbp" in s.methods:
        results["fbp"] = _scored(
            test_fbp, test, s, settings=fbp_choice["chosen"],
            chosen_by="mean PSNR on the validation split over ellipses.fbp "
                      "(filter x frequency_scaling)",
            tuning=fbp_choice, **clock.seconds())
        log(f"fbp: {fbp_choice['chosen']} validation {fbp_choice['validation_psnr']:.2f} dB, "
            f"test {results['fbp']['psnr']['mean']:.2f} dB")
    if "tv" in s.methods:
        clock = _Clock()
        tv_choice = choose_tv(validation, geometry, s.tv_grid, fbp_choice["chosen"],
                              s.tv_nonnegative, s.tv_batch)
        chosen = tv_choice["chosen"]
        recon = tv_reconstruct(test.sinograms, test_fbp, geometry, chosen["weight"],
                               chosen["iterations"], chosen["nonnegative"],
                               s.tv_batch)[chosen["iterations"]]
        results["tv"] = _scored(
            recon, test, s, settings=chosen,
            chosen_by="mean PSNR on the validation split over ellipses.tv "
                      "(weight x iterations), started from the chosen FBP",
            tuning=tv_choice, **clock.seconds())
        log(f"tv: weight {chosen['weight']} x {chosen['iterations']} iterations, validation "
            f"{tv_choice['validation_psnr']:.2f} dB, test {results['tv']['psnr']['mean']:.2f} dB")
    return results


def _scored(recon: np.ndarray, test: Split, s: EllipsesSettings, **extra: Any
            ) -> dict[str, Any]:
    values = psnr(recon, test.images)
    structural = ssim(recon, test.images)
    return {"psnr": summary(values, s.bootstrap_resamples),
            "ssim": summary(structural, s.bootstrap_resamples),
            "per_image_psnr": [round(float(v), 4) for v in values],
            **extra}


# --------------------------------------------------------------------------- benchmark


def _report(metrics: dict[str, Any]) -> str:
    data = metrics["data"]
    lines = [
        "# dival ellipses benchmark",
        "",
        f"Test split: the first {data['samples']['test']} test images (sampler "
        f"`{data['sampler']}`, seed {data['phantom_seeds']['test']}), {data['views']} views, "
        f"white noise {100 * data['noise']:g} % of the mean |observation|. PSNR as dival "
        "(per-image data range of the ground truth); 95 % bootstrap CI over images.",
        "",
        "| method | ours PSNR (dB) | 95 % CI | published | difference | SSIM | setting |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, result in metrics["methods"].items():
        p = result["psnr"]
        lines.append(
            f"| {METHOD_NAMES[key]} | {p['mean']:.2f} | {p['ci95'][0]:.2f}-{p['ci95'][1]:.2f} | "
            f"{result['published_psnr']:.2f} | {result['difference_db']:+.2f} | "
            f"{result['ssim']['mean']:.3f} | {_describe(key, result)} |")
    lines += ["", "Published: Baguer, Leuschner & Schmidt, Inverse Problems 36 (2020) 094004 "
              "(32 000 training images; FBP and TV need none).", ""]
    training = {k: v["training"] for k, v in metrics["methods"].items() if "training" in v}
    if training:
        lines.append("Training budgets (train split only; checkpoint chosen by validation "
                     "PSNR):")
        lines.append("")
        for key, t in training.items():
            lines.append(f"- {METHOD_NAMES[key]}: {t['samples']} images, {t['epochs']} epochs "
                         f"(best {t['best_epoch']}), batch {t['batch_size']}, "
                         f"{t['seconds']:.0f} s wall-clock, {t['cpu_seconds']:.0f} s CPU")
        lines.append("")
    timing = metrics["timing"]
    lines.append(f"Wall-clock: {timing['total_seconds']:.0f} s, CPU time "
                 f"{timing['cpu_seconds']:.0f} s on {timing['cpu_threads']} threads.")
    return "\n".join(lines) + "\n"


def _describe(key: str, result: Mapping[str, Any]) -> str:
    s = result["settings"]
    if key == "fbp":
        return f"{s['filter']}, frequency scaling {s['frequency_scaling']:.3g}"
    if key == "tv":
        return f"weight {s['weight']:g}, {s['iterations']} iterations"
    return f"{s['net']['_target_'].rsplit('.', 1)[-1]}, lr {s['lr']:g}"


def run_benchmark(cfg: Mapping[str, Any], out_dir: Path,
                  log: Callable[[str], None] = print) -> Path:
    """Runs the benchmark the ``ellipses`` config section describes.

    Makes the splits, chooses FBP's and TV's settings on validation, trains the learned
    methods on train (checkpoint chosen on validation), scores everything on test, and
    writes ``out_dir/metrics.json`` and ``out_dir/report.md`` (plus the selected
    checkpoints ``unet.ckpt`` / ``lpd.ckpt``) atomically: an interrupted run leaves
    ``out_dir`` as it was. Returns ``out_dir``.
    """
    s = settings(cfg)
    out_dir = Path(out_dir)
    total = _Clock()
    timing: dict[str, float] = {}
    clock = _Clock()
    validation, test = make_split("validation", s), make_split("test", s)
    learned = [m for m in ("unet", "lpd") if m in s.methods]
    train = make_split("train", s) if learned else None
    timing["data_seconds"] = clock.seconds()["seconds"]
    log(f"data: {s.samples} samples in {timing['data_seconds']:.0f} s")

    methods = classical(s, validation, test, log)
    with atomic_dir(out_dir) as tmp:
        if learned:
            from sparsect.benchmarks.ellipses_learned import train_and_test

            for name in learned:
                clock = _Clock()
                recon, info = train_and_test(name, s, train, validation, test,
                                             work_dir=tmp / f".{name}.work",
                                             checkpoint=tmp / f"{name}.ckpt", log=log)
                methods[name] = _scored(recon, test, s, **info, **clock.seconds())
                log(f"{name}: test {methods[name]['psnr']['mean']:.2f} dB")
        ordered = {k: methods[k] for k in PUBLISHED_PSNR if k in methods}
        for key, result in ordered.items():
            result["published_psnr"] = PUBLISHED_PSNR[key]
            result["difference_db"] = result["psnr"]["mean"] - PUBLISHED_PSNR[key]
        elapsed = total.seconds()
        timing["total_seconds"], timing["cpu_seconds"] = elapsed["seconds"], elapsed["cpu_seconds"]
        timing["cpu_threads"] = torch.get_num_threads()
        metrics = {
            "benchmark": "dival ellipses (get_standard_dataset('ellipses'), dival >= 0.4)",
            "published": {"reference": "Baguer, Leuschner & Schmidt, Inverse Problems 36 "
                                       "(2020) 094004", "psnr": PUBLISHED_PSNR,
                          "samples": DIVAL_SAMPLES},
            "data": {
                "samples": s.samples, "sampler": s.sampler, "phantom_seeds": s.phantom_seeds,
                "noise_seeds": s.noise_seeds, "noise": s.noise, "views": s.views,
                "image_size": s.image_size, "sim_size": s.sim_size,
                "reco_geometry": reco_geometry(s).to_dict(),
                "sim_geometry": sim_geometry(s).to_dict(),
                "sinogram_units": "line integrals of the [0, 1] image in mm (not normalised "
                                  "by the operator norm)",
            },
            "settings": json.loads(json.dumps(asdict(s), default=str)),
            "methods": ordered,
            "timing": timing,
            "platform": {"python": platform.python_version(), "torch": torch.__version__,
                         "machine": platform.machine()},
        }
        atomic_write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(_report(metrics))
    log(f"ellipses benchmark written to {out_dir} in {timing['total_seconds']:.0f} s")
    return out_dir
