"""Atomic, memory-mappable array storage.

Every stage writes its outputs into a hidden temporary folder next to the
destination and renames it into place only when everything is written, so an
interrupted stage never leaves a half-written output that DVC could cache.
Arrays are plain ``.npy`` files: memory-mappable, readable without this
package, and cheap to slice per sample in a DataLoader.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from sparsect.errors import InputError


def _owner_tag() -> str:
    return f"{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(destination: Path) -> None:
    """Removes temporary siblings (folders or files) of ``destination`` left by dead
    processes of this host (those of other hosts, on a shared file system, stay)."""
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f".{destination.name}.{kind}-"
        for path in destination.parent.glob(glob.escape(prefix) + "*"):
            try:
                pid, owner_host = path.name[len(prefix):].split("-", 1)[1].split("@", 1)
                dead = owner_host == host and not _alive(int(pid))
            except (IndexError, ValueError):
                continue
            if dead and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif dead:
                path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yields a fresh temporary folder that replaces ``destination`` on success.

    On any exception the temporary folder is removed and ``destination`` is left
    as it was. A process killed outright cannot clean up: the temporary folders
    it left (named with its pid and host) are removed by the next run.
    """
    destination = Path(destination)
    tmp = destination.parent / f".{destination.name}.tmp-{_owner_tag()}"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(destination)
        tmp.mkdir()
    except OSError as error:
        raise InputError(
            f"Cannot write output '{destination}' ({error.strerror or error}): choose a "
            "writable folder or fix its permissions."
        ) from None
    try:
        yield tmp
        if destination.exists():
            old = destination.parent / f".{destination.name}.old-{_owner_tag()}"
            destination.rename(old)
            tmp.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{_owner_tag()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except OSError as error:
        raise InputError(
            f"Cannot write output '{path}' ({error.strerror or error}): choose a writable "
            "location or fix its permissions."
        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def save_array(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(Path(folder) / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def open_array(folder: Path, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new ``folder/name.npy`` of ``shape`` and ``dtype``, memory-mapped for writing: a
    stage fills it piece by piece, so its memory does not grow with the cohort (the
    written pages are the file's, which the kernel writes back and drops, not the
    process's own). The file is the one :func:`save_array` writes for the same array."""
    return np.lib.format.open_memmap(Path(folder) / f"{name}.npy", mode="w+",
                                     dtype=np.dtype(dtype), shape=tuple(shape))


def load_array(folder: Path, name: str, mmap: bool = True) -> np.ndarray:
    """Loads ``folder/name.npy`` memory-mapped (read-only) by default.

    Raises:
        InputError: if the file is missing, naming the stage that makes it.
    """
    path = Path(folder) / f"{name}.npy"
    if not path.is_file():
        raise InputError(
            f"Array '{path}' is missing: run the stage that writes it first (`dvc repro`)."
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(
            f"Array '{path}' is unreadable ({str(error).splitlines()[0]}): delete it and re-run "
            "the stage that writes it (`dvc repro`)."
        ) from None


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"File '{path}' is missing: run the stage that writes it first.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(
            f"File '{path}' is not valid JSON ({error}): delete it and re-run the stage that "
            "writes it."
        ) from None
