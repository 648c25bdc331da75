#!/usr/bin/env python
"""Model reconstruction time per slice in torch, ONNX and INT8 ONNX, against SIRT-100.

Uses the pipeline's outputs (run `make run` first): the test split's simulated
sinograms at one view count, the trained model, its export (``artifacts/export``; made
here from the validation split when missing), the full-dose reference and, when the
lesion study's cohort is there, the cohort.

    python scripts/bench_reconstruct.py --views 60 [--model sg_unet] [--slices 24]

Rows, one per runtime (the network in torch, its float ONNX graph, the INT8 graph; each
with the same thread count, through :func:`predict`, so mirror averaging and the 2.5D
context are the same):

- ms per slice, batched (the picked slices as one volume, ``--batch`` slices per call)
  and one slice at a time: the median over ``--repeats`` rounds after one warm-up, the
  runtimes taking turns in each round so that the machine's load falls on all alike;
- PSNR on the whole test split, and the largest per-slice PSNR drop from torch;
- on the lesion cohort (``study.subjects`` subjects): contrast recovery ``|CR - 1|`` and
  the channelized observer's d', and their change from torch;
- the kernel time per operator type of the two ONNX graphs (onnxruntime's profiler),
  which says where INT8 saves and where it spends.

Then the time of FBP + network (torch) against ASTRA's SIRT-100 from the same sinograms,
and these lines, in this order:

    onnx_max_abs_hu: largest |onnx - torch| over the test slices, HU
    onnx_fp32_vs_torch: torch time / onnx time, batched (> 1: onnx is faster)
    int8_psnr_drop_db: mean per-slice PSNR of the float graph minus the INT8 graph's
    int8_speedup: onnxruntime float time / onnxruntime INT8 time, batched
    speedup_vs_sirt100: SIRT-100 time / (FBP + network) time, network batched
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsect.config import load_params
from sparsect.data.store import load_array, read_json
from sparsect.deploy import CONTRACT, FILES, export_model
from sparsect.evaluation.metrics import psnr_hu
from sparsect.models.checkpoint import load_module
from sparsect.models.predict import BATCH_SIZE, predict
from sparsect.models.runtime import OnnxModule, weights_digest
from sparsect.physics import Geometry, Projector, mu_to_hu, reconstruct


def reconstruct_volume(module, fbp_hu: np.ndarray, batch: int = BATCH_SIZE,  # noqa: ANN001
                       index: list | None = None) -> np.ndarray:
    """The network on a volume's FBP slices, as timed here: :func:`predict`."""
    return predict(module, fbp_hu, batch_size=batch, index=index).images


def export_folder(cfg, module, args: argparse.Namespace, tmp: Path) -> Path:  # noqa: ANN001
    """The pipeline's export of this model, or a fresh one in ``tmp``."""
    folder = args.artifacts / "export" / str(args.views) / args.model
    if (folder / CONTRACT).is_file() and \
            read_json(folder / CONTRACT)["weights_sha256"] == weights_digest(module):
        return folder
    print(f"no export of these weights in {folder}: exporting into a temp folder")
    export_model(cfg, module, args.artifacts / "prepared", args.artifacts / "sim", tmp / "export",
                 str(args.checkpoint))
    return tmp / "export"


def timings(runtimes: dict, fbp: np.ndarray, batch: int, repeats: int) -> dict[str, tuple]:
    """Median ms per slice, (batched, one at a time), the runtimes taking turns."""
    batched = {name: [] for name in runtimes}
    single = {name: [] for name in runtimes}
    for module in runtimes.values():  # warm-up
        reconstruct_volume(module, fbp[:batch], batch)
    for _ in range(repeats):
        for name, module in runtimes.items():
            start = time.perf_counter()
            reconstruct_volume(module, fbp, batch)
            batched[name].append((time.perf_counter() - start) / len(fbp) * 1000)
        for name, module in runtimes.items():
            for row in range(len(fbp)):
                start = time.perf_counter()
                predict(module, fbp, slices=[row], batch_size=1)
                single[name].append((time.perf_counter() - start) * 1000)
    return {name: (statistics.median(batched[name]), statistics.median(single[name]))
            for name in runtimes}


