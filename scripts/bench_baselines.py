#!/usr/bin/env python
"""Batched torch SIRT / TV (``sparsect.physics.iterative``) against ASTRA's slice-by-slice loop.

What is measured, for ``--slices`` realistic sinograms of one geometry (default
128 x 128 at 3.0 mm, 60 parallel-beam views):

* SIRT-``--iterations`` (default 100, ``MinConstraint=0``): ASTRA's C++ SIRT run
  slice by slice (``reconstruct("sirt", Projector, ...)``, what the ``baselines``
  stage does) against :func:`sparsect.physics.iterative.sirt` on all slices at once;
* TV-``--iterations`` (weight 0.03, Chambolle-Pock from the ram-lak FBP): the numpy
  loop over ASTRA's forward / adjoint (``reconstruct("tv", ...)``) against
  :func:`sparsect.physics.iterative.tv`. Both timings include the FBP start
  (``Projector.fbp`` of every slice).

The sinograms are the pipeline's: body-like HU slices (air, fat, soft tissue,
lungs, heart, spine, ribs, liver, lesions; anatomy changing from slice to slice)
through :func:`sparsect.physics.simulate_slice`, i.e. ``hu_to_mu``, projection on
a 2x finer grid (no inverse crime) and Poisson noise at ``i0 = 1e5``.

Conditions: both sides run in this one process run, on the same slices, with the
same number of CPU cores, ``--threads``: torch gets ``torch.set_num_threads(threads)``;
ASTRA's CPU 2D code is single-threaded, so with ``--threads 1`` its loop runs in
this process and with ``--threads N > 1`` in a ``ProcessPoolExecutor`` of N workers
(one slice per job; the workers are started, and their projector and ``||A||``
built, before timing). The torch operator (ASTRA's matrix as sparse CSR) and its
norm are built before timing too; that one-off cost is printed as
``operator_build_s``. Torch timings are the median of ``--repeats`` runs after one
warm-up; an ASTRA timing is a single run when that run takes more than 2 s (the
output says so), else the median of ``--repeats`` further runs. Each timing line
lists its individual runs, and the load average is printed before and after:
when ``--threads`` equals the number of cores, any other busy process stalls
torch's parallel regions (every operation waits for its slowest thread), which
can slow the torch side many times over; on a shared machine, rerun if the runs
of one line disagree.

Run: ``python scripts/bench_baselines.py [--threads 1] [--slices 16] [--iterations 100]``.

Reading the output: ``*_s`` lines are wall-clock seconds for the whole batch of
slices; ``agreement`` lines give the largest absolute difference in HU between
the two implementations' images and their mean PSNR (HU window -1000..2000, vs the
phantom, which is drawn on the reconstruction grid) with the difference in dB: the
speedups only count when these are small (``sparsect.physics.iterative`` promises
<= 1 HU and 0.02 dB). ``forward`` / ``adjoint`` lines are per-batch projection
times, for reference only. The last three lines are
``speedup_sirt``, ``speedup_tv`` (ASTRA time / torch time) and
``speedup_vs_astra_loop``, the smaller of the two.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from sparsect.evaluation.metrics import psnr_hu
from sparsect.physics import (
    Geometry,
    NoiseModel,
    Projector,
    hu_to_mu,
    mu_to_hu,
    reconstruct,
    simulate_slice,
)
from sparsect.physics.iterative import sirt, tv
from sparsect.physics.operator import ct_operator
from sparsect.physics.reconstruct import operator_norm

NOISE = NoiseModel(i0=1e5)
TV_WEIGHT = 0.03
HU_WINDOW = (-1000.0, 2000.0)
ONE_RUN_ABOVE_S = 2.0
_WORKER: dict = {}


# --------------------------------------------------------------------------- phantom


def _ellipse(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], axes: tuple[float, float],
             angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u, v = x - centre[0], y - centre[1]
    return ((c * u + s * v) / axes[0]) ** 2 + ((-s * u + c * v) / axes[1]) ** 2 <= 1.0


def body_slices(count: int, size: int, pixel_mm: float, seed: int = 0) -> np.ndarray:
    """``(count, size, size)`` float32 HU slices of a torso, lungs at the top slices and
    liver at the bottom ones, with random jitter per slice (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    fov = size * pixel_mm
    coords = (np.arange(size) - (size - 1) / 2.0) * pixel_mm
    x, y = np.meshgrid(coords, -coords)  # y up, row 0 on top
    slices = np.empty((count, size, size), np.float32)
    for i in range(count):
        z = i / max(count - 1, 1)  # 0: upper thorax, 1: upper abdomen
        a = 0.40 * fov * rng.uniform(0.95, 1.05)
        b = 0.29 * fov * rng.uniform(0.95, 1.05)
        fat = rng.uniform(8.0, 18.0)
        hu = np.full((size, size), -1000.0, np.float32)
        hu[_ellipse(x, y, (0, 0), (a, b))] = -100.0  # subcutaneous fat
        hu[_ellipse(x, y, (0, 0), (a - fat, b - fat))] = 40.0  # muscle / soft tissue
        angles = np.linspace(-0.35, 0.35, 5) * np.pi + rng.uniform(-0.03, 0.03)
        for t in np.concatenate([angles, np.pi - angles]):  # ribs along the inner body wall
            cx, cy = 0.87 * (a - fat) * np.cos(t), 0.87 * (b - fat) * np.sin(t)
            hu[_ellipse(x, y, (cx, cy), (6.0, 4.0), t)] = rng.uniform(700, 1000)
        lung = 1.0 - 0.7 * z
        if lung > 0.35:
            for side in (-1, 1):
                centre = (side * 0.45 * a, 0.10 * b)
                axes = (0.30 * a * lung ** 0.5, 0.55 * b * lung)
                region = _ellipse(x, y, centre, axes, side * 0.15)
                gradient = 40.0 * (centre[1] - y) / (b + 1e-6)  # denser at the back
                hu[region] = (-850.0 + gradient + rng.normal(0, 15, (size, size)))[region]
        hu[_ellipse(x, y, (0.12 * a, 0.05 * b), (0.28 * a * (1 - 0.4 * z), 0.35 * b), 0.4)] = 45.0
        if z > 0.3:  # liver on the patient's right (image left), growing downwards
            liver = _ellipse(x, y, (-0.35 * a, -0.05 * b), (0.45 * a * z, 0.55 * b * z), -0.3)
            hu[liver & (hu > -500) & (hu < 200)] = 60.0
        hu[_ellipse(x, y, (0.10 * b, -0.45 * b), (0.06 * b, 0.06 * b))] = 50.0  # aorta
        spine = (0.0, -0.68 * b)
        hu[_ellipse(x, y, spine, (0.13 * b, 0.11 * b))] = 1000.0  # cortical shell
        hu[_ellipse(x, y, spine, (0.10 * b, 0.08 * b))] = 250.0  # trabecular core
        hu[_ellipse(x, y, (0.0, -0.86 * b), (0.04 * b, 0.04 * b))] = 20.0  # spinal canal
        for _ in range(rng.integers(1, 4)):  # small lesions inside soft tissue
            centre = (rng.uniform(-0.5, 0.5) * a, rng.uniform(-0.4, 0.3) * b)
            radius = rng.uniform(4.0, 12.0)
            region = _ellipse(x, y, centre, (radius, radius)) & (hu > -200) & (hu < 200)
            hu[region] += rng.choice([-30.0, 40.0])
        slices[i] = hu
    return slices


# --------------------------------------------------------------------------- ASTRA side


def _init_worker(geometry: Geometry) -> None:
    """One projector per process, with its ``||A||`` (TV's step size) computed up front."""
    _WORKER["projector"] = projector = Projector(geometry, "cpu")
    operator_norm(projector)


def _astra_job(job: tuple[str, dict, np.ndarray]) -> np.ndarray:
    method, options, sinogram = job
    return reconstruct(method, _WORKER["projector"], sinogram, **options)


def _pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def _project_job(job: tuple[str, np.ndarray]) -> np.ndarray:
    kind, data = job
    projector = _WORKER["projector"]
    return projector.forward(data) if kind == "forward" else projector.adjoint(data)


def start_pool(threads: int, geometry: Geometry) -> ProcessPoolExecutor:
    """``threads`` spawned workers, every one initialised before this returns."""
    pool = ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(geometry,))
    seen: set[int] = set()
    while len(seen) < threads:
        seen.update(pool.map(_pid, [0.3] * threads))
    return pool


