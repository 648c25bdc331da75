"""Training on two machines for real: two nodes on this machine, one process each,
joined by torchrun's c10d rendezvous on localhost and talking over gloo.

Each node runs in its own folder (its local disk); the data, the output and its work
folder (checkpoints) are on storage both see, as a cluster's shared file system.
Both nodes and the one-node run pin one thread per process: with equal threads the
arithmetic is the same, so the weights can be compared bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch

from helpers import BIN, ROOT, TINY_TRAINING, build_tiny_inputs
from sparsect.stages.simulate import simulate

pytestmark = pytest.mark.slow

# enough epochs that a kill after the first checkpoint lands mid-way through training
EPOCHS = 30
TINY = [*TINY_TRAINING, "trainer.augment=false", "trainer.batch_size=2",
        f"trainer.max_epochs={EPOCHS}"]
MODELS = ("sg_unet", "unet")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    cfg = build_tiny_inputs(root, TINY, subjects=4, slices=6, seed=3)
    simulate(cfg, root / "prepared", root / "sim", views=16, workers=1)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_args(root: Path, out: str) -> list[str]:
    return ["train", "--params", str(ROOT / "params.yaml"), "--views", "16",
            "--prepared", str(root / "prepared"), "--sim", str(root / "sim"),
            "--masks", str(root / "masks"), "--out", str(root / out), *TINY]


def environment(root: Path, store: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / store}.db"}


def start_nodes(root: Path, out: str, store: str, *overrides: str) -> list[subprocess.Popen]:
    """Two torchrun agents, one per node, each in its own folder ``<out>-node<k>``."""
    port = free_port()
    nodes = []
    for node in (0, 1):
        folder = root / f"{out}-node{node}"
        folder.mkdir(exist_ok=True)
        command = [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
                   f"--rdzv-id={out}", "--max-restarts=0", "-m", "sparsect.cli",
                   *train_args(root, out), "trainer.devices=1", "trainer.num_nodes=2",
                   "trainer.strategy=ddp", *overrides]
        log = (root / f"{out}-node{node}.log").open("a")
        nodes.append(subprocess.Popen(command, cwd=folder, env=environment(root, store),
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return nodes


def finish(root: Path, out: str, nodes: list[subprocess.Popen]) -> None:
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            kill_node(node)
    logs = "".join((root / f"{out}-node{k}.log").read_text()[-3000:] for k in (0, 1))
    assert codes == [0, 0], logs


def signal_node(node: subprocess.Popen, signum: int) -> None:
    """``signum`` to a node's agent and its workers (torchrun starts each worker in a
    session of its own, so a process group does not reach them)."""
    try:
        tree = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def kill_node(node: subprocess.Popen) -> None:
    """The machine is gone: SIGKILL to its agent and workers."""
    signal_node(node, signal.SIGKILL)
    node.wait()


def wait_for(path: Path, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not path.is_file() and time.time() < deadline:
        time.sleep(0.05)
    assert path.is_file(), f"training never wrote {path.name}"


def exit_after(node: subprocess.Popen, timeout_s: float = 120) -> tuple[int | None, float]:
    """The node's exit code (None if it is still running after ``timeout_s``) and the
    seconds it took."""
    start = time.time()
    try:
        return node.wait(timeout=timeout_s), time.time() - start
    except subprocess.TimeoutExpired:
        return None, time.time() - start


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def runs(root: Path, store: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / store}.db")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


@pytest.fixture(scope="module")
def two_nodes(root) -> Path:
    """An uninterrupted two-node run."""
    finish(root, "two_nodes", start_nodes(root, "two_nodes", "two_nodes"))
    return root / "two_nodes"


def test_two_nodes_train_the_weights_of_one_node_and_only_rank_zero_writes(root, two_nodes):
    done = subprocess.run([str(BIN / "sparsect"), *train_args(root, "one_node"),
                           "trainer.devices=2", "trainer.strategy=ddp"],
                          env=environment(root, "one_node"), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    one_node = root / "one_node"
    for model in MODELS:
        assert same_weights(two_nodes / f"{model}.ckpt", one_node / f"{model}.ckpt"), model
    # the same weights, so the same selection and data-consistency choice
    assert (two_nodes / "summary.json").read_bytes() == (one_node / "summary.json").read_bytes()

    # one MLflow run per model, logged by global rank 0 with every epoch in it
    logged = runs(root, "two_nodes")
    assert sorted(r.info.run_name for r in logged) == [f"{m}@16" for m in MODELS]
    client = mlflow.MlflowClient(f"sqlite:///{root / 'two_nodes'}.db")
    for run in logged:
        assert run.data.params["cfg.trainer.num_nodes"] == "2"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/psnr")}
        assert len(steps) == EPOCHS
    # each node's own folder: rank 0's holds MLflow's artifact store (its local
    # ./mlruns under a sqlite store), the other node's stays empty
    assert os.listdir(root / "two_nodes-node1") == []
    assert os.listdir(root / "two_nodes-node0") == ["mlruns"]
    assert sorted(os.listdir(two_nodes)) == ["sg_unet.ckpt", "summary.json", "unet.ckpt"]
    assert not (root / ".two_nodes.work").exists()


@pytest.mark.parametrize("victim", [0, 1], ids=["rank0_node_killed", "rank1_node_killed"])
def test_a_killed_node_stops_the_other_and_a_rerun_resumes_to_the_same_weights(
        root, two_nodes, victim):
    out = f"killed{victim}"
    nodes = start_nodes(root, out, out)
    try:
        wait_for(root / f".{out}.work" / "unet" / "last.ckpt")
        kill_node(nodes[victim])
        code, waited = exit_after(nodes[1 - victim])
    finally:
        for node in nodes:
            kill_node(node)
    assert code not in (None, 0), f"the surviving node exited {code} after {waited:.0f} s"
    assert waited < 120
    assert not (root / out).exists()  # no half-written output

    finish(root, out, start_nodes(root, out, out))
    summary = json.loads((root / out / "summary.json").read_text())
    assert summary["unet"]["resumed"] is True
    for model in MODELS:
        assert summary[model]["epochs"] == EPOCHS
        assert same_weights(root / out / f"{model}.ckpt", two_nodes / f"{model}.ckpt"), model
    # the resumed model kept its MLflow run
    assert sorted(r.info.run_name for r in runs(root, out)) == [f"{m}@16" for m in MODELS]


def test_a_hung_node_fails_the_other_rank_after_the_timeout(root):
    """A node that stops answering (SIGSTOP: its sockets stay open, so nothing tells the
    other it is gone) fails the other rank's training after ``trainer.timeout_s``, not
    after the process group's 30 minutes. (torchrun's agent may then wait on the
    rendezvous store, if the hung node hosts it: its ``read_timeout`` and the scheduler's
    time limit bound that.)"""
    out = "hung"
    nodes = start_nodes(root, out, out, "trainer.timeout_s=20")
    log = root / f"{out}-node0.log"
    message = "Timed out waiting 20000ms"
    try:
        wait_for(root / f".{out}.work" / "unet" / "last.ckpt")
        signal_node(nodes[1], signal.SIGSTOP)
        stopped = time.time()
        while message not in log.read_text() and time.time() - stopped < 120:
            time.sleep(0.2)
        waited = time.time() - stopped
    finally:
        for node in nodes:
            kill_node(node)
    assert message in log.read_text(), log.read_text()[-3000:]
    assert 20 <= waited < 120, waited
    assert not (root / out).exists()
