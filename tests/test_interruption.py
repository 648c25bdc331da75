"""Real kills during `dvc repro`: nothing half-written, and the re-run ends where an
uninterrupted run ends.

The reference is the ``tiny_repo`` fixture (one uninterrupted `dvc repro`). A second,
identical project is killed (SIGKILL to the whole process group, so no cleanup code
runs) while `simulate@12` writes its output and in the second epoch of `train@12`, at a
random moment; `sparsect recover` and `dvc repro` (what `make run` runs) then have to
produce the same sinograms and FBPs bit for bit, the same network weights (training
resumes from its last epoch and is deterministic), and the same metrics. ``recover``
does nothing here unless a kill cuts DVC's own bookkeeping (``tests/test_recover.py``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BIN, init_tiny_repo, sh, tool_env

# Stated tolerance for "the same metrics" of two runs of one config and seed on CPU.
METRIC_TOLERANCE = 1e-6
SEED = int(os.environ.get("SPARSECT_KILL_SEED", time.time_ns() % 10_000))


def dvc_repro(repo: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "dvc"), "repro", stage], cwd=repo, env=tool_env(repo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill(process: subprocess.Popen, repo: Path) -> None:
    """SIGKILL ``process`` and its children, then repair DVC's state as a user would."""
    assert process.poll() is None, \
        f"the stage finished before the kill: nothing was tested (SPARSECT_KILL_SEED={SEED})"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    print(sh("sparsect", "recover", cwd=repo, env=tool_env(repo)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree, by its path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in numbers(sub, f"{prefix}/{key}")
                .items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in numbers(sub, f"{prefix}/{i}")
                .items()}
    return {prefix: float(tree)} if isinstance(tree, int | float) else {}


@pytest.fixture(scope="module")
def killed_repo(tmp_path_factory):
    repo = init_tiny_repo(tmp_path_factory.mktemp("killed"))
    sh("dvc", "repro", "prepare", cwd=repo, env=tool_env(repo))
    return repo


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll ``condition`` every 5 ms while ``process`` runs."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the stage ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.005)


def holds_a_file(folders) -> bool:
    try:
        return any(p.is_file() for folder in folders for p in folder.rglob("*"))
    except FileNotFoundError:  # renamed into place while we looked
        return True


@pytest.mark.slow
def test_killed_simulate_reruns_to_identical_outputs(tiny_repo, killed_repo):
    """The kill lands while the stage writes: DVC's start-up and the simulation's
    imports take most of a `dvc repro` of the tiny project (about 2.7 of 4 s here) and
    the write about 0.15 s, so a delay drawn over the whole run rarely hit it."""
    sim = killed_repo / "artifacts" / "sim"
    process = dvc_repro(killed_repo, "simulate@12")
    wait_for(lambda: holds_a_file(sim.glob(".12.tmp-*")), process, "writing began")
    time.sleep(random.Random(SEED).uniform(0.0, 0.03))  # somewhere in the write
    kill(process, killed_repo)
    reference = tiny_repo / "artifacts" / "sim" / "12"

    def same_as_reference() -> None:
        files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(sim / "12")
                                         for p in (sim / "12").rglob("*") if p.is_file())
        for name in files:
            assert (sim / "12" / name).read_bytes() == (reference / name).read_bytes(), name

    if (sim / "12").exists():  # the rename beat the kill: then the output must be whole
        print(f"the kill came after the rename (SPARSECT_KILL_SEED={SEED})")
        same_as_reference()
    else:
        assert [name for name in leftovers(sim) if name.startswith(".12.tmp-")], \
            f"no partial output was left to test (SPARSECT_KILL_SEED={SEED})"
    assert "simulate@12" in sh("dvc", "status", cwd=killed_repo, env=tool_env(killed_repo))

    sh("dvc", "repro", "simulate@12", cwd=killed_repo, env=tool_env(killed_repo))
    same_as_reference()
    assert leftovers(sim) == []  # the killed run's temporary folder was cleaned up


@pytest.mark.slow
def test_killed_training_resumes_under_dvc_to_the_uninterrupted_weights(tiny_repo,
                                                                        killed_repo):
    sh("dvc", "repro", "masks", cwd=killed_repo, env=tool_env(killed_repo))
    process = dvc_repro(killed_repo, "train@12")
    work = killed_repo / "artifacts" / "models" / ".12.work" / "unet"
    deadline = time.time() + 300
    while not (work / "last.ckpt").is_file() and time.time() < deadline:
        assert process.poll() is None, "training ended before writing last.ckpt"
        time.sleep(0.02)
    time.sleep(random.Random(SEED).uniform(0.0, 0.1))  # somewhere in the second epoch
    kill(process, killed_repo)
    models = killed_repo / "artifacts" / "models"
    assert not (models / "12").exists(), f"half-written output (SPARSECT_KILL_SEED={SEED})"

    sh("dvc", "repro", "train@12", cwd=killed_repo, env=tool_env(killed_repo))
    summary = json.loads((models / "12" / "summary.json").read_text())
    reference = json.loads((tiny_repo / "artifacts/models/12/summary.json").read_text())
    assert summary["unet"]["resumed"] is True and reference["unet"]["resumed"] is False
    for model in ("unet", "sg_unet"):
        assert summary[model]["epochs"] == reference[model]["epochs"]
        assert summary[model]["best_val_psnr"] == reference[model]["best_val_psnr"]
        ours = torch.load(models / "12" / f"{model}.ckpt", weights_only=True)["state_dict"]
        theirs = torch.load(tiny_repo / f"artifacts/models/12/{model}.ckpt",
                            weights_only=True)["state_dict"]
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (model, key)
    assert leftovers(models) == [] and not (models / ".12.work").exists()


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(tiny_repo, killed_repo):
    """Requires the two tests above: the killed project, completed, is evaluated too."""
    sh("dvc", "repro", "evaluate@12", cwd=killed_repo, env=tool_env(killed_repo))
    ours = numbers(json.loads((killed_repo / "reports/views/12/metrics.json").read_text()))
    theirs = numbers(json.loads((tiny_repo / "reports/views/12/metrics.json").read_text()))
    assert ours.keys() == theirs.keys() and len(ours) > 100
    # NaN where a score is undefined (an organ absent from a tiny slab: its HD95), in
    # the same places in both; everything else equal within the tolerance
    undefined = {k for k, v in theirs.items() if not np.isfinite(v)}
    assert {k for k, v in ours.items() if not np.isfinite(v)} == undefined
    task = ("/downstream_dice/", "/detectability/", "/lesion_", "/hallucinated/", "/lost/",
            "/_task")
    assert all(any(part in k for part in task) for k in undefined), sorted(undefined)[:5]
    differences = {k: abs(ours[k] - theirs[k]) for k in ours if k not in undefined}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= METRIC_TOLERANCE * max(1.0, abs(theirs[worst])), worst
