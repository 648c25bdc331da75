"""Reconstruction of a whole archive: every series under a folder of any depth, in
several processes, resumable, one bad series never stopping the rest.

- **Series.** A folder that is one volume (a DICOM series, at any depth below it) is one
  series; any other folder is searched, to any depth, for scan files, sinogram ``.npy``
  files and DICOM series (:func:`find_series`). Each is written to the output folder at
  its path relative to the archive (``<out>/<relative folder>/<name>_recon.nii.gz``).
- **Processes.** ``jobs`` processes, each with ``threads`` torch threads, take the series
  one at a time; with equal threads per process the outputs are bit for bit those of a
  serial run, because each series is computed alone and its noise is keyed by its name.
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
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparsect.data.dicom import is_dicom_file
from sparsect.data.inputs import is_volume
from sparsect.data.io import SCAN_SUFFIXES
from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.errors import InputError

SUMMARY = "summary.csv"
FIELDS = ("input", "status", "seconds", "shape", "output", "reason")


def _is_file_series(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(SCAN_SUFFIXES) or path.suffix == ".npy")


def find_series(root: Path) -> list[Path]:
    """Every series under ``root``, sorted: scan and sinogram files at any depth, and the
    folders that directly hold DICOM files (one series each; a folder holding several
    series fails as its own row, naming them). Hidden entries (``.name``) are skipped."""
    root = Path(root)
    found: list[Path] = []
    children = [c for c in sorted(root.iterdir()) if not c.name.startswith(".")]
    for child in children:
        if child.is_dir():
            found += [child] if _holds_dicom(child) else find_series(child)
        elif _is_file_series(child):
            found.append(child)
    return found


def _holds_dicom(folder: Path) -> bool:
    return any(is_dicom_file(p) for p in folder.iterdir()
               if p.is_file() and not p.name.startswith("."))


def is_archive(path: Path, series: str | None = None) -> bool:
    """Whether ``path`` is a folder of several series rather than one volume. One volume:
    a file; a folder that directly holds DICOM files; a folder whose only input is one
    DICOM series at some depth; with ``series`` (``--series``), any DICOM folder
    (:func:`~sparsect.data.inputs.is_volume`)."""
    path = Path(path)
    if not path.is_dir() or _holds_dicom(path):
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


def _setup(setup: Callable[..., Any], args: tuple, threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    _STATE["worker"] = setup(*args)


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
                threads: int | None = None, items: list[Path] | None = None
                ) -> list[dict[str, Any]]:
    """Reconstructs every series of archive ``root`` into ``out`` and writes
    ``out/summary.csv``; returns its rows.

    ``setup(*setup_args)`` builds a process's reconstructor once; ``work(reconstructor,
    item, output)`` writes one series atomically and returns its shape. Both must be
    module-level functions (the processes are spawned). ``configuration`` is the
    configuration's checksum (:func:`config_digest`).
    """
    root, out = Path(root), Path(out)
    if jobs < 1 or (threads is not None and threads < 1):
        raise InputError(f"--jobs {jobs} and --threads {threads} must be positive: give the "
                         "processes and the threads each one uses.")
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


def threads_default(jobs: int) -> int:
    """The cores shared evenly between ``jobs`` processes."""
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))
