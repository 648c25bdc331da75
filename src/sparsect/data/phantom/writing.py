"""Writing phantoms as NIfTI, byte for byte deterministically (gzip with ``mtime=0``)."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from sparsect.data.phantom.config import PhantomConfig, phantom_affine
from sparsect.data.phantom.generate import generate_subject
from sparsect.notice import nifti_description

_SCAN_DESCRIPTION = nifti_description("CT torso phantom, HU")
_SEG_DESCRIPTION = nifti_description("sparsect organ labels")


def _nifti_gz_bytes(data: np.ndarray, affine: np.ndarray, description: str, label: bool) -> bytes:
    """Serialises a volume as .nii.gz bytes that depend on the data only (no timestamps)."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()
    if label:
        header.set_intent("label")
    # code 1 = scanner-based anatomical coordinates (RAS+ world in mm).
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _write_synced(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def write_dataset(
    out_dir: Path,
    subjects: int,
    seed: int,
    config: PhantomConfig = PhantomConfig(),  # noqa: B008 (frozen)
) -> list[Path]:
    """Writes ``subjects`` phantoms as NIfTI.

    For each ``i`` in ``range(subjects)``: ``out_dir/subject_{i:03d}.nii.gz`` (HU,
    int16, rounded) and ``out_dir/subject_{i:03d}_seg.nii.gz`` (uint8 organ labels
    of :data:`ORGAN_LABELS`), both with the affine of :func:`phantom_affine`
    (RAS+, mm). Files are byte-for-byte deterministic in ``(subjects, seed,
    config)``. They are written into a hidden temporary folder next to
    ``out_dir`` and renamed into place, so an interruption never leaves a
    half-written file in ``out_dir``; other files in ``out_dir`` are left alone.

    Args:
        out_dir: output folder (created if missing).
        subjects: number of subjects, indexed ``0 .. subjects - 1``.
        seed: dataset seed (>= 0); subject ``i`` is ``generate_subject(i, seed, config)``.
        config: grid and variation ranges.

    Returns:
        The scan paths (not the label maps), in subject order.

    Raises:
        ValueError: if ``subjects`` or ``seed`` is negative, or the grid cannot hold a torso.
    """
    if subjects < 0:
        raise ValueError(f"subjects must be >= 0, got {subjects}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    affine = phantom_affine(config)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    names: list[str] = []
    try:
        for i in range(subjects):
            hu, labels = generate_subject(i, seed, config)
            hu_int = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
            scan, seg = f"subject_{i:03d}.nii.gz", f"subject_{i:03d}_seg.nii.gz"
            _write_synced(
                staging / scan, _nifti_gz_bytes(hu_int, affine, _SCAN_DESCRIPTION, label=False)
            )
            _write_synced(
                staging / seg, _nifti_gz_bytes(labels, affine, _SEG_DESCRIPTION, label=True)
            )
            names += [scan, seg]
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / f"subject_{i:03d}.nii.gz" for i in range(subjects)]
