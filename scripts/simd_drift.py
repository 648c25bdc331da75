"""How far the results of `make run` move when the CPU has no AVX-512.

The built-in data are byte-identical on every x86-64 CPU (tests/test_phantom_simd.py),
and training and evaluation are bit-identical run to run on one machine. Across
CPUs, torch, oneDNN, MKL and numpy pick other kernels whose last bits differ,
and twelve epochs of training amplify them. This script measures by how much.

Run it in a checkout where `make run` has finished. It clones HEAD into a
temporary folder, copies ``data/``, runs the whole pipeline there with every
AVX-512 path switched off (numpy, ATen, oneDNN, MKL, OpenBLAS, glibc) -- what a
machine with AVX2 only would run -- and prints, per view count and method, the
test PSNR of both runs and their difference, the best validation PSNR of each
trained model, and whether the champion would move: the clone's models are
promoted into a copy of this checkout's registry, where they only take the
alias if they beat it by ``registry.margin_db``.

    python scripts/simd_drift.py            # about 15 minutes on 2 cores
    python scripts/simd_drift.py --keep /tmp/avx2-run --compare-only

The last lines are machine-readable: ``max_psnr_drift_db: X``,
``margin_db: Y``, ``champions_moved: N``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What a CPU with AVX2 (and FMA) but no AVX-512 runs.
AVX2_ONLY = {
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD",
}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, cwd=cwd, env=env, check=True)


def run_pipeline(clone: Path) -> None:
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shutil.copytree(ROOT / "data", clone / "data")
    env = {**os.environ, **AVX2_ONLY, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    _run(["dvc", "repro", "--force"], clone, env)


def _test_psnr(reports: Path) -> dict[str, dict[str, float]]:
    metrics = json.loads((reports / "metrics.json").read_text())
    out = {}
    for views, methods in metrics.items():
        if not views.isdigit():
            continue
        out[views] = {
            m: float(v["psnr"]) for m, v in methods.items() if isinstance(v, dict) and "psnr" in v
        }
    return out


def _val_psnr(models_root: Path) -> dict[str, dict[str, float]]:
    out = {}
    for summary in sorted(models_root.glob("*/summary.json")):
        out[summary.parent.name] = {
            m: float(v["best_val_psnr"]) for m, v in json.loads(summary.read_text()).items()
        }
    return out


def champions_after_cross_promotion(clone: Path) -> list[dict]:
    """Promotes the clone's models into a copy of this checkout's registry.

    Their training runs live in the clone's own MLflow store, so each is
    registered from a new run in the copy.
    """
    scratch = Path(tempfile.mkdtemp(prefix="sparsect-drift-"))
    shutil.copy2(ROOT / "mlflow.db", scratch / "mlflow.db")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
    }
    out = scratch / "cross_promotion.json"
    command = ["sparsect", "promote", "--prepared", "artifacts/prepared", "--models",
               "artifacts/models", "--evaluations", "reports/views", "--out", str(out)]
    _run(command, clone, env)
    return json.loads(out.read_text())["decisions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="folder for the AVX2-only clone (default: a temporary one)",
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="the clone in --keep has run already: only compare",
    )
    args = parser.parse_args()
    clone = args.keep or Path(tempfile.mkdtemp(prefix="sparsect-avx2-")) / "repo"
    if not args.compare_only:
        run_pipeline(clone)
    margin = float(yaml.safe_load((ROOT / "params.yaml").read_text())["registry"]["margin_db"])

    here, there = _test_psnr(ROOT / "reports"), _test_psnr(clone / "reports")
    print("\ntest PSNR (dB): this CPU / AVX2 only / difference")
    worst = 0.0
    for views in sorted(here, key=int):
        for method, value in here[views].items():
            other = there[views][method]
            worst = max(worst, abs(other - value))
            print(
                f"  {views:>4} views  {method:<10} {value:7.3f} {other:7.3f} {other - value:+.3f}"
            )
    val_here, val_there = (
        _val_psnr(ROOT / "artifacts/models"),
        _val_psnr(clone / "artifacts/models"),
    )
    print("best validation PSNR (dB): this CPU / AVX2 only / difference")
    for views in sorted(val_here, key=int):
        for model, value in val_here[views].items():
            other = val_there[views][model]
            worst = max(worst, abs(other - value))
            print(f"  {views:>4} views  {model:<10} {value:7.3f} {other:7.3f} {other - value:+.3f}")
    decisions = champions_after_cross_promotion(clone)
    moved = [d for d in decisions if d.get("changed")]
    for decision in decisions:
        print(f"  {decision['name']}: {decision['reason']}")
    print(f"max_psnr_drift_db: {worst:.4f}")
    print(f"margin_db: {margin}")
    print(f"champions_moved: {len(moved)}")


if __name__ == "__main__":
    main()
