#!/usr/bin/env python
"""Time and peak anonymous memory of each stage at the clinical grid, for two cohort
sizes: does memory grow with the cohort?

For each ``--subjects`` count (default 16 and 32) it composes ``experiment=clinical``
(512 x 512 pixels of 0.75 mm, the clinical fan beam, 60 views) with that many phantom
subjects of ``--slices`` slices and ``--epochs`` epochs of ``unet``, then runs the
stages as the pipeline does, each as its own ``sparsect`` command: make-data, prepare,
masks, simulate, train. Every stage's wall time and the peak of its anonymous resident
memory (``RssAnon`` of /proc/<pid>/status, summed over the command and its child
processes, sampled every 50 ms) are printed as a table, then the growth of each peak
from the first cohort to the last. File-backed pages (the memory-mapped arrays the
loaders read) are not anonymous: they are the page cache's, which the kernel drops
under pressure, so RssAnon is what a cohort costs in memory that cannot be given back.

    PYTHONPATH=src python scripts/bench_cohort.py [--subjects 16 32] [--slices 6]
        [--epochs 1] [--work DIR] [key=value ...]

Lines ``rss_anon_growth_<stage>: <percent>`` give the growth per stage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPARSECT = str(Path(sys.executable).parent / "sparsect")


def _rss_anon_kib(pid: int) -> int:
    """RssAnon of ``pid`` and every descendant, in KiB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run(command: list[str]) -> tuple[float, float]:
    """Runs ``command``; returns (seconds, peak RssAnon in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _rss_anon_kib(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return time.perf_counter() - start, peak[0] / 1024


def cohort(work: Path, subjects: int, args: argparse.Namespace) -> dict[str, tuple]:
    work.mkdir(parents=True, exist_ok=True)
    params = work / "params.yaml"
    overrides = ["experiment=clinical", f"data.phantom.subjects={subjects}",
                 f"data.phantom.shape=[512,512,{args.slices}]",
                 f"trainer.max_epochs={args.epochs}", "sweep.views=[60]",
                 f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}", *args.overrides]
    subprocess.run([SPARSECT, "params", *overrides, "--out", str(params)], check=True,
                   stdout=subprocess.DEVNULL)
    p = ["--params", str(params)]
    stages = {
        "make-data": [SPARSECT, "make-data", *p, "--out", str(work / "data")],
        "prepare": [SPARSECT, "prepare", *p, "--data", str(work / "data"), "--out",
                    str(work / "prepared")],
        "masks": [SPARSECT, "masks", *p, "--prepared", str(work / "prepared"), "--out",
                  str(work / "masks")],
        "simulate": [SPARSECT, "simulate", *p, "--views", "60", "--prepared",
                     str(work / "prepared"), "--out", str(work / "sim")],
        "train": [SPARSECT, "train", *p, "--views", "60", "--prepared", str(work / "prepared"),
                  "--sim", str(work / "sim"), "--masks", str(work / "masks"), "--out",
                  str(work / "models"), "--models", "unet"],
    }
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the cohort's own store
    return {name: run(command) for name, command in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.work or Path(tmp)
        results = {n: cohort(base / f"subjects{n}", n, args) for n in args.subjects}
    print(f"experiment=clinical, {args.slices} slices a subject, {args.epochs} epoch(s) of "
          f"unet, {os.cpu_count()} cores")
    print(f"{'stage':<10}" + "".join(f"{f'{n} subj. s':>14}{f'{n} RssAnon MiB':>18}"
                                     for n in args.subjects))
    for stage in results[args.subjects[0]]:
        cells = (f"{results[n][stage][0]:>14.1f}{results[n][stage][1]:>18.0f}"
                 for n in args.subjects)
        print(f"{stage:<10}" + "".join(cells))
    first, last = args.subjects[0], args.subjects[-1]
    for stage in results[first]:
        growth = 100 * (results[last][stage][1] / results[first][stage][1] - 1)
        print(f"rss_anon_growth_{stage}: {growth:+.1f} %")


if __name__ == "__main__":
    main()