def lesion_figures(cfg, runtimes: dict, artifacts: Path, views: int) -> dict | None:  # noqa: ANN001
    """|CR - 1| and d' of each runtime on the cohort's first ``study.subjects`` subjects."""
    from sparsect.evaluation import task
    from sparsect.stages.study import lesion_scores, load_cohort, simulate_cohort

    if not (artifacts / "cohort" / "cohort.json").is_file():
        return None
    subjects = cfg.study.get("subjects")
    cohort = load_cohort(artifacts / "cohort", None if subjects is None else int(subjects))
    scans = simulate_cohort(cfg, cohort, views, int(cfg.study.realisations))
    shape = scans.fbp.shape
    keys = np.indices(shape[:4]).reshape(4, -1).T
    index = [(f"{c}/{k}/{s}", int(z)) for c, k, s, z in keys]
    flat = scans.fbp.reshape(-1, *shape[-2:])
    spec = cfg.study
    channels = task.laguerre_gauss_channels(int(spec.cohort.roi_px),
                                            float(spec.channel_width_px), int(spec.channels))
    out = {}
    for name, module in runtimes.items():
        images = reconstruct_volume(module, flat, index=index).reshape(shape)
        scores = lesion_scores(images, cohort, channels, int(spec.cohort.roi_px))
        out[name] = (scores["lesion_contrast_recovery"]["abs_cr_minus_1"],
                     scores["detectability"]["d_prime"])
    out["_lesions"] = len(cohort.lesions)
    return out


