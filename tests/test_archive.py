"""`sparsect reconstruct` over an archive: 40 small series at several depths, one of them
corrupt, in one process and in two; then killed mid-way and rerun."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BIN, ROOT, write_dicom_series, write_nifti
from sparsect.archive import find_series, is_archive, marker_for, output_for
from sparsect.models.module import ReconModule
from sparsect.physics import Geometry

GEOMETRY = Geometry("parallel", views=16, image_size=32, pixel_size_mm=12.0)
CORRUPT = Path("site_b") / "p07" / "ct.nii.gz"


def volume(seed: int) -> np.ndarray:
    """A 32 x 32 x 2 body: a water disc with a bone spot, in HU, varying by seed."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(32) - 15.5, np.arange(32) - 15.5, indexing="ij")
    body = np.where(x**2 + y**2 < 13**2, 40.0, -1000.0)
    cx, cy = rng.integers(-6, 7, size=2)
    body[(x - cx) ** 2 + (y - cy) ** 2 < 9] = 900.0
    return np.repeat(body[:, :, None], 2, axis=2) + rng.normal(0, 10, (32, 32, 2))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """36 NIfTI scans two or three folders deep, 4 DICOM series four deep, one of the
    NIfTI files cut short."""
    root = tmp_path_factory.mktemp("archive")
    for k in range(36):
        site = "site_a" if k < 18 else "site_b"
        folder = root / site / f"p{k % 18:02d}"
        if k % 3 == 0:
            folder = folder / "followup"
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(folder / "ct.nii.gz", volume(k), spacing=(12.0, 12.0, 5.0))
    for k in range(4):
        write_dicom_series(root / "dicom" / f"p{k}" / "study" / "series", volume(100 + k),
                           spacing=(12.0, 12.0, 5.0), patient_id=f"p{k}")
    data = (root / CORRUPT).read_bytes()
    (root / CORRUPT).write_bytes(data[: len(data) // 3])
    model = root.parent / f"{root.name}-model.ckpt"
    module = ReconModule(net={"_target_": "sparsect.models.unet.UNet", "channels": 4,
                              "depth": 3}, prior="none", geometry=GEOMETRY.to_dict(),
                         noise={"i0": 1e5, "electronic_std": 0.0},
                         acquisition={"upsample": 2, "filter": "ram-lak",
                                      "hu_clip": [-1024.0, 3071.0]})
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               model)
    return root


def command(archive: Path, out: Path, jobs: int) -> list[str]:
    return [str(BIN / "sparsect"), "reconstruct", str(archive), "-o", str(out), "--model",
            str(archive.parent / f"{archive.name}-model.ckpt"), "--views", "16",
            "--jobs", str(jobs), "--threads", "1", "--params", str(ROOT / "params.yaml"),
            "data.image_size=32", "data.pixel_size_mm=12.0"]


def reconstruct(archive: Path, out: Path, jobs: int) -> subprocess.CompletedProcess:
    return subprocess.run(command(archive, out, jobs), capture_output=True, text=True,
                          timeout=900, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as stream:
        return {row["input"]: row for row in csv.DictReader(stream)}


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.nii.gz"))}


def test_every_series_at_any_depth_is_found(archive):
    series = find_series(archive)
    assert len(series) == 40
    assert sum(p.is_dir() for p in series) == 4  # the DICOM series, each one input
    assert archive / CORRUPT in series
    # a folder of scan files is an archive at any depth; a folder whose one input is a
    # DICOM series, at any depth, is that volume
    assert is_archive(archive) and is_archive(archive / "site_a")
    assert not is_archive(archive / "dicom" / "p0")
    assert not is_archive(archive / "dicom" / "p0" / "study" / "series")
    assert not is_archive(archive / CORRUPT)
    assert output_for(archive, Path("out"), archive / "dicom/p0/study/series") == \
        Path("out/dicom/p0/study/series_recon.nii.gz")


@pytest.fixture(scope="module")
def serial(archive) -> tuple[Path, subprocess.CompletedProcess]:
    out = archive.parent / f"{archive.name}-serial"
    return out, reconstruct(archive, out, jobs=1)


@pytest.mark.slow
def test_a_corrupt_series_is_a_row_and_the_rest_are_written_once(archive, serial):
    out, done = serial
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert "1 of 40 series" in message and str(CORRUPT) in message, message
    assert "summary.csv" in message
    rows = summary(out)
    assert len(rows) == 40
    failed = rows.pop(str(CORRUPT))
    assert failed["status"] == "failed" and failed["output"] and failed["reason"]
    assert "ct.nii.gz" in failed["reason"]
    assert not (out / failed["output"]).exists() and not marker_for(out / failed["output"]).exists()
    assert {row["status"] for row in rows.values()} == {"done"}
    assert all(row["shape"] == "32x32x2" for row in rows.values())
    assert all(float(row["seconds"]) > 0 for row in rows.values())
    # one output per good series, each at its place in the archive's tree
    written = outputs(out)
    assert sorted(written) == sorted(row["output"] for row in rows.values())
    assert "dicom/p3/study/series_recon.nii.gz" in written
    assert "40/40" in done.stderr  # the progress bar


@pytest.mark.slow
def test_two_processes_write_what_one_writes_bit_for_bit(archive, serial):
    out = archive.parent / f"{archive.name}-parallel"
    done = reconstruct(archive, out, jobs=2)
    assert done.returncode == 2, done.stderr[-3000:]
    assert outputs(out) == outputs(serial[0])
    assert {k: r["status"] for k, r in summary(out).items()} == \
        {k: r["status"] for k, r in summary(serial[0]).items()}


@pytest.mark.slow
def test_a_killed_run_resumes_and_skips_what_was_finished(archive, serial):
    out = archive.parent / f"{archive.name}-killed"
    process = subprocess.Popen(command(archive, out, jobs=2), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600
    while len(list(out.rglob(".*.done.json"))) < 8 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("*_recon.nii.gz")
                if marker_for(p).is_file()}
    assert 8 <= len(finished) < 39, len(finished)
    assert not (out / "summary.csv").exists()

    done = reconstruct(archive, out, jobs=2)
    assert done.returncode == 2, done.stderr[-3000:]
    rows = summary(out)
    skipped = {out / r["output"] for r in rows.values() if r["status"] == "skipped"}
    assert skipped == set(finished)  # exactly what had finished, not written again
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    assert sum(r["status"] == "done" for r in rows.values()) == 39 - len(finished)
    assert outputs(out) == outputs(serial[0])

    # another configuration is another result: nothing is skipped
    again = subprocess.run([*command(archive, out, jobs=2), "--save-reference"],
                           capture_output=True, text=True, timeout=900, check=False,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 2
    assert {r["status"] for r in summary(out).values()} == {"done", "failed"}


@pytest.mark.slow
def test_lightning_predict_on_two_ddp_ranks_writes_what_one_process_writes(archive, serial):
    """--devices: Lightning's predict loop, DDP over two CPU processes (gloo), each rank
    taking every other series; rank 0 writes the summary."""
    out = archive.parent / f"{archive.name}-ddp"
    argv = command(archive, out, jobs=1)
    argv[argv.index("--jobs"):argv.index("--jobs") + 2] = ["--devices", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "1 of 40 series" in done.stderr
    assert outputs(out) == outputs(serial[0])
    assert {k: r["status"] for k, r in summary(out).items()} == \
        {k: r["status"] for k, r in summary(serial[0]).items()}
    assert not list(out.rglob(".*.failed.json"))  # read back into the summary
