#!/usr/bin/env python
"""Time and peak anonymous memory of each stage at the clinical grid, for two cohort
sizes: does memory grow with the cohort?

For each ``--subjects`` count (default 16 and 32) it composes ``experiment=clinical``
(512 x 512 pixels of 0.75 mm, the clinical fan beam, 60 views) with that many phantom
subjects of ``--slices`` slices and ``--epochs`` epochs of ``unet``, then runs the
stages as the pipeline does, each as its own ``sparsect`` command: make-data, prepare,
masks, simulate, train. Every stage's wall time and the peak of its anonymous resident
memory (``RssAnon`` of /proc/<pid>/status, summed over the command and its child
processes, sampled every ``--interval`` seconds, 5 ms by default) are printed as a table,
then the growth of each peak from the first cohort to the last.

Training's peak is its activations (batches of whole 512 x 512 slices), which last a
fraction of a second: one sampled run misses it by a varying amount (runs of the same
command differed by about 6 % when sampled every 50 ms). ``--repeats N`` therefore trains
each cohort N times, the cohorts interleaved so that drift in the machine's load falls on
both alike, and prints the growth of the mean peak with its 95 % interval (Welch's t).
``--reuse`` keeps the data stages' outputs of an earlier run in ``--work`` and measures
training only. File-backed pages (the memory-mapped arrays the
loaders read) are not anonymous: they are the page cache's, which the kernel drops
under pressure, so RssAnon is what a cohort costs in memory that cannot be given back.

    PYTHONPATH=src python scripts/bench_cohort.py [--subjects 16 32] [--slices 6]
        [--epochs 1] [--repeats 1] [--interval 0.005] [--work DIR [--reuse]] [key=value ...]

Lines ``rss_anon_growth_<stage>: <percent>`` give the growth per stage, and with
``--repeats`` above 1, ``rss_anon_growth_train_mean: <percent> [<low>, <high>]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def run(command: list[str], interval: float) -> tuple[float, float]:
    """Runs ``command``; returns (seconds, peak RssAnon in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _rss_anon_kib(process.pid))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return time.perf_counter() - start, peak[0] / 1024


def cohort(work: Path, subjects: int, args: argparse.Namespace) -> dict[str, list[str]]:
    """Composes the cohort's parameters in ``work``; returns each stage's command."""
    work.mkdir(parents=True, exist_ok=True)
    params = work / "params.yaml"
    overrides = ["experiment=clinical", f"data.phantom.subjects={subjects}",
                 f"data.phantom.shape=[512,512,{args.slices}]",
                 f"trainer.max_epochs={args.epochs}", "sweep.views=[60]",
                 f"logger.tracking_uri=sqlite:///{work / 'mlflow.db'}", *args.overrides]
    subprocess.run([SPARSECT, "params", *overrides, "--out", str(params)], check=True,
                   stdout=subprocess.DEVNULL)
    p = ["--params", str(params)]
    return {
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


def interval95(first: list[float], last: list[float]) -> tuple[float, float, float]:
    """Growth of the mean of ``last`` over the mean of ``first``, in percent, with a 95 %
    interval from Welch's t on the difference of the means (scaled by the first mean)."""
    from scipy import stats

    m1, m2 = sum(first) / len(first), sum(last) / len(last)
    # the interval scipy gives is for mean(last) - mean(first), Welch's unequal variances
    low, high = stats.ttest_ind(last, first, equal_var=False).confidence_interval(0.95)
    return tuple(100 * float(x) / m1 for x in (m2 - m1, low, high))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work, the folder of an earlier run")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each cohort's own store
    with tempfile.TemporaryDirectory() as tmp:
        base = args.work or Path(tmp)
        commands = {n: cohort(base / f"subjects{n}", n, args) for n in args.subjects}
        results: dict[int, dict[str, list[tuple[float, float]]]] = {
            n: {} for n in args.subjects}
        for n in args.subjects:
            for stage, command in commands[n].items():
                if stage != "train" and not args.reuse:
                    results[n][stage] = [run(command, args.interval)]
        for _ in range(args.repeats):  # interleaved: 16, 32, 16, 32, ...
            for n in args.subjects:
                shutil.rmtree(base / f"subjects{n}" / "models", ignore_errors=True)
                results[n].setdefault("train", []).append(
                    run(commands[n]["train"], args.interval))
    print(f"experiment=clinical, {args.slices} slices a subject, {args.epochs} epoch(s) of "
          f"unet, {os.cpu_count()} cores, sampled every {1000 * args.interval:g} ms")
    print(f"{'stage':<10}" + "".join(f"{f'{n} subj. s':>14}{f'{n} RssAnon MiB':>18}"
                                     for n in args.subjects))
    first, last = args.subjects[0], args.subjects[-1]
    for stage, runs in results[first].items():
        for i in range(len(runs)):
            cells = (f"{results[n][stage][i][0]:>14.1f}{results[n][stage][i][1]:>18.0f}"
                     for n in args.subjects)
            print(f"{stage:<10}" + "".join(cells))
    for stage in results[first]:
        growth = 100 * (results[last][stage][0][1] / results[first][stage][0][1] - 1)
        print(f"rss_anon_growth_{stage}: {growth:+.1f} %")
    if args.repeats > 1:
        growth, low, high = interval95([r[1] for r in results[first]["train"]],
                                       [r[1] for r in results[last]["train"]])
        print(f"rss_anon_growth_train_mean: {growth:+.1f} % [{low:+.1f}, {high:+.1f}]")


if __name__ == "__main__":
    main()