def operator_times(path: Path, fbp: np.ndarray, threads: int, batch: int) -> dict[str, float]:
    """Kernel ms per slice by operator type in the graph at ``path``: onnxruntime's
    profile of 4 runs of ``batch`` network inputs (the first one included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.log_severity_level = 3
    runs = 4
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        context = session.get_inputs()[0].shape[1]
        rows = [np.clip(np.arange(i - context // 2, i + context // 2 + 1), 0, len(fbp) - 1)
                for i in range(min(batch, len(fbp)))]
        feed = {"fbp": np.stack([fbp[r] for r in rows]).astype(np.float32)}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: us / runs / len(rows) / 1000 for op, us in totals.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--model", default="sg_unet")
    parser.add_argument("--slices", type=int, default=24, help="test slices timed")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds")
    parser.add_argument("--batch", type=int, default=BATCH_SIZE, help="slices per network call")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch and onnxruntime threads (ASTRA's CPU algorithms use the "
                             "machine's cores too; default: all cores for all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_params(args.params, [])
    args.checkpoint = args.artifacts / "models" / str(args.views) / f"{args.model}.ckpt"
    module = load_module(args.checkpoint)

    sim = args.artifacts / "sim" / str(args.views)
    geometry = Geometry.from_dict(read_json(sim / "geometry.json")["geometry"])
    sinograms = np.load(sim / "test" / "sinogram.npy", mmap_mode="r")
    test_fbp = np.array(load_array(sim / "test", "fbp"))
    index = [tuple(read_json(args.artifacts / "prepared" / "test" / "index.json")[row])
             for row in read_json(sim / "test" / "slices.json")]
    reference = np.array(load_array(args.artifacts / "prepared" / "test", "hu"))[
        read_json(sim / "test" / "slices.json")]
    picks = np.linspace(0, len(sinograms) - 1, args.slices).round().astype(int)

    with tempfile.TemporaryDirectory() as tmp:
        folder = export_folder(cfg, module, args, Path(tmp))
        runtimes = {"torch": module,
                    "onnx": OnnxModule(module, folder / FILES["onnx"], "onnx", args.threads),
                    "onnx-int8": OnnxModule(module, folder / FILES["onnx-int8"], "onnx-int8",
                                            args.threads)}
        outputs = {name: reconstruct_volume(rt, test_fbp, args.batch, index)
                   for name, rt in runtimes.items()}
        times = timings(runtimes, test_fbp[picks], args.batch, args.repeats)
        lesions = lesion_figures(cfg, runtimes, args.artifacts, args.views)
        ops = {name: operator_times(folder / FILES[name], test_fbp, args.threads, args.batch)
               for name in ("onnx", "onnx-int8")}

    def psnr(images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        target = reference if rows is None else reference[rows]
        return psnr_hu(torch.from_numpy(images), torch.from_numpy(target), -1000, 2000).numpy()

    scores = {name: psnr(images) for name, images in outputs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads for "
          f"torch and onnxruntime; {module.hparams.get('variant')} at {geometry.views} views, "
          f"{geometry.image_size}x{geometry.image_size}; timed on {len(picks)} test slices, "
          f"PSNR on all {len(test_fbp)}")
    if lesions:
        print(f"lesion study: {lesions['_lesions']} lesions of the cohort's first "
              f"{cfg.study.get('subjects')} subjects")
    header = (f"{'runtime':<10} {'batched ms':>10} {'single ms':>9} {'PSNR dB':>8} "
              f"{'worst drop':>10}")
    print(header + (f" {'|CR-1|':>7} {'d_prime':>7} {'dCR':>7} {'dd_prime':>8}" if lesions
                    else ""))
    for name in runtimes:
        drop = scores["torch"] - scores[name]
        row = (f"{name:<10} {times[name][0]:>10.2f} {times[name][1]:>9.2f} "
               f"{scores[name].mean():>8.3f} {drop.max():>10.4f}")
        if lesions:
            cr, d = lesions[name]
            row += (f" {cr:>7.4f} {d:>7.3f} {cr - lesions['torch'][0]:>+7.4f} "
                    f"{d - lesions['torch'][1]:>+8.4f}")
        print(row)
    worst = int(np.argmax(scores["onnx"] - scores["onnx-int8"]))
    print(f"int8 worst slice: {index[worst][0]} z={index[worst][1]}, "
          f"{scores['onnx'][worst] - scores['onnx-int8'][worst]:.3f} dB")
    print("kernel ms per slice by operator (onnxruntime profiler, batch "
          f"{min(args.batch, len(test_fbp))}, one network pass):")
    for op in sorted(set(ops["onnx"]) | set(ops["onnx-int8"]),
                     key=lambda o: -(ops["onnx"].get(o, 0) + ops["onnx-int8"].get(o, 0))):
        print(f"  {op:<24} float {ops['onnx'].get(op, 0):6.2f}   int8 "
              f"{ops['onnx-int8'].get(op, 0):6.2f}")
    print(f"  {'total':<24} float {sum(ops['onnx'].values()):6.2f}   int8 "
          f"{sum(ops['onnx-int8'].values()):6.2f}")

    # FBP + network (torch) against SIRT-100 from the same sinograms
    with Projector(geometry, "cpu") as projector:
        start = time.perf_counter()
        fbps = np.stack([mu_to_hu(reconstruct("fbp", projector, np.asarray(sinograms[i])))
                         for i in picks])
        reconstruct_volume(module, fbps, args.batch)
        batched_time = (time.perf_counter() - start) / len(picks)
        start = time.perf_counter()
        sirt = [mu_to_hu(reconstruct("sirt", projector, np.asarray(sinograms[i]), iterations=100))
                for i in picks]
        sirt_time = (time.perf_counter() - start) / len(picks)
    print(f"{args.model} (FBP + network, torch, batched): {batched_time * 1000:.1f} ms/slice; "
          f"SIRT-100: {sirt_time * 1000:.1f} ms/slice, PSNR "
          f"{psnr(np.stack(sirt), picks).mean():.2f} dB on the timed slices")
    print(f"onnx_max_abs_hu: {np.abs(outputs['onnx'] - outputs['torch']).max():.4f}")
    print(f"onnx_fp32_vs_torch: {times['torch'][0] / times['onnx'][0]:.2f}")
    print(f"int8_psnr_drop_db: {(scores['onnx'] - scores['onnx-int8']).mean():.3f}")
    print(f"int8_speedup: {times['onnx'][0] / times['onnx-int8'][0]:.2f}")
    print(f"speedup_vs_sirt100: {sirt_time / batched_time:.1f}")


if __name__ == "__main__":
    main()
