"""Reconstruction of a whole archive: every series under a folder of any depth, in
several processes, resumable, one bad series never stopping the rest.

- **Series.** Scan files, sinogram ``.npy`` files and folders that directly hold DICOM
  files, at any depth (:func:`find_series`). Each is written to the output folder at its
  path relative to the archive (``<out>/<relative folder>/<name>_recon.nii.gz``).
- **Processes.** ``jobs`` processes, each with ``threads`` torch threads, take the series
  one at a time (or the DDP ranks of Lightning's predict loop, with ``devices``); with
  equal threads per process the outputs are bit for bit those of a serial run, because
  each series is computed alone and its noise is keyed by its name.
- **Exactly once, resumable.** Each output is written atomically, then a marker beside
  it (``.<name>_recon.done.json``) records the input's checksum and the configuration's.
  A rerun skips a series whose marker matches both, and redoes any other: a changed
  input, another model or setting, or an output a kill left without marker.
- **Archive policy.** A series that fails becomes a row of ``summary.csv`` with its
  reason; the others go on. ``summary.csv`` (one row per series: input, status, seconds,
  shape, output, reason) is written when all are done, and the caller ends non-zero if
  any failed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparsect.data.inputs import holds_dicom_files, is_file_input, is_volume
from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.errors import InputError

SUMMARY = "summary.csv"
FIELDS = ("input", "status", "seconds", "shape", "output", "reason")


def find_series(root: Path) -> list[Path]:
    """Every series under ``root``, sorted: scan and sinogram files at any depth, and the
    folders that directly hold DICOM files (one series each; a folder holding several
    series fails as its own row, naming them). Hidden entries (``.name``) are skipped."""
    root = Path(root)
    found: list[Path] = []
    children = [c for c in sorted(root.iterdir()) if not c.name.startswith(".")]
    for child in children:
        if child.is_dir():
            found += [child] if holds_dicom_files(child) else find_series(child)
        elif is_file_input(child):
            found.append(child)
    return found


def is_archive(path: Path, series: str | None = None) -> bool:
    """Whether ``path`` is a folder of several series rather than one volume. One volume:
    a file; a folder that directly holds DICOM files; a folder whose only input is one
    DICOM series at some depth; with ``series`` (``--series``), any DICOM folder
    (:func:`~sparsect.data.inputs.is_volume`)."""
    path = Path(path)
    if not path.is_dir() or holds_dicom_files(path):
        return False
    if series is not None and is_volume(path):
        return False
    items = find_series(path)
    return not (len(items) == 1 and items[0].is_dir())


def output_for(root: Path, out: Path, item: Path) -> Path:
    """Where series ``item`` of archive ``root`` is written under ``out``."""
    relative = Path(item).relative_to(root)
    stem = relative.name.split(".")[0]
    return Path(out) / relative.parent / f"{stem}_recon.nii.gz"


def marker_for(output: Path) -> Path:
    return output.with_name(f".{output.name.removesuffix('.nii.gz')}.done.json")


def input_digest(item: Path) -> str:
    """SHA-256 of the series' files (names relative to it and contents); for a sinogram,
    its ``.json`` sidecar and the files that names (flat and dark fields) too."""
    item = Path(item)
    digest = hashlib.sha256()
    if item.is_dir():
        files = sorted(p for p in item.rglob("*") if p.is_file())
    else:
        files = [item]
        sidecar = item.with_suffix(".json")
        if item.suffix == ".npy" and sidecar.is_file():
            files.append(sidecar)
            files += [item.parent / str(v) for v in _named_files(sidecar)
                      if (item.parent / str(v)).is_file()]
    for path in files:
        digest.update(str(path.relative_to(item if item.is_dir() else item.parent)).encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _named_files(sidecar: Path) -> list[str]:
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict):
        return []
    return [v for k, v in record.items() if k in ("flat_field", "dark_field")
            and isinstance(v, str)]


def config_digest(*parts: Any) -> str:
    """SHA-256 of what decides an output: ``parts`` as JSON (bytes as their SHA-256)."""
    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return hashlib.sha256(value).hexdigest()
        return value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _finished(output: Path, stamp: dict[str, str]) -> dict | None:
    marker = marker_for(output)
    if not (output.is_file() and marker.is_file()):
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    same = all(record.get(k) == v for k, v in stamp.items())
    return record if same else None


# --- the worker side: one process per job, set up once ------------------------------------

_STATE: dict[str, Any] = {}


def _setup(setup: Callable[..., Any], args: tuple, threads: int | None,
           device: str | None = None) -> None:
    """``setup(*args)`` (with ``device=``, a rank's own GPU, when given) in ``threads``
    torch threads."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _STATE["worker"] = setup(*args, **({} if device is None else {"device": device}))


def _work(work: Callable[..., tuple[int, ...]], item: Path, output: Path,
          stamp: dict[str, str]) -> dict[str, Any]:
    """One series: ``work(worker, item, output)`` returns the output's shape; then the
    marker. Any failure is the series' row, not the run's end."""
    start = time.perf_counter()
    try:
        shape = tuple(int(n) for n in work(_STATE["worker"], item, output))
    except Exception as error:  # noqa: BLE001 - the archive policy: record and go on
        reason = str(error) if isinstance(error, InputError) else (
            f"{type(error).__name__}: {error}")
        return {"status": "failed", "seconds": time.perf_counter() - start, "shape": "",
                "reason": " ".join(reason.split())}
    seconds = time.perf_counter() - start
    atomic_write_json(marker_for(output), {**stamp, "shape": list(shape),
                                           "seconds": round(seconds, 3)})
    return {"status": "done", "seconds": seconds, "shape": "x".join(map(str, shape)),
            "reason": ""}


def run_archive(root: Path, out: Path, setup: Callable[..., Any], setup_args: tuple,
                work: Callable[..., tuple[int, ...]], configuration: str, jobs: int = 1,
                threads: int | None = None, items: list[Path] | None = None,
                devices: int | None = None, num_nodes: int = 1, accelerator: str = "cpu"
                ) -> list[dict[str, Any]]:
    """Reconstructs every series of archive ``root`` into ``out`` and writes
    ``out/summary.csv``; returns its rows (none on the ranks other than 0).

    ``setup(*setup_args)`` builds a process's reconstructor once (a rank on a GPU passes
    ``device=`` its own too); ``work(reconstructor, item, output)`` writes one series
    atomically and returns its shape. Both must be
    module-level functions (the processes are spawned). ``configuration`` is the
    configuration's checksum (:func:`config_digest`). With ``devices``, Lightning's predict
    loop runs the series instead, under DDP on ``devices`` x ``num_nodes`` ranks of
    ``accelerator`` (launched as training is: Lightning starts the ranks of one node,
    torchrun or srun those of several), each rank taking every world-size-th series.
    """
    root, out = Path(root), Path(out)
    if jobs < 1 or (threads is not None and threads < 1) or (devices is not None and devices < 1):
        raise InputError(f"--jobs {jobs}, --threads {threads} and --devices {devices} must be "
                         "positive: give the processes and the threads each one uses.")
    if devices is not None and jobs != 1:
        raise InputError("--devices runs one process per device: drop --jobs, or drop "
                         "--devices to use CPU processes.")
    items = find_series(root) if items is None else items
    if not items:
        raise InputError(f"Folder '{root}' holds no CT volume or sinogram at any depth: add "
                         "inputs.")
    rows: dict[Path, dict[str, Any]] = {}
    pending: list[tuple[Path, Path, dict[str, str]]] = []
    for item in items:
        output = output_for(root, out, item)
        stamp = {"input": input_digest(item), "configuration": configuration}
        record = _finished(output, stamp)
        if record is not None:
            rows[item] = {"status": "skipped", "seconds": 0.0,
                          "shape": "x".join(map(str, record.get("shape", []))), "reason": ""}
        else:
            pending.append((item, output, stamp))
    if devices is not None:
        done = _predict(pending, setup, setup_args, work, threads, devices, num_nodes,
                        accelerator)
        if done is None:
            return []  # not global rank 0: rank 0 writes the summary
        rows.update(done)
        return _summary(root, out, items, rows)
    bar = tqdm(total=len(items), initial=len(rows), unit="series", desc="reconstruct")
    try:
        if jobs == 1:
            _setup(setup, setup_args, threads)
            for item, output, stamp in pending:
                rows[item] = _work(work, item, output, stamp)
                bar.update()
        elif pending:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded process
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_setup,
                                     initargs=(setup, setup_args, threads)) as pool:
                futures = {pool.submit(_work, work, item, output, stamp): item
                           for item, output, stamp in pending}
                for future in as_completed(futures):
                    rows[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
        _STATE.clear()
    return _summary(root, out, items, rows)


def _summary(root: Path, out: Path, items: list[Path],
             rows: dict[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    """Writes ``out/summary.csv``, one row per series in ``items`` order; returns them."""
    table = [{"input": str(item.relative_to(root)),
              "output": str(output_for(root, out, item).relative_to(out)),
              **{k: (f"{v:.3f}" if k == "seconds" else v) for k, v in rows[item].items()}}
             for item in items]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / SUMMARY, buffer.getvalue().encode())
    return table


def failure_marker_for(output: Path) -> Path:
    return output.with_name(f".{output.name.removesuffix('.nii.gz')}.failed.json")


def _predict(pending: list[tuple[Path, Path, dict[str, str]]], setup: Callable[..., Any],
             setup_args: tuple, work: Callable[..., tuple[int, ...]], threads: int | None,
             devices: int, num_nodes: int, accelerator: str
             ) -> dict[Path, dict[str, Any]] | None:
    """The pending series through Lightning's predict loop (DDP when there are several
    ranks). Each rank writes its series' outputs and markers, and a marker for each
    failure; after a barrier global rank 0 reads them all back. Returns the rows on rank
    0, None on the others."""
    import pytorch_lightning as pl

    predictor = _predictor_class()(pending, setup, setup_args, work, threads)
    strategy = "ddp" if devices * num_nodes > 1 else "auto"
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                         strategy=strategy, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         enable_progress_bar=True, inference_mode=True)
    trainer.predict(predictor, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    rows: dict[Path, dict[str, Any]] = {}
    for item, output, _ in pending:
        failed = failure_marker_for(output)
        if failed.is_file():
            rows[item] = json.loads(failed.read_text())
            failed.unlink()
            continue
        record = json.loads(marker_for(output).read_text())
        rows[item] = {"status": "done", "seconds": float(record["seconds"]),
                      "shape": "x".join(map(str, record["shape"])), "reason": ""}
    return rows


def _predictor_class() -> type:
    """The LightningModule of :func:`_predict` (made on first use: importing Lightning
    costs seconds that the CPU paths do not need)."""
    import pytorch_lightning as pl
    import torch

    class ArchivePredictor(pl.LightningModule):
        """Predicts nothing itself: each step is one series, written by ``work`` with the
        rank's own reconstructor (built in :meth:`setup`, on the rank's device). It holds
        no parameters, so DDP has nothing to synchronise; the ranks share only the
        work list, each taking every world-size-th series."""

        def __init__(self, pending, setup, setup_args, work, threads) -> None:
            super().__init__()
            self.pending, self.work = pending, work
            self._setup_call = (setup, setup_args, threads)

        def setup(self, stage: str) -> None:
            setup, setup_args, threads = self._setup_call
            # on a GPU, this rank's own, for the network and the physics
            device = f"cuda:{self.device.index or 0}" if self.device.type == "cuda" else None
            _setup(setup, setup_args, threads, device)

        def predict_dataloader(self):
            share = self.pending[self.global_rank::self.trainer.world_size]
            return torch.utils.data.DataLoader(share, batch_size=None, shuffle=False,
                                               collate_fn=_identity)

        def predict_step(self, batch, batch_idx):
            item, output, stamp = batch
            row = _work(self.work, item, output, stamp)
            if row["status"] == "failed":
                atomic_write_json(failure_marker_for(output), row)
            return None

    return ArchivePredictor


def _identity(batch: Any) -> Any:
    return batch

