"""Throughput of sparsect's slice simulation against scikit-image radon/iradon.

For 30, 60 and 120 parallel-beam views on a 256 x 256 grid, times the full
per-slice simulation (projection + Poisson noise + ram-lak FBP) of
:class:`sparsect.physics.Simulator` with ``upsample=1`` (same grid as
scikit-image; the default ``upsample=2`` projects a 4x larger image) against
``skimage.transform.radon`` + the same noise + ``iradon(filter_name="ramp")``.
Both run in a single process and in a ``multiprocessing.Pool`` with one worker
per CPU core (one Simulator per worker); pools are warmed up before timing, so
start-up costs are excluded for both. Each figure is the best of ``--repeats``
runs, with the two libraries alternating, so that load from other processes on
a shared machine penalises neither side systematically.

Run: ``PYTHONPATH=src python scripts/bench_simulate.py [--slices 32] [--processes N]
[--repeats 3]``.
The last line is ``speedup_vs_skimage_60: <ratio>``, the more conservative of
the single-process and pooled ratios at 60 views.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from multiprocessing import Pool

import numpy as np
from skimage.data import shepp_logan_phantom
from skimage.draw import ellipse
from skimage.transform import iradon, radon, resize

from sparsect.physics import Geometry, NoiseModel, Simulator, hu_to_mu, mu_to_hu

SIZE = 256
PIXEL_MM = 1.0
NOISE = NoiseModel(i0=1e5)
_STATE: dict = {}


def make_slices(count: int, seed: int = 0) -> np.ndarray:
    """``(count, SIZE, SIZE)`` HU slices: Shepp-Logan plus random ellipses, in [-1000, 1000]."""
    rng = np.random.default_rng(seed)
    base = resize(shepp_logan_phantom(), (SIZE, SIZE), order=1, anti_aliasing=True)
    slices = np.empty((count, SIZE, SIZE), np.float32)
    for i in range(count):
        image = base.copy()
        for _ in range(5):
            rr, cc = ellipse(rng.uniform(70, 186), rng.uniform(90, 166), rng.uniform(4, 18),
                             rng.uniform(4, 18), shape=image.shape, rotation=rng.uniform(0, np.pi))
            image[rr, cc] += rng.uniform(-0.1, 0.3)
        # Shepp-Logan grey levels 0..1 taken as mu / mu_water, i.e. air..water.
        slices[i] = np.clip(mu_to_hu(image * hu_to_mu(0.0)), -1000.0, 1000.0)
    return slices


def skimage_simulate(hu: np.ndarray, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same pipeline with scikit-image (pixel units converted to mm)."""
    theta = np.arange(views) * 180.0 / views
    mu = np.maximum(hu_to_mu(hu), 0.0)
    sinogram = radon(mu, theta, circle=False) * PIXEL_MM  # (bins, views)
    noisy = NOISE.apply(sinogram, np.random.default_rng(seed))
    image = iradon(noisy, theta, output_size=SIZE, filter_name="ramp", circle=False)
    return noisy.T, mu_to_hu(image / PIXEL_MM)


def _init(kind: str, views: int) -> None:
    _STATE["kind"], _STATE["views"] = kind, views
    if kind == "sparsect":
        geometry = Geometry("parallel", views=views, image_size=SIZE, pixel_size_mm=PIXEL_MM)
        _STATE["simulator"] = Simulator(geometry, NOISE, upsample=1, device="cpu")


def _one(job: tuple[np.ndarray, int]) -> np.ndarray:
    hu, seed = job
    if _STATE["kind"] == "sparsect":
        return _STATE["simulator"](hu, seed)[1]
    return skimage_simulate(hu, _STATE["views"], seed)[1]


def time_single(kind: str, views: int, slices: np.ndarray) -> tuple[float, np.ndarray]:
    """Slices per second in this process (after one warm-up slice)."""
    _init(kind, views)
    _one((slices[0], 0))
    start = time.perf_counter()
    images = [_one((hu, i)) for i, hu in enumerate(slices)]
    rate = len(slices) / (time.perf_counter() - start)
    if kind == "sparsect":
        _STATE.pop("simulator").close()
    return rate, images[0]


def time_pool(kind: str, views: int, slices: np.ndarray, processes: int) -> float:
    """Slices per second over a warmed-up pool of ``processes`` workers."""
    jobs = [(hu, i) for i, hu in enumerate(slices)]
    with Pool(processes, initializer=_init, initargs=(kind, views)) as pool:
        pool.map(_one, jobs[:processes], chunksize=1)  # start every worker
        start = time.perf_counter()
        pool.map(_one, jobs, chunksize=max(1, len(jobs) // (4 * processes)))
        return len(jobs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slices = make_slices(args.slices)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"pool of {args.processes} processes; {args.slices} slices of {SIZE}x{SIZE} "
          f"at {PIXEL_MM} mm; parallel beam; i0={NOISE.i0:g}; best of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("sparsect: Simulator(upsample=1, device='cpu') = ASTRA 'linear' FP + noise + "
          "ASTRA CPU FBP ram-lak; skimage: radon(circle=False) + same noise + "
          "iradon(filter_name='ramp')")
    reference = hu_to_mu(slices[0])
    header = (f"{'views':>5} | {'sparsect 1p':>11} {'skimage 1p':>10} {'ratio':>6} | "
              f"{'sparsect pool':>13} {'skimage pool':>12} {'ratio':>6} | "
              f"{'RMSE HU sparsect':>16} {'skimage':>7}")
    print(header)
    print("-" * len(header))
    ratios = {}
    for views in (30, 60, 120):
        rates: dict[str, list[float]] = {}
        images = {}
        for _ in range(args.repeats):
            for kind in ("sparsect", "skimage"):
                rate, images[kind] = time_single(kind, views, slices)
                rates.setdefault(kind, []).append(rate)
                rates.setdefault(kind + " pool", []).append(
                    time_pool(kind, views, slices, args.processes))
        ours, theirs, ours_pool, theirs_pool = (
            max(rates[k]) for k in ("sparsect", "skimage", "sparsect pool", "skimage pool"))
        our_image, their_image = images["sparsect"], images["skimage"]
        ratios[views] = (ours / theirs, ours_pool / theirs_pool)
        rmse = [float(np.sqrt(np.mean((hu_to_mu(image) - reference) ** 2)) / hu_to_mu(0.0) * 1e3)
                for image in (our_image, their_image)]
        print(f"{views:>5} | {ours:>11.1f} {theirs:>10.1f} {ratios[views][0]:>6.2f} | "
              f"{ours_pool:>13.1f} {theirs_pool:>12.1f} {ratios[views][1]:>6.2f} | "
              f"{rmse[0]:>16.1f} {rmse[1]:>7.1f}")
    print("(rates in slices/s; ratio = sparsect / skimage; RMSE of slice 0's FBP vs its "
          "reference, to show both do comparable work)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    single, pooled = ratios[60]
    which = "single-process" if single <= pooled else "pooled"
    print(f"reported ratio at 60 views: the more conservative of single-process ({single:.2f}) "
          f"and pooled ({pooled:.2f}), i.e. {which}")
    print(f"speedup_vs_skimage_60: {min(single, pooled):.2f}")


if __name__ == "__main__":
    main()
