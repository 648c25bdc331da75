"""Registry promotion and `sparsect reconstruct`, against sqlite and a real `mlflow server`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from helpers import BIN, ROOT, TINY_TRAINING, build_tiny_inputs, write_dicom_series
from sparsect.config import load_params
from sparsect.data.io import axial_slices
from sparsect.errors import InputError
from sparsect.registry import ALIAS, lock_path, promote, register, registry_lock, resolve_model_uri
from sparsect.stages.simulate import simulate
from sparsect.stages.train import train

TINY = [*TINY_TRAINING, "trainer.max_epochs=2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny trainings of sg_unet (different seeds: two different checkpoints)."""
    root = tmp_path_factory.mktemp("registry")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'train.db'}"
    try:
        cfg = build_tiny_inputs(root, TINY, subjects=4, slices=4, seed=5)
        simulate(cfg, root / "prepared", root / "sim", views=16, workers=1)
        for seed in (0, 1):
            train(load_params(ROOT / "params.yaml", [*TINY, f"seed={seed}"]), root / "prepared",
                  root / "sim", root / "masks", root / f"models{seed}", 16, ("sg_unet",))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return cfg, root


@pytest.fixture(params=["sqlite", "server"])
def tracking(request, tmp_path):
    """A tracking URI: an sqlite store, or a real `mlflow server` process on localhost."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'registry.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    else:
        port = free_port()
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
        server.terminate()
        server.wait(timeout=30)
    del os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_first_model_is_champion_and_promotion_is_idempotent(trained, tracking):
    cfg, root = trained
    checkpoint = root / "models0" / "sg_unet.ckpt"
    version = register(cfg, "sg_unet", checkpoint, None, 30.0, "V1", {"psnr": 29.0})
    first = promote(cfg, version, margin_db=0.05)
    assert first["changed"] and first["champion"] == version.version
    again = register(cfg, "sg_unet", checkpoint, None, 30.0, "V1", {"psnr": 29.0})
    assert again.version == version.version  # same checkpoint, same version
    assert promote(cfg, again, 0.05)["changed"] is False

    # a different checkpoint that only ties is not promoted, and says why
    other = root / "models1" / "sg_unet.ckpt"
    tie = register(cfg, "sg_unet", other, None, 30.01, "V1", {"psnr": 35.0})
    decision = promote(cfg, tie, 0.05)
    assert decision["changed"] is False and decision["champion"] == version.version
    client = mlflow.MlflowClient()
    assert "does not beat" in client.get_model_version(tie.name, tie.version).tags["promotion"]
    assert client.get_model_version_by_alias(tie.name, ALIAS).version == version.version

    # the champion loads through pyfunc and predicts on a volume's FBP slices
    model = mlflow.pyfunc.load_model(f"models:/{version.name}@{ALIAS}")
    fbp = np.zeros((2, 32, 32), np.float32)
    assert model.predict(fbp).shape == (2, 32, 32)
    tags = client.get_model_version(version.name, version.version).tags
    assert json.loads(tags["geometry"])["views"] == 16
    assert {"noise", "data_dvc_md5", "git_commit", "test_psnr", "selection_set"} <= set(tags)
    # pinned requirements, and the package travels with the model
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{version.name}@{ALIAS}"))
    assert "torch==" in requirements.read_text()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}@{ALIAS}"))
    assert (local / "code" / "sparsect" / "models" / "checkpoint.py").is_file()


@pytest.mark.slow
def test_only_a_model_better_on_the_same_selection_set_is_promoted(trained, tracking):
    cfg, root = trained
    base = register(cfg, "sg_unet", root / "models0" / "sg_unet.ckpt", None, 30.0, "V1", {})
    promote(cfg, base, 0.05)
    elsewhere = register(cfg, "sg_unet", root / "models1" / "sg_unet.ckpt", None, 35.0,
                         "OTHER", {})
    assert promote(cfg, elsewhere, 0.05)["changed"] is False  # other val set: not comparable


@pytest.mark.slow
def test_reconstruct_a_volume_and_a_dicom_slice(trained, tmp_path):
    cfg, root = trained
    checkpoint = str(root / "models0" / "sg_unet.ckpt")
    scan = sorted((root / "data").glob("subject_000.nii.gz"))[0]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}

    def reconstruct(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "sparsect"), "reconstruct", *args, "--params",
                               str(ROOT / "params.yaml")], env=env, capture_output=True,
                              text=True, timeout=300, check=False)

    done = reconstruct(str(scan), "-o", str(tmp_path / "recon.nii.gz"), "--model", checkpoint,
                       "--save-reference")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr  # nothing printed that is not about the user's input
    recon = nib.load(tmp_path / "recon.nii.gz")
    reference = nib.load(tmp_path / "recon_reference.nii.gz")
    assert recon.shape == reference.shape == (32, 32, 4)
    assert np.allclose(np.diag(recon.affine)[:2], [12.0, 12.0])  # the model's grid, in mm
    assert np.allclose(recon.affine, reference.affine)
    error = np.abs(recon.get_fdata() - reference.get_fdata()).mean()
    assert error < 200, error  # a reconstruction of that scan, not noise

    hu = np.asarray(reference.get_fdata())
    write_dicom_series(tmp_path / "dicom", hu[:, :, 1:2], spacing=(12.0, 12.0, 5.0))
    done = reconstruct(str(tmp_path / "dicom" / "slice_000.dcm"), "-o",
                       str(tmp_path / "slice.nii.gz"), "--model", checkpoint)
    assert done.returncode == 0, done.stderr[-2000:]
    assert nib.load(tmp_path / "slice.nii.gz").shape == (32, 32, 1)

    wrong = reconstruct(str(scan), "-o", str(tmp_path / "x.nii.gz"), "--model", checkpoint,
                        "--views", "60")
    assert wrong.returncode == 2 and "does not match the model" in wrong.stderr


def test_a_version_stores_the_tuned_baselines_and_reconstruct_runs_them(trained, tmp_path,
                                                                      monkeypatch):
    """``promote`` stores the classical settings chosen on validation on each version, and
    ``reconstruct --method tv`` with that version runs TV with them; a version without them
    needs ``--option``, and refuses in one sentence without."""
    from sparsect.inference import reconstruct_files
    from sparsect.registry import registered_baselines

    cfg, root = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    tuned = {"tv": {"weight": 0.02, "iterations": 6}, "fbp": {"filter": "hann"}}
    first = register(cfg, "sg_unet", root / "models0" / "sg_unet.ckpt", None, 30.0, "V1", {},
                     tuned)
    promote(cfg, first, 0.05)
    champion = f"models:/{first.name}@{ALIAS}"
    assert registered_baselines(cfg, champion) == tuned
    older = register(cfg, "sg_unet", root / "models1" / "sg_unet.ckpt", None, 29.0, "V1", {})
    assert registered_baselines(cfg, f"models:/{older.name}/{older.version}") == {}

    sinogram = np.load(root / "sim" / "test" / "sinogram.npy")[:3]
    np.save(tmp_path / "sino.npy", sinogram)
    geometry = json.loads((root / "sim" / "geometry.json").read_text())["geometry"]
    (tmp_path / "sino.json").write_text(json.dumps(geometry))
    stored = reconstruct_files(cfg, tmp_path / "sino.npy", tmp_path / "stored.nii.gz",
                               champion, method="tv")[0]
    given = reconstruct_files(cfg, tmp_path / "sino.npy", tmp_path / "given.nii.gz",
                              str(root / "models0" / "sg_unet.ckpt"), method="tv",
                              options=tuned["tv"])[0]
    assert np.array_equal(nib.load(stored).get_fdata(), nib.load(given).get_fdata())
    other = reconstruct_files(cfg, tmp_path / "sino.npy", tmp_path / "other.nii.gz",
                              str(root / "models0" / "sg_unet.ckpt"), method="tv",
                              options={"weight": 0.02, "iterations": 1})[0]
    assert not np.array_equal(nib.load(stored).get_fdata(), nib.load(other).get_fdata())
    with pytest.raises(InputError, match="--method tv needs its settings"):
        reconstruct_files(cfg, tmp_path / "sino.npy", tmp_path / "none.nii.gz",
                          f"models:/{older.name}/{older.version}", method="tv")
    assert not (tmp_path / "none.nii.gz").exists()


def test_missing_checkpoint_or_registry_model_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_params(ROOT / "params.yaml",
                      [f"logger.tracking_uri=sqlite:///{tmp_path / 'empty.db'}"])
    with pytest.raises(InputError, match="does not exist"):
        resolve_model_uri(cfg, str(tmp_path / "nope.ckpt"))
    try:
        with pytest.raises(InputError, match="cannot be loaded from the registry"):
            resolve_model_uri(cfg, "models:/sparsect-parallel-60v-sg_unet@champion")
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'empty.db'}"
    finally:
        mlflow.set_tracking_uri(None)


def test_registry_locks_live_in_an_ignored_folder_beside_the_store(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert lock_path(store, "m").parent == tmp_path / ".sparsect-locks"
    # the default store is at the repository root: its locks go to ./.sparsect-locks/,
    # which git ignores, so `make run` leaves no lock files in the checkout
    assert lock_path("sqlite:///mlflow.db", "m").parent == Path(".sparsect-locks")
    lock = ".sparsect-locks/.sparsect-registry-0-m.lock"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", lock], cwd=ROOT)
    assert ignored.returncode == 0, ".sparsect-locks/ must be listed in .gitignore"
    # registry.lock_dir still wins (a folder shared by several hosts); a server's store
    # has no folder here, so its locks go to the temp folder
    assert lock_path(store, "m", str(tmp_path / "shared")).parent == tmp_path / "shared"
    assert lock_path("http://host:5000", "m").parent.name != ".sparsect-locks"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with registry_lock(load_params(ROOT / "params.yaml"), "m"):
        assert lock_path(store, "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".sparsect-locks"]


@pytest.mark.slow
def test_a_clearly_better_candidate_takes_the_alias(trained, tracking):
    cfg, root = trained
    base = register(cfg, "sg_unet", root / "models0" / "sg_unet.ckpt", None, 30.0, "V1", {})
    promote(cfg, base, 0.05)
    # better on validation, worse on test: promotion follows validation only (no leakage)
    better = register(cfg, "sg_unet", root / "models1" / "sg_unet.ckpt", None, 30.5, "V1",
                      {"psnr": 10.0})
    decision = promote(cfg, better, 0.05)
    assert decision["changed"] and decision["champion"] == better.version
    assert mlflow.MlflowClient().get_model_version_by_alias(better.name, ALIAS).version == \
        better.version


RACER = """
import json, sys, time
from pathlib import Path
import mlflow