def astra_map(function: Callable, jobs: list, pool: ProcessPoolExecutor | None) -> np.ndarray:
    """``function`` on every job: in this process, or one job at a time in ``pool``."""
    if pool is None:
        return np.stack([function(job) for job in jobs])
    return np.stack(list(pool.map(function, jobs, chunksize=1)))


# --------------------------------------------------------------------------- timing


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = function()
    return time.perf_counter() - start, out


def time_median(function: Callable[[], object], repeats: int) -> tuple[float, object, str]:
    """Median of ``repeats`` runs after one warm-up, and the runs' times as text."""
    _, out = timed(function)
    times = [timed(function)[0] for _ in range(repeats)]
    runs = ", ".join(f"{t:.3f}" for t in times)
    return statistics.median(times), out, f"median of {repeats} after a warm-up: {runs}"


def time_astra(function: Callable[[], object], repeats: int) -> tuple[float, object, str]:
    """One run if it takes more than ``ONE_RUN_ABOVE_S``, else the median of ``repeats``
    more runs (the first one then counts as the warm-up)."""
    first, out = timed(function)
    if first > ONE_RUN_ABOVE_S:
        return first, out, f"1 run, as it took > {ONE_RUN_ABOVE_S:g} s"
    times = [timed(function)[0] for _ in range(repeats)]
    runs = ", ".join(f"{t:.3f}" for t in times)
    return statistics.median(times), out, f"median of {repeats} after a warm-up: {runs}"


