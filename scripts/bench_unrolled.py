#!/usr/bin/env python
"""Cost of a training step of the unrolled models against the UNets'.

Real optimisation steps (the module's losses, backward, AdamW) of the pipeline's
LightningModule at the default grid (128 x 128, 3 mm, parallel beam) on random
batches: unet and sg_unet on 64 x 64 crops as the default training runs them and on
whole slices, lpd and sg_lpd on whole slices with their sinograms (their only
option). Same threads, same process, median of the timed steps after warm-up.
Prints ms per step and the ratio to sg_unet's crop step, then a line per model
``<model>_ms_per_step: X``.

    python scripts/bench_unrolled.py --views 60 --batch-size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparsect.models.module import ReconModule  # noqa: E402
from sparsect.physics import Geometry  # noqa: E402

# the default widths of conf/model and conf/variants (params.yaml is not read here)
NETS = {
    "unet": ({"_target_": "sparsect.models.unet.UNet", "channels": 17, "depth": 4}, "none"),
    "sg_unet": ({"_target_": "sparsect.models.unet.SGUNet", "channels": 16, "depth": 4,
                 "seg_channels": 8}, "predicted"),
    "lpd": ({"_target_": "sparsect.models.lpd.LearnedPrimalDual", "channels": 16,
             "iterations": 10}, "none"),
    "sg_lpd": ({"_target_": "sparsect.models.lpd.SGLearnedPrimalDual", "channels": 16,
                "iterations": 10, "depth": 4, "seg_channels": 8}, "predicted"),
}


def step_ms(module: ReconModule, batch: dict[str, torch.Tensor], steps: int, warmup: int
            ) -> float:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        terms, _ = module._losses(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    geometry = Geometry("parallel", views=args.views, image_size=128, pixel_size_mm=3.0)
    torch.manual_seed(0)
    print(f"threads: {torch.get_num_threads()}, batch {args.batch_size}, {args.views} views, "
          f"128 x 128, context {args.context}")
    results = {}
    for name, (spec, prior) in NETS.items():
        module = ReconModule(net={**spec, "in_channels": args.context}, prior=prior,
                             variant=name, geometry=geometry.to_dict())
        parameters = sum(p.numel() for p in module.parameters())
        sizes = [64, 128] if not module.needs_operator else [128]
        for size in sizes:
            shape = (args.batch_size, 1, size, size)
            batch = {"fbp": torch.randn(shape).repeat(1, args.context, 1, 1) * 0.1,
                     "target": torch.randn(shape) * 0.1,
                     "masks": torch.randint(0, 5, (args.batch_size, size, size))}
            if module.needs_operator:
                batch["sinogram"] = torch.rand(args.batch_size, *geometry.sinogram_shape) * 5
            label = f"{name}@{size}"
            results[label] = step_ms(module, batch, args.steps, args.warmup)
            print(f"{label:12s} {parameters:9,d} parameters  {results[label]:8.0f} ms/step")
    reference = results["sg_unet@64"]
    for label, value in results.items():
        print(f"{label:12s} x{value / reference:5.1f} sg_unet's crop step")
    for label, value in results.items():
        print(f"{label.replace('@', '_')}_ms_per_step: {value:.0f}")


if __name__ == "__main__":
    main()
