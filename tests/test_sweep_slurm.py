"""A sweep on SLURM as it would be submitted: Hydra's submitit launcher (conf/hydra/launcher/
slurm.yaml) renders the sbatch script and pickles each sweep job, then calls ``sbatch``.
Here ``sbatch`` is a stand-in on PATH that keeps the script and refuses it, so the test
reads exactly what a cluster would receive."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
from pathlib import Path

from helpers import BIN

SBATCH = """#!/bin/sh
cp "$1" "$SBATCH_CAPTURE"
echo "sbatch: error: kept for the test, not submitted" >&2
exit 1
"""


def render(tmp_path: Path, *overrides: str) -> tuple[str, list, subprocess.CompletedProcess]:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "sbatch").write_text(SBATCH)
    (tools / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it
    for tool in ("sbatch", "srun"):
        (tools / tool).chmod(0o755)
    for folder in ("prepared", "masks"):
        (tmp_path / folder).mkdir()
    script = tmp_path / "job.sh"
    env = {**os.environ, "PATH": f"{tools}:{BIN}:{os.environ['PATH']}",
           "SBATCH_CAPTURE": str(script)}
    done = subprocess.run(
        [str(BIN / "sparsect"), "train", "-m", *overrides, "--prepared",
         str(tmp_path / "prepared"), "--masks", str(tmp_path / "masks"), "--sweep-dir",
         str(tmp_path / "sweep")], env=env, capture_output=True, text=True, timeout=300,
        check=False)
    assert script.is_file(), done.stderr[-3000:]
    jobs = [pickle.loads(p.read_bytes())
            for p in sorted((tmp_path / "sweep" / ".submitit").glob("*.pkl"))]
    return script.read_text(), jobs, done


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.M))


def test_slurm_sweep_renders_one_array_task_per_job_sized_as_training_asks(tmp_path):
    script, jobs, done = render(
        tmp_path, "geometry.views=30,60,120", "trainer=gpu", "trainer.devices=4",
        "trainer.num_nodes=2", "hydra/launcher=slurm", "hydra.launcher.partition=gpu-long",
        "hydra.launcher.timeout_min=90")
    assert done.returncode != 0 and "kept for the test" in done.stderr  # never submitted
    sbatch = directives(script)
    assert sbatch["nodes"] == "2"  # trainer.num_nodes
    assert sbatch["ntasks-per-node"] == "4"  # trainer.devices: one task per GPU
    assert sbatch["gpus-per-node"] == "4"
    assert sbatch["time"] == "90"
    assert sbatch["partition"] == "gpu-long"
    assert sbatch["array"] == "0-2%3"  # three sweep jobs, all at once
    # every task runs submitit's job runner under srun, which reads the pickled job
    assert re.search(r"^srun .* -m submitit\.core\._submit ", script, re.M), script
    # one pickled job per array index, each with its sweep value and the fixed overrides
    assert len(jobs) == 3
    overrides = sorted((job.args[2], job.args[0]) for job in jobs)
    for index, views in enumerate((30, 60, 120)):
        assert overrides[index] == (index, [f"geometry.views={views}", "trainer=gpu",
                                            "trainer.devices=4", "trainer.num_nodes=2"])


def test_slurm_array_runs_at_most_array_parallelism_jobs_at_once(tmp_path):
    script, jobs, _ = render(
        tmp_path, "geometry.views=15,30,60,120", "trainer.devices=1", "hydra/launcher=slurm",
        "hydra.launcher.array_parallelism=2", "hydra.launcher.gpus_per_node=0")
    sbatch = directives(script)
    assert sbatch["array"] == "0-3%2"
    assert sbatch["nodes"] == "1" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["gpus-per-node"] == "0"  # a CPU job asks for no GPU
    assert len(jobs) == 4
