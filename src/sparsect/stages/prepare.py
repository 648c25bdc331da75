"""Stage ``prepare``: scans in ``data/`` -> standardised axial HU slices per split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from sparsect.data.io import axial_slices, find_scans, load_subject, standardise
from sparsect.data.split import SPLITS, split_subjects
from sparsect.data.store import (
    atomic_dir,
    atomic_write_json,
    load_array,
    open_array,
    save_array,
)
from sparsect.priors.organs import NO_LABEL


def prepare(cfg: DictConfig, data_dir: Path, out_dir: Path) -> Path:
    """Reads every scan, resamples it to the configured grid and splits by subject.

    Writes ``out_dir/<split>/hu.npy`` (``(N, H, W)`` float32 HU),
    ``labels.npy`` (``(N, H, W)`` int16 organ labels, -1 where the scan has no
    label map), ``index.json`` (subject and z index of every slice) and
    ``out_dir/manifest.json``. Returns ``out_dir``.
    """
    data_cfg = cfg.data
    scans = find_scans(Path(data_dir))
    assignment = split_subjects([s.subject for s in scans], dict(data_cfg.split),
                                int(data_cfg.split.seed),
                                {s.subject: s.patient for s in scans if s.patient})
    by_subject = {s.subject: s for s in scans}
    manifest: dict = {"image_size": int(data_cfg.image_size),
                      "pixel_size_mm": float(data_cfg.pixel_size_mm),
                      "hu_clip": list(data_cfg.hu_clip), "splits": assignment, "subjects": {}}
    with atomic_dir(Path(out_dir)) as tmp:
        progress = tqdm(total=len(scans), desc="prepare", unit="scan")
        for split in SPLITS:
            # each subject is written on its own, then the split's arrays are assembled
            # from those files: the memory stays one subject's, whatever the cohort
            parts = tmp / f".{split}-parts"
            parts.mkdir()
            shapes, index = [], []
            for name in assignment[split]:
                entry = by_subject[name]
                subject = standardise(load_subject(entry), int(data_cfg.image_size),
                                      float(data_cfg.pixel_size_mm), tuple(data_cfg.hu_clip))
                hu = axial_slices(subject["ct"].data[0].numpy()).astype(np.float32)
                if "labels" in subject:
                    labels = axial_slices(subject["labels"].data[0].numpy()).astype(np.int16)
                else:
                    labels = np.full(hu.shape, NO_LABEL, dtype=np.int16)
                save_array(parts, f"hu{len(shapes)}", hu)
                save_array(parts, f"labels{len(shapes)}", labels)
                shapes.append(hu.shape)
                index += [[name, z] for z in range(hu.shape[0])]
                manifest["subjects"][name] = {
                    "split": split, "scan": str(entry.scan), "slices": int(hu.shape[0]),
                    "labels": entry.labels is not None,
                    "z_spacing_mm": float(subject["ct"].spacing[2]),
                    **({"series": entry.series} if entry.series else {}),
                    **({"patient": entry.patient} if entry.patient else {}),
                }
                progress.update()
            folder = tmp / split
            folder.mkdir()
            size = int(data_cfg.image_size)
            _assemble(parts, "hu", shapes or [(0, size, size)], np.float32, folder)
            _assemble(parts, "labels", shapes or [(0, size, size)], np.int16, folder)
            shutil.rmtree(parts)
            atomic_write_json(folder / "index.json", index)
        progress.close()
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out_dir)


def _assemble(parts: Path, name: str, shapes: list[tuple[int, ...]], dtype,
              folder: Path) -> None:
    """``folder/name.npy``: the per-subject arrays ``parts/<name><k>.npy`` one after the
    other (as ``np.concatenate`` of them, without holding them all in memory)."""
    total = (sum(s[0] for s in shapes), *shapes[0][1:])
    out = open_array(folder, name, total, dtype)
    start = 0
    for k, shape in enumerate(shapes):
        if shape[0]:
            out[start:start + shape[0]] = load_array(parts, f"{name}{k}")
        start += shape[0]
    out.flush()
    del out