def mean_psnr(hu: np.ndarray, reference: np.ndarray) -> float:
    return float(psnr_hu(torch.from_numpy(hu), torch.from_numpy(reference), *HU_WINDOW).mean())


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image size in pixels")
    parser.add_argument("--pixel-mm", type=float, default=3.0)
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--beam", choices=("parallel", "fan"), default="parallel")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="cores for each side: torch threads, and ASTRA worker processes")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    iterations = args.iterations

    geometry = Geometry(args.beam, views=args.views, image_size=args.size,
                        pixel_size_mm=args.pixel_mm)
    phantom = body_slices(args.slices, args.size, args.pixel_mm, args.seed)
    projectors: dict = {}
    try:
        sinograms = np.stack([
            simulate_slice(hu, geometry, NOISE, seed=args.seed * 100_003 + i, upsample=2,
                           device="cpu", projectors=projectors)[0]
            for i, hu in enumerate(phantom)])
    finally:
        for projector in projectors.values():
            projector.close()
    sinograms_t = torch.from_numpy(sinograms)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}")
    print(f"geometry: {geometry.beam}, {geometry.views} views, {geometry.image_size}x"
          f"{geometry.image_size} at {geometry.pixel_size_mm:g} mm, "
          f"{geometry.detector_count} bins; {args.slices} slices; i0={NOISE.i0:g}; "
          f"data projected on the 2x finer grid")
    astra_where = ("in this process" if args.threads == 1
                   else f"in a pool of {args.threads} processes, one slice per job")
    print(f"cores per side: {args.threads} (torch threads {torch.get_num_threads()}; "
          f"ASTRA loop {astra_where})")

    build_s, op = timed(lambda: ct_operator(geometry, "cpu"))
    norm_s, norm = timed(op.norm)
    print(f"operator: {op.matrix.shape[0]} x {op.matrix.shape[1]}, nnz {op.nnz}, "
          f"{op.mib:.1f} MiB (A and A^T), ||A|| {norm:.4g}")
    print(f"operator_build_s: {build_s + norm_s:.2f} (matrix {build_s:.2f} + norm {norm_s:.2f}; "
          "once per geometry, not in the timings below)")

    _init_worker(geometry)  # this process's projector (ASTRA loop at 1 thread, FBP, reference)
    projector = _WORKER["projector"]
    pool = start_pool(args.threads, geometry) if args.threads > 1 else None
    try:
        # ---- forward / adjoint, for reference
        mu = np.maximum(hu_to_mu(phantom), 0.0)  # as the simulation does, on this grid
        mu_t = torch.from_numpy(mu)
        reps = max(args.repeats, 5)
        fwd_torch, fwd_t, _ = time_median(lambda: op.forward(mu_t), reps)
        adj_torch, adj_t, _ = time_median(lambda: op.adjoint(sinograms_t), reps)
        fwd_loop, fwd_a, _ = time_median(lambda: np.stack([projector.forward(m) for m in mu]), reps)
        adj_loop, adj_a, _ = time_median(
            lambda: np.stack([projector.adjoint(s) for s in sinograms]), reps)
        fwd_rel = float(np.abs(fwd_t.numpy() - fwd_a).max() / np.abs(fwd_a).max())
        adj_rel = float(np.abs(adj_t.numpy() - adj_a).max() / np.abs(adj_a).max())
        print(f"forward per batch of {args.slices}: torch {fwd_torch * 1e3:.1f} ms, "
              f"ASTRA loop (1 core) {fwd_loop * 1e3:.1f} ms; max rel. diff {fwd_rel:.1e}")
        print(f"adjoint per batch of {args.slices}: torch {adj_torch * 1e3:.1f} ms, "
              f"ASTRA loop (1 core) {adj_loop * 1e3:.1f} ms; max rel. diff {adj_rel:.1e}")
        if pool is not None:
            fwd_pool, *_ = time_median(lambda: astra_map(
                _project_job, [("forward", m) for m in mu], pool), reps)
            adj_pool, *_ = time_median(lambda: astra_map(
                _project_job, [("adjoint", s) for s in sinograms], pool), reps)
            print(f"forward / adjoint per batch, ASTRA in the pool of {args.threads}: "
                  f"{fwd_pool * 1e3:.1f} / {adj_pool * 1e3:.1f} ms (inter-process overhead "
                  "included)")

        # ---- SIRT
        sirt_jobs = [("sirt", {"iterations": iterations}, s) for s in sinograms]
        sirt_astra_s, sirt_astra, sirt_runs = time_astra(
            lambda: astra_map(_astra_job, sirt_jobs, pool), args.repeats)
        sirt_torch_s, sirt_torch, sirt_torch_runs = time_median(
            lambda: sirt(op, sinograms_t, record=iterations)[iterations], args.repeats)

        # ---- TV, from the FBP on both sides
        tv_jobs = [("tv", {"iterations": iterations, "weight": TV_WEIGHT}, s) for s in sinograms]
        tv_astra_s, tv_astra, tv_runs = time_astra(
            lambda: astra_map(_astra_job, tv_jobs, pool), args.repeats)

        def torch_tv() -> torch.Tensor:
            initial = torch.from_numpy(np.stack([projector.fbp(s) for s in sinograms]))
            return tv(op, sinograms_t, initial, record=iterations, weight=TV_WEIGHT)[iterations]

        tv_torch_s, tv_torch, tv_torch_runs = time_median(torch_tv, args.repeats)
        fbp_hu = mu_to_hu(np.stack([projector.fbp(s) for s in sinograms]))
    finally:
        if pool is not None:
            pool.shutdown()
        projector.close()

    print(f"load average after timing: {os.getloadavg()[0]:.2f}")
    print(f"FBP (ram-lak) PSNR: {mean_psnr(fbp_hu, phantom):.2f} dB")
    ratios = {}
    for name, astra_s, runs, astra_mu, torch_s, torch_runs, torch_mu in (
            ("sirt", sirt_astra_s, sirt_runs, sirt_astra, sirt_torch_s, sirt_torch_runs,
             sirt_torch),
            ("tv", tv_astra_s, tv_runs, tv_astra, tv_torch_s, tv_torch_runs, tv_torch)):
        astra_hu = mu_to_hu(astra_mu)
        torch_hu = mu_to_hu(torch_mu.numpy())
        max_diff = float(np.abs(astra_hu - torch_hu).max())
        mean_diff = float(np.abs(astra_hu - torch_hu).mean())
        psnr_astra, psnr_torch = mean_psnr(astra_hu, phantom), mean_psnr(torch_hu, phantom)
        label = f"{name}{iterations}"
        print(f"{label}_astra_loop_s: {astra_s:.3f} ({astra_s / args.slices * 1e3:.1f} "
              f"ms/slice; {runs})")
        print(f"{label}_torch_batched_s: {torch_s:.3f} ({torch_s / args.slices * 1e3:.1f} "
              f"ms/slice; {torch_runs})")
        print(f"{label} agreement: max |diff| {max_diff:.3f} HU (mean {mean_diff:.4f} HU); "
              f"PSNR ASTRA {psnr_astra:.3f} dB, torch {psnr_torch:.3f} dB, "
              f"diff {psnr_torch - psnr_astra:+.4f} dB")
        ratios[name] = astra_s / torch_s
    print(f"speedup_sirt: {ratios['sirt']:.1f}")
    print(f"speedup_tv: {ratios['tv']:.1f}")
    print(f"speedup_vs_astra_loop: {min(ratios.values()):.1f}")


if __name__ == "__main__":
    main()
