"""The per-scan residual floor: its accuracy, and ``+dc`` and TV stopped at it.

Runs against a built pipeline (``--repo``: its ``artifacts/prepared``, ``artifacts/sim``,
``artifacts/models``, ``artifacts/baselines`` and ``params.yaml``; read only) and the real
scans (``--scans``), and prints markdown tables (also written to ``--out``):

1. acceptance: the floor estimated with counts and without (from the sinogram) over the
   reference's true residual ``||A x_ref - y|| / ||y||``, per phantom test subject and per
   real scan, at 30, 60 and 120 views and ``I0`` 1e4, 1e5, 1e6 (data simulated with the
   project's :class:`~sparsect.physics.acquisition.Acquisition`);
2. decomposition of each floor into noise, grid mismatch and texture mismatch;
3. ``+dc`` with the validation rule and stopped at each slice's own floor: test split gain
   over the network (30 views), real-scan body PSNR (30, 60, 120 views);
4. TV on the real scans: the validation-chosen weight against the weight chosen per slice
   by the discrepancy principle at its own floor.

Usage: ``python scripts/floor_study.py --repo /tmp/new/repo``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from sparsect.data.io import find_scans
from sparsect.evaluation.metrics import psnr_hu
from sparsect.evaluation.statistics import per_slice_region_metrics
from sparsect.methods.classical import DISCREPANCY_WEIGHTS
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import predict
from sparsect.physics import NoiseModel, mu_to_hu
from sparsect.physics.acquisition import Acquisition, scan_key
from sparsect.physics.noisefloor import residual_floor, tv_by_discrepancy
from sparsect.stages.evaluate import residuals
from sparsect.stages.external import RealScan, scored_slices

VIEWS = (30, 60, 120)
DOSES = (1e4, 1e5, 1e6)
LO, HI = -1000.0, 2000.0


def acquisition(repo: Path, views: int) -> Acquisition:
    header = json.loads((repo / "artifacts/sim/60/geometry.json").read_text())
    return Acquisition.from_record(header["geometry"], header["noise"], header,
                                   device="cpu").replace(views=views)


def real_scans(repo: Path, scans: Path) -> list[tuple[RealScan, np.ndarray]]:
    cfg = OmegaConf.load(repo / "params.yaml")
    out = []
    for entry in find_scans(scans):
        scan = RealScan.load(cfg, entry)
        out.append((scan, scored_slices(len(scan.hu), int(cfg.external.max_slices))))
    return out


def ratios(hu: np.ndarray, keys: list, acq: Acquisition, i0: float) -> dict[str, np.ndarray]:
    """Per slice: true residual, estimates with and without counts."""
    a = acq.replace(noise=NoiseModel(i0=i0))
    y, _ = a.simulate(hu, keys)
    true, _ = residuals(hu, y, a.geometry)
    counts = i0 * np.exp(-y.astype(np.float64))
    with_counts = residual_floor(y, a.geometry, counts=counts, upsample=a.upsample)
    without = residual_floor(y, a.geometry, upsample=a.upsample)
    return {"true": true, "counts": with_counts.floor, "sinogram": without.floor,
            "i0": without.i0}


def acceptance(repo: Path, scans: list, lines: list[str]) -> None:
    hu = np.load(repo / "artifacts/prepared/test/hu.npy")
    index = json.loads((repo / "artifacts/prepared/test/index.json").read_text())
    subjects = np.array([s for s, _ in index])
    lines += ["## 1. Floor estimate / true reference residual (acceptance: 0.85 to 1.15)", "",
              "Ratios of the subject's (scan's) mean estimate to its mean true residual; "
              "in brackets the per-slice range. Phantom test split (3 subjects x 24 slices), "
              "real scans (12 scored slices each), parallel beam, upsample 2.", "",
              "| views | I0 | data | true residual | with counts | without counts | "
              "I0 est./true |", "|---|---|---|---|---|---|---|"]
    worst = [1.0, 1.0]
    for views in VIEWS:
        acq = acquisition(repo, views)
        for i0 in DOSES:
            groups = []
            r = ratios(hu, [(11, i) for i in range(len(hu))], acq, i0)
            for subject in np.unique(subjects):
                groups.append((subject, {k: v[subjects == subject] for k, v in r.items()}))
            for scan, picks in scans:
                keys = [(scan_key(scan.name), int(z)) for z in picks]
                groups.append((scan.name, ratios(scan.hu[picks], keys, acq, i0)))
            for name, g in groups:
                cells = []
                for key in ("counts", "sinogram"):
                    mean = g[key].mean() / g["true"].mean()
                    per = g[key] / g["true"]
                    worst = [min(worst[0], mean), max(worst[1], mean)]
                    cells.append(f"{mean:.3f} [{per.min():.2f}, {per.max():.2f}]")
                lines.append(f"| {views} | {i0:.0e} | {name} | {g['true'].mean():.4f} | "
                             f"{cells[0]} | {cells[1]} | {np.median(g['i0']) / i0:.3f} |")
            print(f"acceptance {views} views I0 {i0:.0e} done", flush=True)
    lines += ["", f"Range of subject/scan ratios over all settings: {worst[0]:.3f} to "
              f"{worst[1]:.3f}.", ""]


def decomposition(repo: Path, scans: list, lines: list[str]) -> None:
    acq = acquisition(repo, 60)
    hu = np.load(repo / "artifacts/prepared/test/hu.npy")
    sets = [("phantom test", hu, [(11, i) for i in range(len(hu))])]
    sets += [(scan.name, scan.hu[picks], [(scan_key(scan.name), int(z)) for z in picks])
             for scan, picks in scans]
    lines += ["## 2. Decomposition of the reference residual (60 views, I0 1e5)", "",
              "Energy shares: noise (noisy minus noiseless sinogram), grid mismatch "
              "(noiseless residual of the reference smoothed by a 1-pixel Gaussian, its "
              "texture removed), texture (the rest of the noiseless residual). "
              "Estimated parts from `residual_floor` without counts.", "",
              "| data | true residual | noise | mismatch | grid | texture | est. noise | "
              "est. mismatch |", "|---|---|---|---|---|---|---|---|"]
    clean_acq = acq.replace(noise=NoiseModel(i0=float("inf")))
    for name, images, keys in sets:
        y, _ = acq.simulate(images, keys)
        clean, _ = clean_acq.simulate(images, keys)
        norms = np.linalg.norm(y.reshape(len(y), -1), axis=1)
        true, _ = residuals(images, y, acq.geometry)
        noise = np.linalg.norm((y - clean).reshape(len(y), -1), axis=1) / norms
        mismatch = residuals(images, clean, acq.geometry)[0] * np.linalg.norm(
            clean.reshape(len(y), -1), axis=1) / norms
        smooth = np.stack([ndimage.gaussian_filter(i, 1.0) for i in images])
        smooth_clean, _ = clean_acq.simulate(smooth, keys)
        grid = residuals(smooth, smooth_clean, acq.geometry)[0]
        texture = np.sqrt(np.maximum(mismatch**2 - grid**2, 0))
        est = residual_floor(y, acq.geometry, upsample=acq.upsample)
        lines.append(f"| {name} | {true.mean():.4f} | {noise.mean():.4f} | "
                     f"{mismatch.mean():.4f} | {grid.mean():.4f} | {texture.mean():.4f} | "
                     f"{est.noise.mean():.4f} | {est.mismatch.mean():.4f} |")
    lines.append("")


def body_psnr(image: np.ndarray, scan: RealScan, picks: np.ndarray) -> float:
    metrics = per_slice_region_metrics(image, scan.hu[picks], {"body": scan.body[picks]}, LO, HI)
    return float(np.nanmean(metrics["body"]["psnr"]))


def consistency(repo: Path, scans: list, lines: list[str]) -> None:
    lines += ["## 3. `+dc`: validation rule (fixed steps) vs stopped at each slice's floor", "",
              "Phantom test split, 30 views, I0 1e5 (the stored simulation): mean PSNR "
              "(HU window -1000..2000) and gain over the network; the recorded dc setting.", "",
              "| model | network | +dc fixed (gain) | +dc floor (gain) | gain kept | dc record |",
              "|---|---|---|---|---|---|"]
    test_hu = np.load(repo / "artifacts/prepared/test/hu.npy")
    index = [tuple(x) for x in json.loads(
        (repo / "artifacts/prepared/test/index.json").read_text())]
    fbp = np.load(repo / "artifacts/sim/30/test/fbp.npy")
    sino = np.load(repo / "artifacts/sim/30/test/sinogram.npy")
    target = torch.from_numpy(test_hu)
    for model in ("unet", "sg_unet"):
        module = load_module(repo / f"artifacts/models/30/{model}.ckpt")
        fixed = predict(module, fbp, index=index, sinogram=sino, data_consistency=True)
        floor = predict(module, fbp, index=index, sinogram=sino, data_consistency=True,
                        dc_floor="scan")
        p = [float(psnr_hu(torch.from_numpy(x), target, LO, HI).mean())
             for x in (fixed.images, fixed.consistent, floor.consistent)]
        kept = (p[2] - p[0]) / (p[1] - p[0]) if p[1] != p[0] else float("nan")
        lines.append(f"| {model} | {p[0]:.2f} | {p[1]:.2f} ({p[1] - p[0]:+.2f}) | "
                     f"{p[2]:.2f} ({p[2] - p[0]:+.2f}) | {kept:.0%} | "
                     f"{module.hparams.dc['steps']} max, lambda {module.hparams.dc['lambda']} |")
        print(f"dc test {model} done", flush=True)
    lines += ["", "Real scans, I0 1e5, body PSNR (dB): network, +dc with the validation "
              "rule, +dc stopped at the slice's floor.", "",
              "| views | scan | model | network | +dc fixed | +dc floor |",
              "|---|---|---|---|---|---|"]
    for views in VIEWS:
        acq = acquisition(repo, views)
        for scan, picks in scans:
            keys = [(scan_key(scan.name), z) for z in range(len(scan.hu))]
            y, fbp = acq.simulate(scan.hu, keys)
            for model in ("unet", "sg_unet"):
                module = load_module(repo / f"artifacts/models/{views}/{model}.ckpt")
                fixed = predict(module, fbp, sinogram=y, slices=picks, data_consistency=True)
                floor = predict(module, fbp, sinogram=y, slices=picks, data_consistency=True,
                                dc_floor="scan")
                p = [body_psnr(x, scan, picks)
                     for x in (fixed.images, fixed.consistent, floor.consistent)]
                lines.append(f"| {views} | {scan.name} | {model} | {p[0]:.2f} | {p[1]:.2f} | "
                             f"{p[2]:.2f} |")
        print(f"dc real {views} done", flush=True)
    lines.append("")


def total_variation(repo: Path, scans: list, lines: list[str]) -> None:
    grid = list(DISCREPANCY_WEIGHTS)  # what `tv` with weight=discrepancy chooses from
    lines += ["## 4. TV on the real scans: validation-chosen weight vs per-slice discrepancy",
              "", f"I0 1e5; iterations as chosen on validation; weight grid {grid}; "
              "the per-slice rule takes the largest weight whose residual is at most the "
              "slice's estimated floor.", "",
              "| views | scan | TV fixed (weight) | TV discrepancy (weights chosen) |",
              "|---|---|---|---|"]
    for views in VIEWS:
        acq = acquisition(repo, views)
        settings = json.loads((repo / f"artifacts/baselines/{views}/settings.json").read_text())
        tuned = settings["methods"]["tv"]
        iterations = int(tuned["iterations"])
        for scan, picks in scans:
            keys = [(scan_key(scan.name), int(z)) for z in picks]
            y, _ = acq.simulate(scan.hu[picks], keys)
            floor = residual_floor(y, acq.geometry, upsample=acq.upsample).floor
            fixed, _ = tv_by_discrepancy(y, acq.geometry, np.zeros(len(y)),
                                         [float(tuned["weight"])], iterations)
            chosen, weights = tv_by_discrepancy(y, acq.geometry, floor, grid, iterations)
            values = ", ".join(f"{w:g}x{int((weights == w).sum())}" for w in np.unique(weights))
            lines.append(f"| {views} | {scan.name} | "
                         f"{body_psnr(mu_to_hu(fixed), scan, picks):.2f} ({tuned['weight']}) | "
                         f"{body_psnr(mu_to_hu(chosen), scan, picks):.2f} ({values}) |")
        print(f"tv {views} done", flush=True)
    lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--scans", type=Path, default=Path("realct"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/floor_study.md"))
    parser.add_argument("--parts", default="acceptance,decomposition,dc,tv")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    scans = real_scans(args.repo, args.scans)
    lines = ["# Per-scan residual floor study", ""]
    parts = {"acceptance": acceptance, "decomposition": decomposition, "dc": consistency,
             "tv": total_variation}
    for name in args.parts.split(","):
        parts[name](args.repo, scans, lines)
        args.out.write_text("\n".join(lines) + "\n")
    lines.append(f"({time.time() - start:.0f} s)")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
