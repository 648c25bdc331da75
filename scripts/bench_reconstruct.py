#!/usr/bin/env python
"""Model reconstruction time per slice against SIRT with 100 iterations, with PSNR.

Uses the pipeline's outputs (run `make run` first): the test split's simulated
sinograms at one view count, the trained model, and the full-dose reference.
Model time counts FBP + network per slice (what `sparsect reconstruct` does
after simulation); SIRT time is ASTRA's SIRT-100 from the same sinogram. Both
in one process on the same machine and slices, each free to use every core.

    python scripts/bench_reconstruct.py --views 60 [--model sg_unet] [--slices 24]

The last line is ``speedup_vs_sirt100: <ratio>`` for a volume (network batched over
slices); the line before it gives the slice-at-a-time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sparsect.evaluation.metrics import psnr_hu
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import BATCH_SIZE, predict
from sparsect.physics import Geometry, Projector, mu_to_hu, reconstruct


def reconstruct_volume(module, fbp_hu: np.ndarray, batch: int = BATCH_SIZE) -> np.ndarray:  # noqa: ANN001
    """The network on a volume's FBP slices, as timed here: :func:`predict`."""
    return predict(module, fbp_hu, batch_size=batch).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--model", default="sg_unet")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--batch", type=int, default=BATCH_SIZE, help="slices per network call")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (ASTRA's CPU algorithms use the machine's cores "
                             "too; default: all cores for both)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sim = args.artifacts / "sim" / str(args.views)
    header = json.loads((sim / "geometry.json").read_text())
    geometry = Geometry.from_dict(header["geometry"])
    sinograms = np.load(sim / "test" / "sinogram.npy", mmap_mode="r")
    reference = np.load(args.artifacts / "prepared" / "test" / "hu.npy", mmap_mode="r")
    picks = np.linspace(0, len(sinograms) - 1, args.slices).round().astype(int)
    module = load_module(args.artifacts / "models" / str(args.views) / f"{args.model}.ckpt")

    model_images, sirt_images = [], []
    with Projector(geometry, "cpu") as projector:
        predict(module, np.zeros((1, geometry.image_size, geometry.image_size), np.float32))
        start = time.perf_counter()
        for index in picks:  # one slice at a time: FBP, then the network
            fbp = mu_to_hu(reconstruct("fbp", projector, np.asarray(sinograms[index])))
            model_images.append(predict(module, fbp[None], batch_size=1).images[0])
        model_time = (time.perf_counter() - start) / len(picks)
        # a volume: FBP per slice, then the network on all slices in batches
        start = time.perf_counter()
        fbps = np.stack([mu_to_hu(reconstruct("fbp", projector, np.asarray(sinograms[i])))
                         for i in picks])
        reconstruct_volume(module, fbps, args.batch)
        batched_time = (time.perf_counter() - start) / len(picks)
        start = time.perf_counter()
        for index in picks:
            sirt_images.append(mu_to_hu(reconstruct("sirt", projector,
                                                    np.asarray(sinograms[index]),
                                                    iterations=100)))
        sirt_time = (time.perf_counter() - start) / len(picks)

    target = torch.from_numpy(np.asarray(reference[picks]))

    def psnr(images: list[np.ndarray]) -> float:
        return float(psnr_hu(torch.from_numpy(np.stack(images)), target, -1000, 2000).mean())

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}; {len(picks)} test slices of "
          f"{geometry.image_size}x{geometry.image_size} at {geometry.views} views")
    print(f"{args.model} (FBP + network): {model_time * 1000:.1f} ms/slice, "
          f"PSNR {psnr(model_images):.2f} dB")
    print(f"{args.model}, volume in batches of {args.batch}: {batched_time * 1000:.1f} ms/slice "
          "(same outputs)")
    print(f"SIRT-100:                  {sirt_time * 1000:.1f} ms/slice, "
          f"PSNR {psnr(sirt_images):.2f} dB")
    print(f"speedup_vs_sirt100_single_slice: {sirt_time / model_time:.1f}")
    print(f"speedup_vs_sirt100: {sirt_time / batched_time:.1f}")


if __name__ == "__main__":
    main()
