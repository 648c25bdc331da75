"""Chooses the segmentation loss weight of sg_unet on the validation split.

Trains sg_unet once per weight (``trainer.loss.ce`` = ``trainer.loss.dice`` =
w, everything else from params.yaml) and prints the best validation PSNR of
each run, the number the train stage selects checkpoints by. The test split is
never loaded. Inputs come from the pipeline (``dvc repro prepare masks
simulate@60``); runs are logged to a separate MLflow store in ``--work``.

    python scripts/tune_seg_weight.py --views 60 --weights 0 0.005 0.02 0.05 0.2 --seeds 0 1 2

With several seeds (training randomness only: the simulation is fixed) the
weights are ranked by their mean.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparsect.config import load_params
from sparsect.data.store import atomic_write_json
from sparsect.stages.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.005, 0.02, 0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    parser.add_argument("--masks", type=Path, default=Path("artifacts/masks"))
    parser.add_argument("--sim", type=Path, default=None, help="default: artifacts/sim/<views>")
    parser.add_argument("--work", type=Path, default=Path("artifacts/tune_seg_weight"))
    args = parser.parse_args()
    sim = args.sim or Path("artifacts/sim") / str(args.views)
    store = f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    print(f"{'weight':>8} {'seed':>4}  {'best val/psnr (dB)':>18}  {'minutes':>7}")
    for weight in args.weights:
        runs = {}
        for seed in args.seeds:
            cfg = load_params(
                args.params,
                [
                    f"trainer.loss.ce={weight}",
                    f"trainer.loss.dice={weight}",
                    f"seed={seed}",
                    f"logger.tracking_uri={store}",
                ],
            )
            start = time.perf_counter()
            out = train(
                cfg,
                args.prepared,
                sim,
                args.masks,
                args.work / f"w{weight}" / f"seed{seed}",
                args.views,
                ("sg_unet",),
            )
            psnr = json.loads((out / "summary.json").read_text())["sg_unet"]["best_val_psnr"]
            runs[str(seed)] = psnr
            minutes = (time.perf_counter() - start) / 60
            print(f"{weight:>8} {seed:>4}  {psnr:>18.2f}  {minutes:>7.1f}", flush=True)
        results[str(weight)] = {"best_val_psnr": runs, "mean": sum(runs.values()) / len(runs)}
    print("mean over seeds " + ", ".join(f"{w}: {r['mean']:.2f}" for w, r in results.items()))
    best = max(results, key=lambda w: results[w]["mean"])
    atomic_write_json(
        args.work / "results.json",
        {
            "views": args.views,
            "split": "val",
            "seeds": args.seeds,
            "runs": results,
            "best": float(best),
        },
    )
    print(f"best on validation: {best}")


if __name__ == "__main__":
    main()
