"""What ``sparsect reconstruct`` writes: reconstructions as NIfTI in HU, and their names.

A reconstruction is stored as int16 HU with the affine of its grid as both qform and
sform, written atomically; a ``.nii.gz`` is gzipped with ``mtime=0``, so the same
volume gives the same bytes. (The phantoms' own NIfTI writer is
:mod:`sparsect.data.phantom.writing`.)
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from sparsect.data.store import atomic_write_bytes
from sparsect.errors import InputError
from sparsect.notice import nifti_description


def nifti_stem(path: Path) -> str:
    """A NIfTI file name without ``.nii`` or ``.nii.gz``."""
    return Path(path).name.replace(".nii.gz", "").replace(".nii", "")


def prior_sidecar(output: Path) -> Path:
    """``<output stem>.prior.json`` beside ``output``."""
    return Path(output).with_name(f"{nifti_stem(output)}.prior.json")


def geometry_sidecar(output: Path) -> Path:
    """``<output stem>.geometry.json`` beside ``output`` (a measured sinogram's geometry)."""
    return Path(output).with_name(f"{nifti_stem(output)}.geometry.json")


def save_nifti(path: Path, volume_hu: np.ndarray, affine: np.ndarray) -> None:
    """Writes ``volume_hu`` (RAS+ ``(x, y, z)``, rounded to int16 HU) with ``affine`` to
    ``path`` (``.nii`` or ``.nii.gz``), atomically."""
    image = nib.Nifti1Image(np.round(volume_hu).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header["descrip"] = nifti_description("written by sparsect")
    path = Path(path)
    check_output_name(path)
    atomic_write_bytes(
        path, nib.Nifti1Image.to_bytes(image) if path.suffix == ".nii" else _gzip(image)
    )


def check_output_name(path: Path) -> None:
    """Refuses an output name that is not ``.nii`` or ``.nii.gz``.

    Raises:
        InputError: if ``path`` ends otherwise.
    """
    if not Path(path).name.endswith((".nii", ".nii.gz")):
        raise InputError(
            f"Output '{path}' must end in .nii or .nii.gz: rename it, e.g. recon.nii.gz."
        )


def _gzip(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes(), mtime=0)
