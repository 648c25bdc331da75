#!/usr/bin/env python
"""Training throughput of the semantically-guided UNet: slices/s and peak memory.

Runs real optimisation steps (forward, loss, backward, AdamW) of the same
LightningModule the pipeline trains, on random 512x512 slices, with bf16
autocast on CUDA (the networks run channels_last themselves). Needs only torch, Lightning and
torchmetrics, so it runs on a bare GPU machine.

    python scripts/bench_train.py --size 512 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparsect.models.module import ReconModule  # noqa: E402


def train_step(module: ReconModule, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], bf16: bool) -> None:
    """One optimisation step as Lightning runs it: the module's losses (under bf16
    autocast when asked), backward, optimiser step."""
    with torch.autocast(batch["fbp"].device.type, dtype=torch.bfloat16, enabled=bf16):
        terms, _ = module._losses(batch)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--prior", default="predicted")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # the default widths of conf/model (params.yaml is not read: no Hydra on a bare machine)
    net = ({"_target_": "sparsect.models.unet.UNet", "channels": 17, "depth": 4}
           if args.prior == "none" else
           {"_target_": "sparsect.models.unet.SGUNet", "channels": 16, "depth": 4,
            "seg_channels": 8, "predict_prior": args.prior == "predicted"})
    module = ReconModule(net=net, prior=args.prior).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    shape = (args.batch_size, 1, args.size, args.size)
    batch = {"fbp": torch.randn(shape, device=device),
             "target": torch.randn(shape, device=device),
             "masks": torch.randint(0, 5, (args.batch_size, args.size, args.size), device=device)}
    if args.prior in ("threshold", "oracle"):  # a class map given as input
        batch["prior_probs"] = torch.nn.functional.one_hot(batch["masks"], 5).permute(
            0, 3, 1, 2).float()

    def step() -> None:
        train_step(module, optimizer, batch, bf16=cuda)

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device: {name}; model: {args.prior} prior; {args.size}x{args.size}; "
          f"batch {args.batch_size}; precision {'bf16 autocast' if cuda else 'fp32'}; "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"train_slices_per_s: {args.steps * args.batch_size / elapsed:.1f}")
    if cuda:
        print(f"peak_gpu_memory_gib: {torch.cuda.max_memory_allocated(device) / 2**30:.2f}")


if __name__ == "__main__":
    main()
