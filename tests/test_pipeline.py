"""End-to-end: the real `dvc repro` on a tiny configuration in a temporary copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = [
    "data.phantom.subjects=4",
    "data.phantom.shape=[96,96,4]",
    "data.phantom.spacing_mm=[4.0,4.0,5.0]",
    "data.image_size=32",
    "data.pixel_size_mm=12.0",
    "sweep.views=[12,24]",
    "model.channels=4",
    "model.depth=3",
    "model.seg_channels=4",
    "trainer.max_epochs=2",
    "trainer.batch_size=4",
    "trainer.crop=16",
    "evaluate.panel_slices=1",
    "baselines.sirt.iterations=20",
    "baselines.tv.iterations=20",
]


def sh(*args: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("conf", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(ROOT / ".gitignore", repo)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("sparsect", "params", *TINY, cwd=repo, env=env)
    sh("sparsect", "make-data", "--out", "data", cwd=repo, env=env)
    sh("dvc", "add", "-q", "data", cwd=repo, env=env)
    sh("dvc", "repro", cwd=repo, env=env)
    return repo


@pytest.mark.slow
def test_dvc_repro_produces_metrics_for_every_view_and_method(tiny_repo):
    metrics = json.loads((tiny_repo / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"12", "24"}
    for per_method in metrics.values():
        assert set(per_method) == {"fbp", "sirt", "tv", "unet", "sg_unet"}
        for values in per_method.values():
            assert {"psnr", "ssim", "rmse_hu"} <= set(values)
        assert 0 <= per_method["sg_unet"]["dice"] <= 1
    # more views -> less streaking in the FBP (the physics is doing something)
    assert metrics["24"]["fbp"]["psnr"] > metrics["12"]["fbp"]["psnr"]
    for views in ("12", "24"):
        assert (tiny_repo / "reports" / "views" / views / "panel.png").stat().st_size > 10_000


@pytest.mark.slow
def test_dvc_status_is_clean_and_mlflow_holds_one_run_per_model(tiny_repo):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    status = sh("dvc", "status", cwd=tiny_repo, env=env)
    assert "up to date" in status, status
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "sparsect"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"{m}@{v}" for m in ("unet", "sg_unet") for v in (12, 24))
    for run in runs:
        assert "val/psnr" in run.data.metrics and "train/loss" in run.data.metrics
        assert run.data.tags["git_commit"]
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert artifacts == ["checkpoints/best.ckpt"]
