#!/usr/bin/env python
"""Series per hour of ``sparsect reconstruct`` over an archive, serial against parallel
with the same total threads.

Writes an archive of ``--series`` phantom scans (the built-in generator, ``--slices``
slices of ``--size`` pixels each, two folders deep) and a UNet checkpoint of the
pipeline's width (untrained: the weights do not change the cost) for parallel beam at
``--views`` views, then times the command twice, each in a fresh output folder:

- serial: ``--jobs 1 --threads T``;
- parallel: ``--jobs J --threads T/J``;

with ``T`` = ``--threads`` (default: the cores) and ``J`` = ``--jobs``. Each run is a
subprocess, so the parallel run pays its processes' start-up as a user would. Then checks
that the two runs wrote the same bytes, and prints, one per line:

    serial_series_per_hour: ...
    parallel_series_per_hour: ...
    parallel_speedup: serial time / parallel time
    outputs_identical: whether the outputs are bit for bit equal (only with equal
        threads per process; here they differ, so this says whether it holds anyway)

    PYTHONPATH=src python scripts/bench_archive.py [--series 24] [--slices 8] [--size 128]
        [--jobs 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsect.data.phantom import PhantomConfig, write_dataset
from sparsect.models.module import ReconModule
from sparsect.physics import Geometry

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    archive = folder / "archive"
    spacing = 400.0 / args.size
    written = write_dataset(folder / "phantoms", subjects=args.series, seed=0,
                            config=PhantomConfig(shape=(args.size, args.size, args.slices),
                                                 spacing_mm=(spacing, spacing, 5.0)))
    scans = sorted(p for p in written if not p.name.endswith("_seg.nii.gz"))
    for k, scan in enumerate(scans):
        target = archive / f"site{k % 2}" / f"patient{k:03d}" / "ct.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scan, target)
    geometry = Geometry("parallel", views=args.views, image_size=args.size,
                        pixel_size_mm=spacing)
    module = ReconModule(net={"_target_": "sparsect.models.unet.UNet", "channels": 16,
                              "depth": 4}, prior="none", geometry=geometry.to_dict(),
                         noise={"i0": 1e5, "electronic_std": 0.0},
                         acquisition={"upsample": 2, "filter": "ram-lak",
                                      "hu_clip": [-1024.0, 3071.0]})
    model = folder / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               model)
    return archive, model


def timed(archive: Path, model: Path, out: Path, jobs: int, threads: int,
          args: argparse.Namespace) -> float:
    command = [str(Path(sys.executable).parent / "sparsect"), "reconstruct", str(archive),
               "-o", str(out), "--model", str(model), "--views", str(args.views),
               "--jobs", str(jobs), "--threads", str(threads),
               "--params", str(ROOT / "params.yaml"), f"data.image_size={args.size}",
               f"data.pixel_size_mm={400.0 / args.size}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=24)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="total threads of either run")
    args = parser.parse_args()
    if args.threads % args.jobs:
        parser.error("--threads must be a multiple of --jobs (equal threads per process)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archive, model = build(folder, args)
        serial = timed(archive, model, folder / "serial", 1, args.threads, args)
        parallel = timed(archive, model, folder / "parallel", args.jobs,
                         args.threads // args.jobs, args)
        same = all(np.array_equal(np.frombuffer(p.read_bytes(), np.uint8),
                                  np.frombuffer((folder / "parallel" / p.relative_to(
                                      folder / "serial")).read_bytes(), np.uint8))
                   for p in (folder / "serial").rglob("*.nii.gz"))
    print(f"series: {args.series} of {args.slices} slices, {args.size} px, {args.views} views")
    print(f"serial: --jobs 1 --threads {args.threads}: {serial:.1f} s")
    print(f"parallel: --jobs {args.jobs} --threads {args.threads // args.jobs}: {parallel:.1f} s")
    print(f"serial_series_per_hour: {3600 * args.series / serial:.0f}")
    print(f"parallel_series_per_hour: {3600 * args.series / parallel:.0f}")
    print(f"parallel_speedup: {serial / parallel:.2f}")
    print(f"outputs_identical: {same}")


if __name__ == "__main__":
    main()
