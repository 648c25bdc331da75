"""What ``sparsect reconstruct`` reads: one input, or the inputs inside a folder.

An input is a scan file (NIfTI, NRRD, MetaImage, a LoDoPaB-CT HDF5 file), a measured
sinogram ``.npy``, a DICOM file, or a DICOM folder (one series, at any depth, as
archives ship them). A folder that is not itself a DICOM folder holds several inputs:
its scan and sinogram files and its sub-folders of DICOM files.
"""

from __future__ import annotations

from pathlib import Path

from sparsect.data.datasets import is_lodopab_file
from sparsect.data.dicom import is_dicom_file
from sparsect.data.io import SCAN_SUFFIXES, is_dicom_input
from sparsect.errors import InputError


def is_file_input(path: Path) -> bool:
    """A scan or sinogram file (not a DICOM file, which belongs to its folder's series)."""
    return path.is_file() and (
        path.name.endswith(SCAN_SUFFIXES) or path.suffix == ".npy" or is_lodopab_file(path)
    )


def holds_dicom_files(folder: Path) -> bool:
    """Whether ``folder`` directly holds a DICOM file (hidden entries aside)."""
    return any(is_dicom_file(p) for p in Path(folder).iterdir() if not p.name.startswith("."))


def is_volume(path: Path) -> bool:
    """Whether ``path`` is one volume: a scan file, a DICOM file, or a DICOM folder (a
    folder that directly holds DICOM files, or holds no other input and DICOM files at
    some depth)."""
    path = Path(path)
    if path.is_file():
        return (is_file_input(path) and path.suffix != ".npy") or is_dicom_file(path)
    if not path.is_dir():
        return False
    children = [p for p in path.iterdir() if not p.name.startswith(".")]
    if holds_dicom_files(path):
        return True
    return not any(is_file_input(p) for p in children) and is_dicom_input(path)


def list_inputs(path: Path) -> list[Path]:
    """One input, or every input inside a folder that is not itself a DICOM folder: its
    scan and sinogram files, and its sub-folders of DICOM files."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"Input '{path}' does not exist: give a CT volume, slice, DICOM series "
            "or sinogram .npy."
        )
    if path.is_file() or is_volume(path):
        return [path]
    inputs = sorted(
        p
        for p in path.iterdir()
        if not p.name.startswith(".") and (is_file_input(p) or (p.is_dir() and is_dicom_input(p)))
    )
    if not inputs:
        raise InputError(f"Folder '{path}' holds no CT volume or sinogram: add inputs.")
    return inputs