from sparsect.config import load_params
from sparsect.registry import promote, register

checkpoint, psnr, delay, barrier = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
# A slow store: every promotion reads the champion, then stalls before deciding. Without a
# lock all racers read the same old champion and the last writer wins.
read = mlflow.MlflowClient.get_model_version_by_alias
def slow_read(self, *args, **kwargs):
    result = read(self, *args, **kwargs)
    time.sleep(delay)
    return result
mlflow.MlflowClient.get_model_version_by_alias = slow_read

cfg = load_params(sys.argv[5])
version = register(cfg, "sg_unet", Path(checkpoint), None, psnr, "V1", {})
Path(barrier, f"ready-{delay}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.01)
print(json.dumps(promote(cfg, version, 0.05)))
"""


def _variant(source: Path, target: Path, shift: float) -> Path:
    """Another valid checkpoint (another hash): the weights nudged by ``shift``."""
    import torch

    payload = torch.load(source, weights_only=True)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + shift
    torch.save(payload, target)
    return target


@pytest.mark.slow
def test_racing_promotions_leave_one_champion_the_best(trained, tmp_path, monkeypatch):
    cfg, root = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'race.db'}")
    base = register(cfg, "sg_unet", root / "models0" / "sg_unet.ckpt", None, 30.0, "V1", {})
    promote(cfg, base, 0.05)
    best = root / "models1" / "sg_unet.ckpt"
    # (checkpoint, validation PSNR, stall): the best stalls least, so without the lock the
    # worse candidates would overwrite it
    racers = [(best, 31.0, 0.2), (best, 31.0, 0.4),  # the same checkpoint twice
              (_variant(best, tmp_path / "b.ckpt", 1e-3), 30.5, 0.8),
              (_variant(best, tmp_path / "c.ckpt", 2e-3), 30.2, 1.2)]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(ckpt), str(psnr), str(delay),
                               str(barrier), str(ROOT / "params.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ckpt, psnr, delay in racers]
    deadline = time.time() + 300
    while len(list(barrier.glob("ready-*"))) < len(racers) and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    (barrier / "go").touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert list((tmp_path / ".sparsect-locks").glob("*.lock")), "locks beside the store"

    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{base.name}'")
    hashes = [v.tags["checkpoint_sha256"] for v in versions]
    assert len(hashes) == len(set(hashes)) == 4  # the doubly raced checkpoint registered once
    # an alias names one version by construction; it must be the best candidate's
    champion = client.get_model_version_by_alias(base.name, ALIAS)
    assert float(champion.tags["selection_psnr"]) == 31.0, champion.tags["promotion"]
    # each racer saw a consistent state: the champion it reports (itself, if it won) is
    # at least as good as its own candidate minus the margin
    psnr = {v.version: float(v.tags["selection_psnr"]) for v in versions}
    for (_, own, _), (out, _) in zip(racers, outputs, strict=True):
        decision = json.loads(out.strip().splitlines()[-1])
        assert psnr[decision["champion"]] >= own - 0.05, decision


@pytest.mark.slow
def test_the_champion_exports_to_onnx_and_serves_over_http(trained, tmp_path):
    """`sparsect export` logs the ONNX export to the champion's version; `reconstruct
    --runtime onnx` reads it from there; `mlflow models serve` answers a sinogram with the
    reconstruction `sparsect reconstruct` writes."""
    cfg, root = trained
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        version = register(cfg, "sg_unet", root / "models0" / "sg_unet.ckpt", None, 30.0, "V1",
                           {"psnr": 29.0})
        promote(cfg, version, 0.05)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    champion = f"models:/{version.name}@{ALIAS}"
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "16").symlink_to(root / "sim")  # the simulation at the model's views

    def sparsect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "sparsect"), *args, "--params",
                               str(ROOT / "params.yaml")], env=env, capture_output=True,
                              text=True, timeout=600, check=False)

    done = sparsect("export", "--model", champion, "--prepared", str(root / "prepared"),
                    "--sim", str(tmp_path / "sim"), "--out", str(tmp_path / "export"))
    assert done.returncode == 0, done.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    tags = mlflow.MlflowClient().get_model_version(version.name, version.version).tags
    mlflow.set_tracking_uri(None)
    assert tags["onnx"].startswith("runs:/") and tags["onnx"].endswith(f"/v{version.version}")
    assert float(tags["onnx_max_abs_hu"]) <= 0.5 and tags["onnx_opset"] == "18"
    assert json.loads(tags["onnx_contract"])["inputs"]["fbp"]["units"] == "HU"
    assert float(tags["int8_worst_psnr_drop_db"]) >= float(tags["int8_psnr_drop_db"])

    sinogram = np.array(np.load(root / "sim" / "test" / "sinogram.npy")[:3])
    measured = tmp_path / "scan.npy"
    np.save(measured, sinogram)
    geometry = json.loads((root / "sim" / "geometry.json").read_text())["geometry"]
    measured.with_suffix(".json").write_text(json.dumps(geometry))
    volumes = {}
    for runtime in ("torch", "onnx", "onnx-int8"):  # the export comes from the registry
        output = tmp_path / f"{runtime}.nii.gz"
        done = sparsect("reconstruct", str(measured), "-o", str(output), "--model", champion,
                        "--runtime", runtime)
        assert done.returncode == 0, done.stderr[-2000:]
        volumes[runtime] = axial_slices(np.asarray(nib.load(output).dataobj, np.float32))
    assert np.abs(volumes["onnx"] - volumes["torch"]).max() <= 1.0  # each rounded to HU
    assert np.abs(volumes["onnx-int8"] - volumes["torch"]).mean() < 50.0

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", champion, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.time() < deadline, "the model server did not answer /ping"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": sinogram.tolist(),
                             "params": {"input": "sinogram"}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = np.asarray(json.loads(response.read())["predictions"], np.float32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert answer.shape == sinogram.shape[:1] + volumes["torch"].shape[1:]
    # the same reconstruction as `sparsect reconstruct`, which rounds to whole HU
    assert np.abs(answer - volumes["torch"]).max() <= 0.5 + 1e-3
    assert np.abs(answer).max() > 100.0  # an image, not zeros
