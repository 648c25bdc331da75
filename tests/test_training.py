"""Training for real: DDP on CPU (gloo), resume after a kill, one MLflow run per model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from helpers import BIN, ROOT, TINY_TRAINING, build_tiny_inputs
from sparsect.stages.simulate import simulate

TINY = [*TINY_TRAINING, "trainer.augment=false"]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    cfg = build_tiny_inputs(root, TINY, subjects=4, slices=6, seed=3)
    simulate(cfg, root / "prepared", root / "sim", views=16, workers=1)
    return root


def train_command(root: Path, out: str, *overrides: str) -> list[str]:
    return [str(BIN / "sparsect"), "train", "--params", str(ROOT / "params.yaml"),
            "--views", "16", "--prepared", str(root / "prepared"), "--sim", str(root / "sim"),
            "--masks", str(root / "masks"), "--out", str(root / out), *TINY, *overrides]


def environment(root: Path, name: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / name}.db"}


def runs(root: Path, name: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / name}.db")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(arrays):
    """Same data, same global batch (2 x 2 vs 1 x 4): final validation PSNR within 1 dB."""
    results = {}
    for label, overrides in {
        "single": ["trainer.devices=1", "trainer.batch_size=4"],
        "ddp": ["trainer.devices=2", "trainer.strategy=ddp", "trainer.batch_size=2"],
    }.items():
        done = subprocess.run(train_command(arrays, f"models_{label}", "trainer.max_epochs=3",
                                            *overrides),
                              env=environment(arrays, label), capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        results[label] = json.loads((arrays / f"models_{label}" / "summary.json").read_text())
        # exactly one MLflow run per model, however many ranks trained it
        assert sorted(r.info.run_name for r in runs(arrays, label)) == ["sg_unet@16", "unet@16"]
    for model in ("unet", "sg_unet"):
        single = results["single"][model]["best_val_psnr"]
        ddp = results["ddp"][model]["best_val_psnr"]
        assert abs(single - ddp) < 1.0, (model, single, ddp)
    ddp_run = [r for r in runs(arrays, "ddp") if r.info.run_name == "unet@16"][0]
    assert ddp_run.data.params["cfg.trainer.devices"] == "2"


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_epoch_count_in_one_run(arrays):
    epochs = 30  # enough that the kill below lands mid-way through the first model
    command = train_command(arrays, "models_resume", f"trainer.max_epochs={epochs}")
    env = environment(arrays, "resume")
    work = arrays / ".models_resume.work" / "unet"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (work / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a hard kill: no cleanup code runs
    process.wait()
    assert (work / "last.ckpt").is_file(), "training never wrote last.ckpt"
    assert not (arrays / "models_resume").exists()  # no half-written output

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # resuming into the work folder is by design: Lightning's notes about it (and its own
    # deprecations) are not the user's business
    assert "is not empty" not in done.stderr and "LeafSpec" not in done.stderr, done.stderr
    summary = json.loads((arrays / "models_resume" / "summary.json").read_text())
    assert summary["unet"]["resumed"] is True
    assert summary["unet"]["epochs"] == summary["sg_unet"]["epochs"] == epochs
    names = sorted(r.info.run_name for r in runs(arrays, "resume"))
    assert names == ["sg_unet@16", "unet@16"]  # the resumed model kept its run
    unet_run = [r for r in runs(arrays, "resume") if r.info.run_name == "unet@16"][0]
    client = mlflow.MlflowClient(f"sqlite:///{arrays / 'resume'}.db")
    history = client.get_metric_history(unet_run.info.run_id, "val/psnr")
    # every epoch's validation, before and after the kill, is in the one run
    assert len({m.step for m in history}) >= epochs
    assert not (arrays / ".models_resume.work").exists()  # cleaned once complete


@pytest.mark.slow
def test_equal_training_in_two_folders_writes_byte_identical_outputs(arrays):
    """The stage output carries no absolute path and no run id: retraining the same
    config elsewhere gives the same DVC hash (dvc.lock changes only with results),
    and each output still leads back to the MLflow run that trained it."""
    outputs = {}
    for label in ("here", "there"):
        done = subprocess.run(train_command(arrays, f"models_{label}", "trainer.max_epochs=2"),
                              env=environment(arrays, label), capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        folder = arrays / f"models_{label}"
        outputs[label] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert sorted(outputs["here"]) == ["sg_unet.ckpt", "summary.json", "unet.ckpt"]
    different = [n for n in outputs["here"] if outputs["here"][n] != outputs["there"][n]]
    assert not different, f"outputs differ between folders: {different}"

    from sparsect.tracking import training_run_id

    for label in ("here", "there"):
        uri = f"sqlite:///{arrays / label}.db"
        found = training_run_id(uri, arrays / f"models_{label}" / "unet.ckpt")
        (run,) = [r for r in runs(arrays, label) if r.info.run_name == "unet@16"]
        assert found == run.info.run_id


def test_ddp_gets_the_configured_timeout_and_a_bad_one_is_refused():
    from datetime import timedelta

    from omegaconf import OmegaConf
    from pytorch_lightning.strategies import DDPStrategy

    from sparsect.errors import InputError
    from sparsect.stages.train import strategy

    def cfg(**trainer):
        return OmegaConf.create({"trainer": trainer})

    chosen = strategy(cfg(strategy="ddp", timeout_s=45))
    assert isinstance(chosen, DDPStrategy)
    assert chosen._timeout == timedelta(seconds=45)
    assert strategy(cfg(strategy="auto", timeout_s=45)) == "auto"
    assert strategy(cfg(strategy="ddp")) == "ddp"  # older configs: Lightning's default
    with pytest.raises(InputError, match="trainer.timeout_s"):
        strategy(cfg(strategy="ddp", timeout_s=0))


@pytest.mark.parametrize(("env", "zero"), [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "1", "LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # torchrun, second node
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, False),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),
    ({"LOCAL_RANK": "1"}, False),  # Lightning's own launcher, second process
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
])
def test_rank_zero_is_known_from_the_launcher_before_lightning_starts(monkeypatch, env, zero):
    from sparsect.stages.train import launched_as_rank_zero

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_as_rank_zero() is zero
