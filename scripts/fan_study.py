"""Learned methods against the classical ones on the validation split, per geometry and
training setting: the study behind the fan-beam settings (docs/physics.md, "The clinical fan
beam").

Every run composes ``conf/`` with its overrides (as ``sparsect params`` does), simulates
its geometry once (shared by the runs of that geometry), tunes and runs the classical
baselines on the validation split, trains the listed models and scores everything on
the whole validation split with evaluate's metric (PSNR on [hu_min, hu_max]). The test
split is never loaded. It prints, per run: each method's mean validation PSNR, the
models' validation PSNR per epoch (their learning curves) and where in the image each
method wins (RMSE in HU inside each full-dose tissue class).

The table of docs/physics.md ("The clinical fan beam"):

    F=geometry=fan_clinical R=physics.input_parallel_views
    python scripts/fan_study.py --input --run par \\
        --run fan $F --run fan_whole $F trainer.crop=null trainer.batch_size=4 \\
        trainer.max_epochs=6 --run fan_b4 $F trainer.batch_size=4 \\
        --run fan_r120 $F $R=120 --run fan_r240 $F $R=240 \\
        --run fan_r240b4 $F $R=240 trainer.batch_size=4 \\
        --run fan_r240e48 $F $R=240 trainer.max_epochs=48 \\
        --run fan_r240e48_sl $F $R=240 trainer.max_epochs=48 physics.filter=shepp-logan \\
        --run fan_r240e48_ctx5 $F $R=240 trainer.max_epochs=48 model.context_slices=5 \\
        --run fan_r240_crop96 $F $R=240 trainer.crop=96 \\
        --run fan_r240e48_c32 $F $R=240 trainer.max_epochs=48 model.channels=32

(about 65 minutes on 2 CPU cores). A run's results are kept in
``<work>/runs/<name>/results.json``; rerunning skips the runs whose overrides are
unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sparsect.config import load_params
from sparsect.data.store import atomic_write_json, load_array, read_json
from sparsect.evaluation.metrics import psnr_hu
from sparsect.methods.case import Case
from sparsect.methods.learned import Learned
from sparsect.models.checkpoint import load_module
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.fanrebin import fan_to_parallel
from sparsect.physics.geometry import Geometry
from sparsect.physics.reconstruct import reconstruct_stack
from sparsect.physics.units import mu_to_hu
from sparsect.priors.classes import TISSUE_CLASSES
from sparsect.stages.baselines import baselines
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train


def _compose(overrides: list[str], out: Path) -> None:
    """``sparsect params`` with ``overrides`` (config groups included) into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "sparsect.cli", "params", *overrides, "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _history(tracking: str, experiment: str, run_name: str) -> list[float]:
    """The newest run of that name's ``val/psnr`` per epoch."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    history = client.get_metric_history(runs[0].info.run_id, "val/psnr")
    return [round(m.value, 3) for m in sorted(history, key=lambda m: m.step)]


def _scores(images: np.ndarray, reference: np.ndarray, classes: np.ndarray, lo: float,
            hi: float) -> dict:
    psnr = psnr_hu(torch.from_numpy(images), torch.from_numpy(reference), lo, hi).numpy()
    error = np.clip(images, lo, hi) - np.clip(reference, lo, hi)
    rmse = {name: float(np.sqrt(np.mean(error[classes == k] ** 2)))
            for k, name in enumerate(TISSUE_CLASSES) if np.any(classes == k)}
    return {"psnr": float(psnr.mean()), "psnr_slices": psnr.round(3).tolist(), "rmse_hu": rmse}


def run(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    folder = args.work / "runs" / name
    done = folder / "results.json"
    if done.is_file() and read_json(done)["overrides"] == overrides:
        return read_json(done)
    geometry = next((o.split("=", 1)[1] for o in overrides if o.startswith("geometry=")),
                    "parallel")
    tracking = f"sqlite:///{(args.work / 'mlflow.db').resolve()}"
    _compose([*overrides, f"sweep.views=[{args.views}]", f"geometry.views={args.views}",
              f"logger.tracking_uri={tracking}"], folder / "params.yaml")
    cfg = load_params(folder / "params.yaml")
    # the simulation depends on the geometry, noise and physics settings only
    sim_key = json.dumps(OmegaConf.to_container(OmegaConf.create(
        {"g": cfg.geometry, "n": cfg.noise, "p": cfg.physics}), resolve=True), sort_keys=True)
    sim = args.work / "sim" / f"{geometry}-{_digest(sim_key)}"
    if not (sim / "geometry.json").is_file():
        simulate(cfg, args.prepared, sim, args.views)
    # the classical methods read the sinograms: geometry, noise, simulation grid, their
    # own settings and grids
    tuned_key = json.dumps(OmegaConf.to_container(OmegaConf.create(
        {"g": cfg.geometry, "n": cfg.noise, "u": cfg.physics.upsample, "b": cfg.baselines,
         "t": cfg.tuning}), resolve=True), sort_keys=True)
    classical = args.work / "baselines" / f"{geometry}-{_digest(tuned_key)}"
    if not (classical / "settings.json").is_file():
        baselines(cfg, sim, classical, args.prepared, split="val")
    start = time.perf_counter()
    models = train(cfg, args.prepared, sim, args.masks, folder / "models", args.views,
                   tuple(args.models))
    minutes = (time.perf_counter() - start) / 60
    header = read_json(sim / "geometry.json")
    case = Case(np.array(load_array(sim / "val", "fbp")),
                np.array(load_array(sim / "val", "sinogram")),
                Acquisition.from_record(header["geometry"], header["noise"], header,
                                        int(cfg.seed), "cpu"),
                index=read_json(args.prepared / "val" / "index.json"))
    reference = np.array(load_array(args.prepared / "val", "hu"), np.float32)
    classes = np.array(load_array(args.masks / "val", "masks"))
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    scores = {"fbp": _scores(case.fbp, reference, classes, lo, hi)}
    settings = read_json(classical / "settings.json")
    for method in settings["methods"]:
        scores[method] = _scores(np.load(classical / f"{method}.npy"), reference, classes, lo, hi)
    summary = read_json(models / "summary.json")
    curves = {}
    for model in summary:
        module = load_module(models / summary[model]["checkpoint"])
        learned = Learned(model, module, data_consistency=bool(module.hparams.get("dc")))
        for method, output in learned.apply(case).items():
            scores[method] = _scores(output.images, reference, classes, lo, hi)
        curves[model] = _history(tracking, str(cfg.logger.experiment), f"{model}@{args.views}")
    results = {"overrides": overrides, "views": args.views, "split": "val",
               "train_minutes": round(minutes, 1), "baselines": settings["methods"],
               "tuning": {m: {"chosen": t["chosen"], "psnr": t["psnr"]}
                          for m, t in settings["tuning"]["methods"].items()},
               "scores": scores, "curves": curves, "summary": summary}
    atomic_write_json(done, results)
    return results


def input_study(args: argparse.Namespace) -> None:
    """The networks' input in fan beam: the fan FBP with each filter, and the FBP of the
    sinogram rebinned to parallel beam (60 to 240 angles), PSNR on the validation split."""
    overrides = ["geometry=fan_clinical", f"geometry.views={args.views}"]
    _compose(overrides, args.work / "input" / "params.yaml")
    cfg = load_params(args.work / "input" / "params.yaml")
    sim = args.work / "input" / "sim"
    if not (sim / "geometry.json").is_file():
        simulate(cfg, args.prepared, sim, args.views)
    fan = Geometry.from_dict(read_json(sim / "geometry.json")["geometry"])
    sinograms = np.array(load_array(sim / "val", "sinogram"))
    reference = torch.from_numpy(np.array(load_array(args.prepared / "val", "hu"), np.float32))
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)

    def score(mu: np.ndarray) -> float:
        return float(psnr_hu(torch.from_numpy(mu_to_hu(mu).astype(np.float32)), reference,
                             lo, hi).mean())

    for name in ("ram-lak", "shepp-logan", "cosine", "hann"):
        mu = reconstruct_stack("fbp", fan, sinograms, device="cpu", filter=name)
        print(f"fan FBP, {name}: val PSNR {score(mu):.2f} dB")
    for views in (60, 120, 240):
        rebinned, parallel = fan_to_parallel(sinograms, fan, views)
        for name in ("ram-lak", "hann"):
            mu = reconstruct_stack("fbp", parallel, rebinned, device="cpu", filter=name)
            print(f"rebinned to {views} parallel angles, FBP {name}: "
                  f"val PSNR {score(mu):.2f} dB")


def show(name: str, results: dict) -> None:
    print(f"\n== {name}: {' '.join(results['overrides'])} (train {results['train_minutes']} min)")
    print(f"   classical settings: {results['baselines']}")
    classes = list(next(iter(results["scores"].values()))["rmse_hu"])
    print(f"   {'method':<14} {'val PSNR':>8}  " + " ".join(f"{c:>11}" for c in classes))
    for method, score in results["scores"].items():
        print(f"   {method:<14} {score['psnr']:>8.2f}  "
              + " ".join(f"{score['rmse_hu'][c]:>11.1f}" for c in classes))
    for model, curve in results["curves"].items():
        print(f"   {model} val/psnr per epoch: {curve}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="store_true",
                        help="first the input study (fan FBP filters, rebinning to parallel)")
    parser.add_argument("--run", nargs="+", action="append", default=[],
                        metavar=("NAME", "OVERRIDE"), help="a run's name and its overrides")
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--models", nargs="+", default=["unet"])
    parser.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    parser.add_argument("--masks", type=Path, default=Path("artifacts/masks"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/fan_study"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.input:
        input_study(args)
    for name, *overrides in args.run:
        show(name, run(name, overrides, args))


if __name__ == "__main__":
    main()
